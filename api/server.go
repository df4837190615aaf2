// Package api is hermod's JSON HTTP API: messages and their per-recipient
// status, the queue, the event stream, accounts and domains, suppressions.
// The CLI talks to the daemon through it (bbolt allows one process), and the
// application reads statuses from it.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/suppress"
)

// maxBody bounds every request body.
const maxBody = 1 << 20

// Options configures the API handler.
type Options struct {
	// Token is the bearer token every request must carry.
	Token    string
	Queue    *queue.Store
	Domains  *domain.Store  // nil: account and domain endpoints answer 503
	Suppress *suppress.List // nil: suppression endpoints answer 503
	// Extra handlers mounted without the token check's exemption (e.g. /metrics, pprof).
	Mount  map[string]http.Handler
	Logger *slog.Logger
	// MaxWait is the longest /v1/events?wait= (default DefaultMaxWait);
	// MaxLongPolls how many such waits may be open at once (default 64).
	// Beyond it a waiting request gets 429 with Retry-After.
	MaxWait      time.Duration
	MaxLongPolls int
	// Peers accepts requests signed by other nodes of a cluster instead
	// of the bearer token; nil accepts none.
	Peers PeerAuth
	// Cluster makes message look-ups, lists and searches answer for every
	// node; nil on a single node.
	Cluster Cluster
}

// DefaultMaxWait is the default longest long-poll of /v1/events.
const DefaultMaxWait = time.Minute

// Server is the API http.Handler.
type Server struct {
	opts  Options
	mux   *http.ServeMux
	log   *slog.Logger
	polls chan struct{} // one token per open long-poll
}

// New returns the API handler.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.MaxLongPolls <= 0 {
		opts.MaxLongPolls = 64
	}
	s := &Server{opts: opts, mux: http.NewServeMux(), log: opts.Logger, polls: make(chan struct{}, opts.MaxLongPolls)}
	m := s.mux
	m.HandleFunc("GET /v1/messages/{id}", s.getMessage)
	m.HandleFunc("GET /v1/messages", s.findMessages)
	m.HandleFunc("DELETE /v1/messages/{id}", s.deleteMessage)
	m.HandleFunc("POST /v1/messages/{id}/retry", s.retryMessage)
	m.HandleFunc("GET /v1/queue", s.listQueue)
	m.HandleFunc("GET /v1/queue/summary", s.queueSummary)
	s.bulkRoutes(m) // POST /v1/queue/{hold,release,retry,delete} (bulk.go)
	m.HandleFunc("GET /v1/events", s.events)
	m.HandleFunc("PUT /v1/accounts/{id}", s.putAccount)
	m.HandleFunc("GET /v1/accounts/{id}", s.getAccount)
	m.HandleFunc("POST /v1/accounts/{id}/domains", s.addDomain)
	m.HandleFunc("GET /v1/accounts/{id}/domains", s.listDomains)
	m.HandleFunc("GET /v1/accounts/{id}/domains/{domain}", s.getDomain)
	m.HandleFunc("DELETE /v1/accounts/{id}/domains/{domain}", s.deleteDomain)
	m.HandleFunc("POST /v1/accounts/{id}/domains/{domain}/check", s.checkDomain)
	m.HandleFunc("POST /v1/accounts/{id}/domains/{domain}/rotate", s.rotateDomain)
	m.HandleFunc("GET /v1/suppressions", s.listSuppressions)
	m.HandleFunc("GET /v1/suppressions/{address}", s.getSuppression)
	m.HandleFunc("PUT /v1/suppressions/{address}", s.putSuppression)
	m.HandleFunc("DELETE /v1/suppressions/{address}", s.deleteSuppression)
	for p, h := range opts.Mount {
		m.Handle(p, h)
	}
	return s
}

// ServeHTTP checks the bearer token and bounds the body, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok && s.opts.Peers != nil {
		node, err := s.opts.Peers.Verify(r)
		if err == nil {
			r = r.WithContext(context.WithValue(r.Context(), peerKey{}, node))
			ok, tok = true, s.opts.Token
		} else {
			s.log.Warn("api: request from a node refused", "client", r.RemoteAddr, "err", err)
		}
	}
	if !ok || s.opts.Token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hermod"`)
		// A client without the token gets no keep-alive connection to hold.
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token (see api.token_file)")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		// No route: let the mux decide between 404 and 405, answer in JSON.
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if allow := probe.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		if probe.code == http.StatusMethodNotAllowed {
			writeError(w, probe.code, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+probe.header.Get("Allow"))
			return
		}
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
		return
	}
	s.mux.ServeHTTP(w, r) // (not h: the mux sets the path values)
}

// statusProbe records the status a handler would answer, discarding its body.
type statusProbe struct {
	header http.Header
	code   int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(code int)        { p.code = code }

// ErrorBody is the JSON of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// fail maps a package error to its HTTP answer.
func (s *Server) fail(w http.ResponseWriter, err error) {
	var de *domain.Error
	switch {
	case errors.As(err, &de):
		writeError(w, de.Status, de.Code, de.Msg)
	case errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, queue.ErrStorage):
		writeError(w, http.StatusServiceUnavailable, "storage", err.Error())
	case errors.Is(err, control.ErrUnavailable):
		writeError(w, http.StatusServiceUnavailable, "cluster_unavailable",
			"the cluster's control data (etcd) cannot be reached, so this change cannot be made now; nothing was changed: try again later. Mail is still accepted and delivered. ("+err.Error()+")")
	default:
		s.log.Error("api: internal error", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; see the hermod log")
	}
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "bad_json", "invalid JSON body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad_json", "invalid JSON body: more than one value")
		return false
	}
	return true
}

func queryInt(r *http.Request, key string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s must be a whole number from %d to %d", key, lo, hi)
	}
	return n, nil
}

// localMessage checks the {id} of a message request and reports whether
// this node answers it; if not, it has answered: 400 for what is not a
// message id, or the owner's answer on a cluster.
func (s *Server) localMessage(w http.ResponseWriter, r *http.Request) bool {
	id := r.PathValue("id")
	if !queue.ValidID(id) {
		writeError(w, http.StatusBadRequest, "bad_id", "not a message id: give the id of the 250 reply (16 characters 0-9a-v, on a cluster after the node id and a dash)")
		return false
	}
	return !s.forwarded(w, r, id)
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request) {
	if !s.localMessage(w, r) {
		return
	}
	m, err := s.opts.Queue.Get(r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, NewMessageView(m))
}

func (s *Server) findMessages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var ids []string
	var err error
	switch {
	case q.Get("ref") != "":
		ids, err = s.opts.Queue.ByRef(q.Get("ref"))
	case q.Get("recipient") != "":
		ids, err = s.opts.Queue.ByRecipient(q.Get("recipient"))
	default:
		writeError(w, http.StatusBadRequest, "bad_query", "give ref= or recipient= (or use GET /v1/queue to list)")
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	out := []MessageView{}
	for _, id := range ids {
		if m, err := s.opts.Queue.Get(id); err == nil {
			out = append(out, NewMessageView(m))
		}
	}
	if !s.clustered(r) {
		writeJSON(w, http.StatusOK, map[string]any{"messages": out})
		return
	}
	out, _, missing, _ := s.gatherMessages(r, out, nil)
	newestFirst(out)
	writeJSON(w, http.StatusOK, map[string]any{"messages": out, "unanswered": missing})
}

func (s *Server) deleteMessage(w http.ResponseWriter, r *http.Request) {
	if !s.localMessage(w, r) {
		return
	}
	if err := s.opts.Queue.Delete(r.Context(), r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted": r.PathValue("id")})
}

func (s *Server) retryMessage(w http.ResponseWriter, r *http.Request) {
	if !s.localMessage(w, r) {
		return
	}
	n, err := s.opts.Queue.Retry(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": r.PathValue("id"), "rescheduled": n})
}

func (s *Server) listQueue(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	status := queue.Status(q.Get("status"))
	if status != "" && !status.Valid() {
		writeError(w, http.StatusBadRequest, "bad_status", "status must be one of queued, deferred, sent, bounced, suppressed")
		return
	}
	limit, err := queryInt(r, "limit", 50, 1, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_query", err.Error())
		return
	}
	before := q.Get("before")
	if before != "" && !queue.ValidID(before) {
		writeError(w, http.StatusBadRequest, "bad_query", "before must be a message id")
		return
	}
	localBefore := before
	if s.clustered(r) {
		localBefore = nodeCursor(s.opts.Cluster.Node(), before)
	}
	msgs, next, err := s.opts.Queue.List(queue.ListOptions{Status: status, Before: localBefore, Limit: limit})
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]MessageView, 0, len(msgs))
	for _, m := range msgs {
		v := NewMessageView(m)
		for i := range v.Recipients {
			v.Recipients[i].Events = nil // keep pages small; GET /v1/messages/{id} has them
		}
		out = append(out, v)
	}
	if !s.clustered(r) {
		writeJSON(w, http.StatusOK, map[string]any{"messages": out, "next": next, "counts": s.opts.Queue.Counts()})
		return
	}
	// Every node pages from the same instant; the merged page is the
	// newest limit of all, and the next page starts after its last.
	out, nodeCounts, missing, more := s.gatherMessages(r, out, func(node string, q url.Values) {
		if before != "" {
			q.Set("before", nodeCursor(node, before))
		}
	})
	more = more || next != ""
	counts := s.opts.Queue.Counts()
	for _, c := range nodeCounts {
		for st, n := range c {
			counts[st] += n
		}
	}
	newestFirst(out)
	if len(out) > limit {
		out, more = out[:limit], true
	}
	next = ""
	if more && len(out) > 0 {
		next = out[len(out)-1].ID
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": out, "next": next, "counts": counts, "unanswered": missing})
}

// events answers the ordered stream of status changes after a sequence
// number. With wait=DURATION (at most Options.MaxWait) it long-polls: it
// answers as soon as there is at least one event, or empty when the wait is
// over. At most Options.MaxLongPolls wait at once; another gets 429.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_query", "after must be an event sequence number")
			return
		}
		after = n
	} else if q.Get("tail") != "" {
		last, err := s.opts.Queue.LastEventSeq()
		if err != nil {
			s.fail(w, err)
			return
		}
		after = last
	}
	limit, err := queryInt(r, "limit", 500, 1, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_query", err.Error())
		return
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		wait, err = time.ParseDuration(v)
		if err != nil || wait < 0 || wait > s.opts.MaxWait {
			writeError(w, http.StatusBadRequest, "bad_query", fmt.Sprintf("wait must be a duration up to %s, e.g. 30s", s.opts.MaxWait))
			return
		}
	}
	if wait > 0 {
		select {
		case s.polls <- struct{}{}:
			defer func() { <-s.polls }()
		default:
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "too_many_waits", fmt.Sprintf("%d long-polls are open already; try again later or poll without wait", s.opts.MaxLongPolls))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		changed := s.opts.Queue.EventsChanged()
		evs, err := s.opts.Queue.Events(after, limit)
		if err != nil {
			s.fail(w, err)
			return
		}
		if len(evs) > 0 || wait == 0 {
			next := after
			if len(evs) > 0 {
				next = evs[len(evs)-1].Seq
			}
			views := make([]EventView, len(evs))
			for i, ev := range evs {
				views[i] = NewEventView(ev)
			}
			writeJSON(w, http.StatusOK, map[string]any{"events": views, "next": next})
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, map[string]any{"events": []EventView{}, "next": after})
			return
		}
	}
}
