package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/suppress"
)

func (s *Server) domainsReady(w http.ResponseWriter) bool {
	if s.opts.Domains == nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "accounts and domains are not enabled")
		return false
	}
	return true
}

// AccountRequest is the body of PUT /v1/accounts/{id}.
type AccountRequest struct {
	Owner        string `json:"owner"`
	CustomDomain bool   `json:"custom_domain"`
}

func (s *Server) putAccount(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	var req AccountRequest
	if !decodeBody(w, r, &req) {
		return
	}
	a, err := s.opts.Domains.PutAccount(domain.Account{ID: r.PathValue("id"), Owner: req.Owner, CustomDomain: req.CustomDomain})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Server) getAccount(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	a, err := s.opts.Domains.Account(r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// DomainView is a domain with the records to publish.
type DomainView struct {
	domain.Domain
	Records []domain.Record `json:"records"`
}

func (s *Server) domainView(d domain.Domain) DomainView {
	return DomainView{Domain: d, Records: s.opts.Domains.Records(d)}
}

// DomainRequest is the body of POST /v1/accounts/{id}/domains.
type DomainRequest struct {
	Domain string `json:"domain"`
}

func (s *Server) addDomain(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	var req DomainRequest
	if !decodeBody(w, r, &req) {
		return
	}
	d, err := s.opts.Domains.AddDomain(r.PathValue("id"), req.Domain)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.domainView(d))
}

func (s *Server) listDomains(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	if _, err := s.opts.Domains.Account(r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	ds, err := s.opts.Domains.Domains(r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]DomainView, 0, len(ds))
	for _, d := range ds {
		out = append(out, s.domainView(d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"domains": out})
}

func (s *Server) getDomain(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	d, err := s.opts.Domains.Domain(r.PathValue("id"), r.PathValue("domain"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.domainView(d))
}

func (s *Server) deleteDomain(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	if err := s.opts.Domains.RemoveDomain(r.PathValue("id"), r.PathValue("domain")); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": r.PathValue("domain")})
}

func (s *Server) checkDomain(w http.ResponseWriter, r *http.Request) {
	if !s.domainsReady(w) {
		return
	}
	d, err := s.opts.Domains.Check(r.Context(), r.PathValue("id"), r.PathValue("domain"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.domainView(d))
}

func (s *Server) suppressReady(w http.ResponseWriter) bool {
	if s.opts.Suppress == nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the suppression list is not enabled")
		return false
	}
	return true
}

func (s *Server) listSuppressions(w http.ResponseWriter, r *http.Request) {
	if !s.suppressReady(w) {
		return
	}
	q := r.URL.Query()
	limit, err := queryInt(r, "limit", 100, 1, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_query", err.Error())
		return
	}
	page, next, err := s.opts.Suppress.List(q.Get("account"), q.Get("address"), q.Get("page"), limit)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_query", err.Error())
		return
	}
	if page == nil {
		page = []suppress.Entry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"suppressions": page, "next": next})
}

func (s *Server) getSuppression(w http.ResponseWriter, r *http.Request) {
	if !s.suppressReady(w) {
		return
	}
	e, ok, err := s.opts.Suppress.Lookup(r.URL.Query().Get("account"), r.PathValue("address"))
	if err != nil {
		s.suppressFail(w, err)
		return
	}
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "address is not suppressed: "+r.PathValue("address"))
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// SuppressionRequest is the body of PUT /v1/suppressions/{address}.
type SuppressionRequest struct {
	Account string `json:"account"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail"`
	// Expires optionally lifts the entry at that time.
	Expires time.Time `json:"expires"`
}

func (s *Server) putSuppression(w http.ResponseWriter, r *http.Request) {
	if !s.suppressReady(w) {
		return
	}
	var req SuppressionRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Reason == "" {
		req.Reason = "manual"
	}
	if strings.ContainsAny(req.Reason+req.Detail, "\r\n") {
		writeError(w, http.StatusBadRequest, "bad_json", "reason and detail must be one line")
		return
	}
	e, err := s.opts.Suppress.Add(suppress.Entry{Address: r.PathValue("address"), Account: req.Account, Reason: req.Reason,
		Source: "api", Detail: req.Detail, Expires: req.Expires})
	if err != nil {
		s.suppressFail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Server) deleteSuppression(w http.ResponseWriter, r *http.Request) {
	if !s.suppressReady(w) {
		return
	}
	ok, err := s.opts.Suppress.Remove(r.URL.Query().Get("account"), r.PathValue("address"))
	if err != nil {
		s.suppressFail(w, err)
		return
	}
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "address was not suppressed: "+r.PathValue("address"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"removed": r.PathValue("address")})
}

// suppressFail answers a suppression list error: 400 for an address or
// account that cannot be keyed, else as any other failure (503 when the
// cluster's control data cannot be written).
func (s *Server) suppressFail(w http.ResponseWriter, err error) {
	if errors.Is(err, suppress.ErrInvalidAddress) || errors.Is(err, suppress.ErrInvalidAccount) {
		writeError(w, http.StatusBadRequest, "bad_address", err.Error())
		return
	}
	s.fail(w, err)
}
