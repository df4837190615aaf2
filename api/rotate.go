package api

import "net/http"

// rotateDomain serves POST /v1/accounts/{id}/domains/{domain}/rotate: it
// starts a DKIM key rollover (domain.Store.RotateKey) and answers the domain,
// whose rotation.record is the new TXT record to publish beside the current
// one. 409 rotation_pending while a rollover still waits for its record.
func (s *Server) rotateDomain(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	d, err := s.opts.Domains.RotateKey(r.PathValue("id"), r.PathValue("domain"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.domainView(d))
}
