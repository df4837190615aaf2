package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/hermod-mta/hermod/queue"
)

// PeerAuth checks that a request comes from another node of the cluster
// (nodes.Auth implements it). Such a request is answered from this node's
// own spool only: it is never forwarded or fanned out again.
type PeerAuth interface {
	Verify(r *http.Request) (node string, err error)
}

// Cluster lets one node's API answer for the whole cluster. The daemon
// implements it on top of the node registry.
type Cluster interface {
	// Node is this node's id.
	Node() string
	// Local reports whether this node owns message id.
	Local(id string) bool
	// Forward relays r to the node that owns message id and copies its
	// answer to w; if that node does not answer, it writes 503 with a
	// JSON error naming the node.
	Forward(w http.ResponseWriter, r *http.Request, id string)
	// Gather sends r's method, path and query, as changed by rewrite for
	// each node (rewrite may be nil), to every other node of the cluster
	// and returns the bodies of the 200 answers by node, and the nodes
	// that did not answer.
	Gather(ctx context.Context, r *http.Request, rewrite func(node string, q url.Values)) (answers map[string][]byte, missing []string)
}

type peerKey struct{}

// fromPeer reports whether r was signed by another node.
func fromPeer(r *http.Request) bool { return r.Context().Value(peerKey{}) != nil }

// clustered reports whether r should be answered for the whole cluster.
func (s *Server) clustered(r *http.Request) bool { return s.opts.Cluster != nil && !fromPeer(r) }

// forwarded answers r from the owner of id when another node owns it, and
// reports whether it did.
func (s *Server) forwarded(w http.ResponseWriter, r *http.Request, id string) bool {
	if !s.clustered(r) || s.opts.Cluster.Local(id) {
		return false
	}
	s.opts.Cluster.Forward(w, r, id)
	return true
}

// unanswered is the list of nodes that did not answer, never null in JSON.
func unanswered(missing []string) []string {
	if missing == nil {
		return []string{}
	}
	sort.Strings(missing)
	return missing
}

// gatherMessages adds the "messages" of every other node's answer to out.
// more is set when some node said it has a next page.
func (s *Server) gatherMessages(r *http.Request, out []MessageView, rewrite func(string, url.Values)) (_ []MessageView, _ map[string]map[queue.Status]int64, missing []string, more bool) {
	answers, missing := s.opts.Cluster.Gather(r.Context(), r, rewrite)
	counts := map[string]map[queue.Status]int64{}
	for node, body := range answers {
		var page struct {
			Messages []MessageView          `json:"messages"`
			Counts   map[queue.Status]int64 `json:"counts"`
			Next     string                 `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			s.log.Warn("api: a node's answer is not a message list", "node", node, "err", err)
			missing = append(missing, node)
			continue
		}
		out = append(out, page.Messages...)
		counts[node] = page.Counts
		more = more || page.Next != ""
	}
	return out, counts, unanswered(missing), more
}

// idCore is the time-ordered part of a message id (without its node).
func idCore(id string) string {
	if i := strings.LastIndexByte(id, '-'); i >= 0 {
		return id[i+1:]
	}
	return id
}

// nodeCursor makes the cursor before (any node's id) one for node: the
// same instant in node's own ids, so that each node pages from the same
// point in time.
func nodeCursor(node, before string) string {
	if before == "" {
		return ""
	}
	return node + "-" + idCore(before)
}

// newestFirst sorts views by acceptance time, newest first, as one node's
// list is.
func newestFirst(v []MessageView) {
	sort.SliceStable(v, func(i, j int) bool {
		a, b := idCore(v[i].ID), idCore(v[j].ID)
		if a != b {
			return a > b
		}
		return v[i].ID > v[j].ID
	})
}

// PeerNode returns the node that signed r, for handlers mounted on the
// API (Options.Mount) that only other nodes may call.
func PeerNode(r *http.Request) (string, bool) {
	n, ok := r.Context().Value(peerKey{}).(string)
	return n, ok
}

// WriteError writes the API's JSON error answer, for mounted handlers.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	writeError(w, status, code, msg)
}
