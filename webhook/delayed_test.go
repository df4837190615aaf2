package webhook_test

import (
	"testing"

	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/webhook"
)

// TestDelayedEventFilter: the delay warning (status deferred, type
// delayed) goes to an endpoint that subscribes to "delayed" and to one that
// takes everything, not to one that takes only deferred; a plain deferral
// does not reach the "delayed" endpoint.
func TestDelayedEventFilter(t *testing.T) {
	clk, db := newClock(), tempDB(t)
	all, delayed, deferred := newReceiver(t), newReceiver(t), newReceiver(t)
	o := open(t, db, clk,
		webhook.Endpoint{Name: "all", URL: all.srv.URL, Secret: secret},
		webhook.Endpoint{Name: "delayed", URL: delayed.srv.URL, Secret: secret, Events: []string{"delayed"}},
		webhook.Endpoint{Name: "deferred", URL: deferred.srv.URL, Secret: secret, Events: []string{"deferred"}},
	)
	warn := event(2, queue.StatusDeferred)
	warn.Type = queue.EventDelayed
	enqueue(t, db, o, event(1, queue.StatusDeferred), warn, event(3, queue.StatusSent))
	if d := depth(t, o); d["all"] != 3 || d["delayed"] != 1 || d["deferred"] != 1 {
		t.Fatalf("depth %v", d)
	}
	mustFlush(t, o, 5)
	for _, c := range []struct {
		r    *receiver
		want []uint64
	}{{all, seqs(1, 3)}, {delayed, []uint64{2}}, {deferred, []uint64{1}}} {
		if got := c.r.delivered(); !equal(got, c.want) {
			t.Errorf("%s got %v, want %v", c.r.srv.URL, got, c.want)
		}
	}
}
