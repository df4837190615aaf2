package api_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/queue"
)

type bulkAnswer struct {
	Action     string           `json:"action"`
	DryRun     bool             `json:"dry_run"`
	Recipients int              `json:"recipients"`
	Messages   int              `json:"messages"`
	Sample     []queue.BulkItem `json:"sample"`
}

// TestBulkEndpoints: POST /v1/queue/{hold,release,retry,delete} take a JSON
// filter, dry_run changes nothing, a held recipient reads "held" with the
// waiting wording, every change is an admin event in /v1/events, and a
// missing, unknown or malformed filter is a 400 that changes nothing.
func TestBulkEndpoints(t *testing.T) {
	e := newAPI(t)
	old := e.enqueue(t, time.Now().Add(-3*time.Hour), "r-1", "a@dest.test", "b@other.test")
	recent := e.enqueue(t, time.Now(), "r-2", "c@dest.test")

	var ans bulkAnswer
	e.ok(t, "POST", "/v1/queue/hold", map[string]any{"domain": "DEST.test", "older_than": "2h", "dry_run": true}, &ans)
	if ans.Action != "hold" || !ans.DryRun || ans.Recipients != 1 || ans.Messages != 1 || len(ans.Sample) != 1 ||
		ans.Sample[0].ID != old || ans.Sample[0].Address != "a@dest.test" || ans.Sample[0].Status != queue.StatusQueued {
		t.Fatalf("dry run: %+v", ans)
	}
	var p queuePage
	e.ok(t, "GET", "/v1/queue", nil, &p)
	if p.Counts["held"] != 0 || p.Counts["queued"] != 3 {
		t.Fatalf("dry run changed the queue: %v", p.Counts)
	}

	e.ok(t, "POST", "/v1/queue/hold", map[string]any{"domain": "dest.test"}, &ans)
	if ans.DryRun || ans.Recipients != 2 || ans.Messages != 2 {
		t.Fatalf("hold: %+v", ans)
	}
	var m api.MessageView
	e.ok(t, "GET", "/v1/messages/"+old, nil, &m)
	r := m.Recipients[0]
	if r.Status != queue.StatusHeld || r.Message.JA != "送信結果待ち" || r.Message.EN != "Waiting for the result" || m.Recipients[1].Status != queue.StatusQueued {
		t.Errorf("held recipient view %+v / %+v", r, m.Recipients[1])
	}
	e.ok(t, "GET", "/v1/queue?status=held", nil, &p)
	if len(p.Messages) != 2 || p.Counts["held"] != 2 {
		t.Errorf("queue?status=held: %d messages, counts %v", len(p.Messages), p.Counts)
	}
	var evs eventsPage
	e.ok(t, "GET", "/v1/events?after=0", nil, &evs)
	held := 0
	for _, ev := range evs.Events {
		if ev.Status == queue.StatusHeld && ev.Source == "admin" {
			held++
		}
	}
	if held != 2 {
		t.Errorf("%d held admin events, want 2: %+v", held, evs.Events)
	}

	// Release one by id, retry by ref, delete by rcpt.
	e.ok(t, "POST", "/v1/queue/release", map[string]any{"ids": []string{recent}}, &ans)
	if ans.Recipients != 1 || ans.Sample[0].ID != recent {
		t.Errorf("release: %+v", ans)
	}
	e.ok(t, "POST", "/v1/queue/retry", map[string]any{"ref": "r-1"}, &ans)
	if ans.Recipients != 1 || ans.Sample[0].Address != "b@other.test" { // a@dest.test is held: retry leaves it
		t.Errorf("retry: %+v", ans)
	}
	e.ok(t, "POST", "/v1/queue/delete", map[string]any{"rcpt": "A@dest.test", "status": "held"}, &ans)
	if ans.Messages != 1 || ans.Recipients != 2 { // the whole message: both open recipients
		t.Errorf("delete: %+v", ans)
	}
	e.fails(t, "GET", "/v1/messages/"+old, nil, http.StatusNotFound, "not_found")

	// Refusals change nothing.
	e.fails(t, "POST", "/v1/queue/hold", map[string]any{}, http.StatusBadRequest, "bad_filter")
	e.fails(t, "POST", "/v1/queue/hold", map[string]any{"acount": "acme"}, http.StatusBadRequest, "bad_json")
	e.fails(t, "POST", "/v1/queue/hold", map[string]any{"account": "acme", "older_than": "soon"}, http.StatusBadRequest, "bad_filter")
	e.fails(t, "POST", "/v1/queue/hold", map[string]any{"status": "sent"}, http.StatusBadRequest, "bad_filter")
	e.fails(t, "POST", "/v1/queue/hold", map[string]any{"ids": []string{"x"}}, http.StatusBadRequest, "bad_filter")
	e.fails(t, "GET", "/v1/queue/hold", nil, http.StatusMethodNotAllowed, "method_not_allowed")
	e.ok(t, "GET", "/v1/queue", nil, &p)
	if p.Counts["held"] != 0 || p.Counts["queued"] != 1 {
		t.Errorf("after refusals: %v", p.Counts)
	}
}
