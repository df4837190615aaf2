package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/hermod-mta/hermod/queue"
)

// BulkRequest is the JSON body of POST /v1/queue/{hold,release,retry,delete}:
// message ids or filters, combined with AND (at least one is required).
type BulkRequest struct {
	IDs     []string `json:"ids,omitempty"`
	Account string   `json:"account,omitempty"`
	// Domain is the recipient domain, as a U-label or an A-label.
	Domain string       `json:"domain,omitempty"`
	Status queue.Status `json:"status,omitempty"`
	// OlderThan is an age such as "90m", "6h" or "2d" (queue.ParseAge).
	OlderThan string `json:"older_than,omitempty"`
	Rcpt      string `json:"rcpt,omitempty"`
	Ref       string `json:"ref,omitempty"`
	// DryRun reports what would change and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Sample bounds the recipients listed in the answer (default 10, at most 1000).
	Sample int `json:"sample,omitempty"`
}

// Filter is the queue filter the request describes.
func (b *BulkRequest) Filter() (queue.Filter, error) {
	f := queue.Filter{IDs: b.IDs, Account: b.Account, Domain: b.Domain, Status: b.Status, Rcpt: b.Rcpt, Ref: b.Ref}
	if b.OlderThan != "" {
		d, err := queue.ParseAge(b.OlderThan)
		if err != nil {
			return f, fmt.Errorf("older_than: %w", err)
		}
		f.OlderThan = d
	}
	return f, nil
}

// bulkRoutes mounts the bulk queue actions on m.
func (s *Server) bulkRoutes(m *http.ServeMux) {
	for _, a := range queue.BulkActions {
		m.HandleFunc("POST /v1/queue/"+string(a), func(w http.ResponseWriter, r *http.Request) { s.bulk(w, r, a) })
	}
}

// bulk answers one bulk action with the queue.BulkResult as JSON.
func (s *Server) bulk(w http.ResponseWriter, r *http.Request, action queue.BulkAction) {
	var req BulkRequest
	if !decodeBody(w, r, &req) {
		return
	}
	f, err := req.Filter()
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_filter", err.Error())
		return
	}
	res, err := s.opts.Queue.Bulk(r.Context(), action, f, req.DryRun, min(req.Sample, 1000))
	switch {
	case errors.Is(err, queue.ErrEmptyFilter), errors.Is(err, queue.ErrBadFilter):
		writeError(w, http.StatusBadRequest, "bad_filter", err.Error())
		return
	case err != nil:
		s.fail(w, err)
		return
	}
	if !req.DryRun {
		s.log.Info("api: queue "+string(action), "recipients", res.Recipients, "messages", res.Messages,
			"ids", len(f.IDs), "account", f.Account, "domain", f.Domain, "status", f.Status,
			"older_than", f.OlderThan, "rcpt", f.Rcpt, "ref", f.Ref)
	}
	writeJSON(w, http.StatusOK, res)
}
