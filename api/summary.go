package api

import (
	"net/http"

	"github.com/hermod-mta/hermod/queue"
)

// SummaryView is the JSON of GET /v1/queue/summary: one row per
// destination of the recipients still waiting. Fields are only ever added.
type SummaryView struct {
	// By is the grouping: "domain", "account" or "mx".
	By   string             `json:"by"`
	Rows []queue.SummaryRow `json:"rows"`
}

// queueSummary answers GET /v1/queue/summary?by=domain|account|mx.
func (s *Server) queueSummary(w http.ResponseWriter, r *http.Request) {
	by := r.URL.Query().Get("by")
	if by == "" {
		by = queue.SummaryByDomain
	}
	switch by {
	case queue.SummaryByDomain, queue.SummaryByAccount, queue.SummaryByMX:
	default:
		writeError(w, http.StatusBadRequest, "bad_query", "by must be domain, account or mx")
		return
	}
	rows, err := s.opts.Queue.Summary(by)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, SummaryView{By: by, Rows: rows})
}
