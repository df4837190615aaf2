package api_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/queue"
)

// TestQueueSummary: two recipients at slow.test deferred with one reply,
// one at ok.test delivered: the summary by domain names slow.test alone,
// with that reply; by mx names the MX; an unknown grouping is a 400.
func TestQueueSummary(t *testing.T) {
	e := newAPI(t)
	busy := queue.Result{Status: queue.StatusDeferred, Host: "mx.slow.test[192.0.2.9:25]", Code: 421, EnhancedCode: "4.7.0", Text: "too busy"}
	e.startRunner(t, scripted{"a@slow.test": busy, "b@slow.test": busy})
	id := e.enqueue(t, time.Now().Add(-time.Hour), "r1", "a@slow.test", "b@slow.test", "c@ok.test")
	e.waitStatus(t, id, 0, queue.StatusDeferred)
	e.waitStatus(t, id, 1, queue.StatusDeferred)
	e.waitStatus(t, id, 2, queue.StatusSent)

	var got api.SummaryView
	e.ok(t, "GET", "/v1/queue/summary", nil, &got)
	if got.By != "domain" || len(got.Rows) != 1 {
		t.Fatalf("summary %+v, want one row by domain", got)
	}
	r := got.Rows[0]
	if r.Key != "slow.test" || r.Deferred != 2 || r.Queued != 0 || r.Total != 2 || r.TopError != "421 4.7.0 too busy" || r.TopErrorCount != 2 {
		t.Errorf("row %+v", r)
	}
	if age := time.Duration(r.OldestAge); age < time.Hour || age > time.Hour+time.Minute {
		t.Errorf("oldest age %s, want 1h", age)
	}
	e.ok(t, "GET", "/v1/queue/summary?by=mx", nil, &got)
	if len(got.Rows) != 1 || got.Rows[0].Key != "mx.slow.test" || got.By != "mx" {
		t.Errorf("by mx: %+v", got)
	}
	e.ok(t, "GET", "/v1/queue/summary?by=account", nil, &got)
	if len(got.Rows) != 1 || got.Rows[0].Key != "acme" {
		t.Errorf("by account: %+v", got)
	}
	e.fails(t, "GET", "/v1/queue/summary?by=rcpt", nil, http.StatusBadRequest, "bad_query")
}
