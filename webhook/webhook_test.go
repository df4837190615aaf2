package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/webhook"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)

// clock is the injected time source; tests move it by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// request is one POST as the receiver saw it.
type request struct {
	header http.Header
	body   []byte
	code   int // what the receiver answered
	events []queue.Event
}

// receiver is a real HTTP endpoint on loopback that records every request
// and answers with a settable status code.
type receiver struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	code int
	reqs []request
	got  chan struct{}
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{t: t, code: http.StatusOK, got: make(chan struct{}, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Errorf("receiver: read body: %v", err)
		}
		var payload struct {
			Events []queue.Event `json:"events"`
		}
		if req.Method == http.MethodPost {
			if err := json.Unmarshal(body, &payload); err != nil {
				t.Errorf("receiver: bad JSON %q: %v", body, err)
			}
		}
		r.mu.Lock()
		code := r.code
		r.reqs = append(r.reqs, request{header: req.Header.Clone(), body: body, code: code, events: payload.Events})
		r.mu.Unlock()
		if code >= 300 && code < 400 {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(code)
		fmt.Fprintln(w, "answer", code)
		select {
		case r.got <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) setCode(code int) {
	r.mu.Lock()
	r.code = code
	r.mu.Unlock()
}

func (r *receiver) requests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.reqs...)
}

// delivered returns the Seq of every event the receiver acknowledged with a 2xx.
func (r *receiver) delivered() []uint64 {
	var seqs []uint64
	for _, q := range r.requests() {
		if q.code/100 == 2 {
			for _, e := range q.events {
				seqs = append(seqs, e.Seq)
			}
		}
	}
	return seqs
}

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func tempDB(t *testing.T) *bolt.DB {
	t.Helper()
	return openDB(t, filepath.Join(t.TempDir(), "hermod.db"))
}

var secret = []byte("s3cret")

func open(t *testing.T, db *bolt.DB, clk *clock, eps ...webhook.Endpoint) *webhook.Outbox {
	t.Helper()
	return openOpts(t, db, webhook.Options{Endpoints: eps, Now: clk.Now})
}

func openOpts(t *testing.T, db *bolt.DB, opts webhook.Options) *webhook.Outbox {
	t.Helper()
	o, err := webhook.Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func event(seq uint64, status queue.Status) queue.Event {
	return queue.Event{Seq: seq, Time: t0, MessageID: fmt.Sprintf("m%03d", seq), Recipient: "rcpt@example.invalid", Status: status, Source: "relay"}
}

// enqueue records evs through EnqueueTx in one write transaction.
func enqueue(t *testing.T, db *bolt.DB, o *webhook.Outbox, evs ...queue.Event) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		for _, ev := range evs {
			if err := o.EnqueueTx(tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	o.Notify()
}

func seqs(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func depth(t *testing.T, o *webhook.Outbox) map[string]int {
	t.Helper()
	d, err := o.Depth()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func mustFlush(t *testing.T, o *webhook.Outbox, want int) {
	t.Helper()
	n, err := o.Flush(context.Background())
	if err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if n != want {
		t.Fatalf("Flush sent %d events, want %d", n, want)
	}
}

func TestDeliverInOrderSigned(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	o := open(t, db, clk, webhook.Endpoint{Name: "app", URL: rcv.srv.URL + "/hooks?token=x", Secret: secret})
	enqueue(t, db, o, event(1, queue.StatusQueued), event(2, queue.StatusDeferred), event(3, queue.StatusSent))
	enqueue(t, db, o, event(4, queue.StatusBounced), event(5, queue.StatusSuppressed))
	if d := depth(t, o); d["app"] != 5 {
		t.Fatalf("depth %v, want app:5", d)
	}
	mustFlush(t, o, 5)
	mustFlush(t, o, 0) // exactly once: nothing left to send

	reqs := rcv.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	q := reqs[0]
	if ct := q.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if q.header.Get(webhook.DeliveryHeader) == "" {
		t.Errorf("no %s header", webhook.DeliveryHeader)
	}
	sig := q.header.Get(webhook.SignatureHeader)
	if err := webhook.Verify(secret, sig, q.body, clk.Now(), time.Minute); err != nil {
		t.Errorf("Verify(%q): %v", sig, err)
	}
	if want := fmt.Sprintf("t=%d,v1=", t0.Unix()); !strings.HasPrefix(sig, want) {
		t.Errorf("signature %q, want prefix %q", sig, want)
	}
	if got := rcv.delivered(); !equal(got, seqs(1, 5)) {
		t.Errorf("delivered %v, want 1..5 in order", got)
	}
	// The event goes out exactly as the queue would encode it.
	want := event(3, queue.StatusSent)
	if got := q.events[2]; got.MessageID != want.MessageID || !got.Time.Equal(want.Time) || got.Status != want.Status || got.Source != want.Source {
		t.Errorf("event 3 = %+v, want %+v", got, want)
	}
	if !bytes.HasPrefix(q.body, []byte(`{"events":[{"seq":1,`)) {
		t.Errorf("body %s", q.body)
	}
	if d := depth(t, o); d["app"] != 0 {
		t.Errorf("depth after delivery %v", d)
	}
}

// TestQueueFollower wires the outbox to a real queue.Store through a
// queue.Follower, as the daemon does, and checks that events appended twice
// (a consumer that crashed after its write) go out once.
func TestQueueFollower(t *testing.T) {
	clk, rcv := newClock(), newReceiver(t)
	s, err := queue.Open(filepath.Join(t.TempDir(), "q.db"), queue.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o := open(t, s.DB(), clk, webhook.Endpoint{URL: rcv.srv.URL, Secret: secret})
	f, err := queue.NewFollower(s, "webhooks", o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Run(ctx)
	m := &queue.Message{ID: queue.NewID(clk.Now()), Ref: "inv-42", MailFrom: "a@example.invalid",
		Recipients: []*queue.Recipient{{Address: "x@example.invalid"}, {Address: "y@example.invalid"}}}
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	last, _ := s.LastEventSeq()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := f.WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}
	// The same events again, as after a crash between the outbox write and
	// the follower's own bookkeeping: the outbox's cursor skips them.
	again, err := s.Events(0, 10)
	if err != nil || len(again) != 2 {
		t.Fatalf("events %v %v", again, err)
	}
	if err := o.AppendEvents(again); err != nil {
		t.Fatal(err)
	}
	mustFlush(t, o, 2)
	evs := rcv.requests()[0].events
	if len(evs) != 2 || evs[0].Recipient != "x@example.invalid" || evs[1].Recipient != "y@example.invalid" ||
		evs[0].Status != queue.StatusQueued || evs[0].Ref != "inv-42" || evs[0].MessageID != m.ID || evs[0].Seq >= evs[1].Seq {
		t.Errorf("events %+v", evs)
	}
	mustFlush(t, o, 0)
}

func TestRollbackEnqueuesNothing(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	o := open(t, db, clk, webhook.Endpoint{URL: rcv.srv.URL, Secret: secret})
	boom := errors.New("boom")
	err := db.Update(func(tx *bolt.Tx) error {
		if err := o.EnqueueTx(tx, event(1, queue.StatusSent)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if d := depth(t, o); d["0"] != 0 {
		t.Errorf("depth %v after rollback", d)
	}
	mustFlush(t, o, 0)
}

func TestEventFilter(t *testing.T) {
	clk, db := newClock(), tempDB(t)
	all, finals, bounces := newReceiver(t), newReceiver(t), newReceiver(t)
	o := open(t, db, clk,
		webhook.Endpoint{Name: "all", URL: all.srv.URL, Secret: secret}, // empty Events: all
		webhook.Endpoint{Name: "finals", URL: finals.srv.URL, Secret: secret, Events: []string{"sent", "bounced", "suppressed"}},
		webhook.Endpoint{Name: "bounces", URL: bounces.srv.URL + "/b", Secret: []byte("other"), Events: []string{"bounced"}},
	)
	statuses := []queue.Status{queue.StatusQueued, queue.StatusDeferred, queue.StatusSent, queue.StatusBounced, queue.StatusSuppressed, queue.StatusBounced}
	for i, st := range statuses {
		enqueue(t, db, o, event(uint64(i+1), st))
	}
	if d := depth(t, o); d["all"] != 6 || d["finals"] != 4 || d["bounces"] != 2 || len(d) != 3 {
		t.Fatalf("depth %v", d)
	}
	mustFlush(t, o, 12)
	for _, c := range []struct {
		r    *receiver
		want []uint64
	}{{all, seqs(1, 6)}, {finals, []uint64{3, 4, 5, 6}}, {bounces, []uint64{4, 6}}} {
		if got := c.r.delivered(); !equal(got, c.want) {
			t.Errorf("%s got %v, want %v", c.r.srv.URL, got, c.want)
		}
	}
	q := bounces.requests()[0]
	if err := webhook.Verify([]byte("other"), q.header.Get(webhook.SignatureHeader), q.body, clk.Now(), 0); err != nil {
		t.Errorf("per-endpoint secret: %v", err)
	}
}

func TestBatchSize(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	o := openOpts(t, db, webhook.Options{Endpoints: []webhook.Endpoint{{URL: rcv.srv.URL, Secret: secret}}, Now: clk.Now, BatchSize: 3})
	for i := uint64(1); i <= 10; i++ {
		enqueue(t, db, o, event(i, queue.StatusSent))
	}
	for _, want := range []int{3, 3, 3, 1, 0} {
		mustFlush(t, o, want)
	}
	var sizes []int
	ids := map[string]bool{}
	for _, q := range rcv.requests() {
		sizes = append(sizes, len(q.events))
		ids[q.header.Get(webhook.DeliveryHeader)] = true
	}
	if !equal(sizes, []int{3, 3, 3, 1}) {
		t.Errorf("batch sizes %v", sizes)
	}
	if len(ids) != 4 {
		t.Errorf("delivery ids not unique per batch: %v", ids)
	}
	if got := rcv.delivered(); !equal(got, seqs(1, 10)) {
		t.Errorf("delivered %v", got)
	}
}

// TestReceiverDown keeps the receiver at 503 for over an hour of injected
// time while events keep arriving, then lets it recover.
func TestReceiverDown(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	const maxBackoff = 10 * time.Minute
	o := openOpts(t, db, webhook.Options{Endpoints: []webhook.Endpoint{{Name: "app", URL: rcv.srv.URL, Secret: secret}},
		Now: clk.Now, BatchSize: 1000, MaxBackoff: maxBackoff})
	rcv.setCode(http.StatusServiceUnavailable)
	var seq uint64
	add := func() {
		seq++
		enqueue(t, db, o, event(seq, queue.StatusDeferred))
	}
	add()
	start, bound, attempts := clk.Now(), time.Second, 0
	for clk.Now().Sub(start) < time.Hour {
		before := len(rcv.requests())
		n, err := o.Flush(context.Background())
		if n != 0 || err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("attempt %d: Flush = %d, %v; want 0 and a 503 error", attempts+1, n, err)
		}
		if got := len(rcv.requests()); got != before+1 {
			t.Fatalf("attempt %d: %d requests, want 1", attempts+1, got-before)
		}
		attempts++
		// The next attempt is due between bound/2 and bound from now.
		clk.Advance(bound/2 - time.Millisecond)
		if n, err := o.Flush(context.Background()); n != 0 || err != nil || len(rcv.requests()) != before+1 {
			t.Fatalf("attempt %d: retried before %v (Flush %d, %v)", attempts, bound/2, n, err)
		}
		add() // the application keeps sending meanwhile
		clk.Advance(bound - bound/2 + time.Millisecond)
		bound = min(2*bound, maxBackoff)
	}
	if attempts < 12 || attempts > 25 {
		t.Errorf("%d attempts in an hour; want the doubling capped at %v", attempts, maxBackoff)
	}
	if d := depth(t, o); d["app"] != int(seq) {
		t.Fatalf("depth %v while down, want %d", d, seq)
	}
	reqs := rcv.requests()
	if a, b := reqs[0].header.Get(webhook.DeliveryHeader), reqs[1].header.Get(webhook.DeliveryHeader); a == b {
		t.Errorf("batch grew but kept delivery id %q", a)
	}

	// One more failed attempt with nothing new: the retry after it carries
	// the same batch and so the same delivery id.
	if _, err := o.Flush(context.Background()); err == nil {
		t.Fatal("Flush succeeded against a 503")
	}
	clk.Advance(maxBackoff)
	rcv.setCode(http.StatusNoContent)
	mustFlush(t, o, int(seq))
	mustFlush(t, o, 0)
	if got := rcv.delivered(); !equal(got, seqs(1, seq)) {
		t.Errorf("after recovery delivered %v, want 1..%d once each in order", got, seq)
	}
	last := rcv.requests()[len(rcv.requests())-1]
	prev := rcv.requests()[len(rcv.requests())-2]
	if a, b := prev.header.Get(webhook.DeliveryHeader), last.header.Get(webhook.DeliveryHeader); a != b {
		t.Errorf("retry of the same batch changed delivery id: %q then %q", a, b)
	}
	// Success resets the backoff: a new event goes out at once.
	add()
	mustFlush(t, o, 1)
}

// TestReceiverErrors: every non-2xx answer keeps the batch; receiver
// misconfiguration is logged as an error, being busy or down as a warning.
func TestReceiverErrors(t *testing.T) {
	for _, c := range []struct {
		code  int
		level string
	}{
		{400, "ERROR"}, {401, "ERROR"}, {404, "ERROR"}, {410, "ERROR"}, {413, "ERROR"},
		{301, "ERROR"}, {308, "ERROR"}, // redirects are not followed
		{408, "WARN"}, {429, "WARN"}, {500, "WARN"}, {502, "WARN"},
	} {
		t.Run(fmt.Sprint(c.code), func(t *testing.T) {
			clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
			var logs bytes.Buffer
			var logMu sync.Mutex
			h := slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil)
			o := openOpts(t, db, webhook.Options{Endpoints: []webhook.Endpoint{{URL: rcv.srv.URL, Secret: secret}},
				Now: clk.Now, Logger: slog.New(h)})
			enqueue(t, db, o, event(1, queue.StatusBounced), event(2, queue.StatusSent))
			rcv.setCode(c.code)
			if n, err := o.Flush(context.Background()); n != 0 || err == nil {
				t.Fatalf("Flush = %d, %v; want 0 and an error", n, err)
			}
			logMu.Lock()
			line := logs.String()
			logMu.Unlock()
			if !strings.Contains(line, "level="+c.level) || !strings.Contains(line, fmt.Sprintf("HTTP %d", c.code)) {
				t.Errorf("log %q, want level %s", line, c.level)
			}
			if d := depth(t, o); d["0"] != 2 {
				t.Fatalf("depth %v, want the batch kept", d)
			}
			for _, q := range rcv.requests() {
				if q.header.Get(webhook.SignatureHeader) == "" { // a followed redirect would arrive unsigned
					t.Errorf("%s request without signature", q.body)
				}
			}
			rcv.setCode(http.StatusOK)
			clk.Advance(time.Second)
			mustFlush(t, o, 2)
			if got := rcv.delivered(); !equal(got, []uint64{1, 2}) {
				t.Errorf("delivered %v", got)
			}
		})
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestReceiverUnreachable(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	url := rcv.srv.URL
	rcv.srv.Close() // nothing listens there any more
	o := open(t, db, clk, webhook.Endpoint{URL: url, Secret: secret})
	enqueue(t, db, o, event(1, queue.StatusSent))
	if n, err := o.Flush(context.Background()); n != 0 || err == nil {
		t.Fatalf("Flush = %d, %v; want a network error", n, err)
	}
	if d := depth(t, o); d["0"] != 1 {
		t.Errorf("depth %v", d)
	}
}

// TestConcurrentFlush: Flush from several goroutines never sends an entry twice.
func TestConcurrentFlush(t *testing.T) {
	clk, db, rcv := newClock(), tempDB(t), newReceiver(t)
	o := openOpts(t, db, webhook.Options{Endpoints: []webhook.Endpoint{{URL: rcv.srv.URL, Secret: secret}}, Now: clk.Now, BatchSize: 7})
	for i := uint64(1); i <= 50; i++ {
		enqueue(t, db, o, event(i, queue.StatusSent))
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				n, err := o.Flush(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	if got := rcv.delivered(); !equal(got, seqs(1, 50)) {
		t.Errorf("delivered %v", got)
	}
}

func TestReopenKeepsPending(t *testing.T) {
	clk, rcv := newClock(), newReceiver(t)
	path := filepath.Join(t.TempDir(), "hermod.db")
	db := openDB(t, path)
	ep := webhook.Endpoint{Name: "app", URL: rcv.srv.URL, Secret: secret, Events: []string{"*"}}
	o := open(t, db, clk, ep)
	enqueue(t, db, o, event(1, queue.StatusSent), event(2, queue.StatusBounced))
	rcv.setCode(http.StatusBadGateway)
	if _, err := o.Flush(context.Background()); err == nil {
		t.Fatal("Flush succeeded against a 502")
	}
	enqueue(t, db, o, event(3, queue.StatusSent))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, path)
	ep.Name = "renamed" // identity is the URL, not the name
	o = open(t, db, clk, ep)
	if d := depth(t, o); d["renamed"] != 3 {
		t.Fatalf("depth after reopen %v, want renamed:3", d)
	}
	rcv.setCode(http.StatusOK)
	mustFlush(t, o, 3) // the backoff was in memory: a restart retries at once
	if got := rcv.delivered(); !equal(got, seqs(1, 3)) {
		t.Errorf("delivered %v", got)
	}
	enqueue(t, db, o, event(4, queue.StatusSent))
	mustFlush(t, o, 1)
	if got := rcv.delivered(); !equal(got, seqs(1, 4)) {
		t.Errorf("delivered %v", got)
	}
}

func TestSetEndpoints(t *testing.T) {
	clk, db := newClock(), tempDB(t)
	a, b := newReceiver(t), newReceiver(t)
	epA := webhook.Endpoint{Name: "a", URL: a.srv.URL, Secret: secret}
	epB := webhook.Endpoint{Name: "b", URL: b.srv.URL, Secret: secret}
	o := open(t, db, clk, epA, epB)
	enqueue(t, db, o, event(1, queue.StatusSent), event(2, queue.StatusSent))

	if err := o.SetEndpoints([]webhook.Endpoint{epA, {Name: "bad", URL: "/relative", Secret: secret}}); err == nil {
		t.Fatal("SetEndpoints accepted a relative URL")
	}
	if d := depth(t, o); d["a"] != 2 || d["b"] != 2 {
		t.Fatalf("a failed reload changed the outbox: %v", d)
	}
	if err := o.SetEndpoints([]webhook.Endpoint{epA}); err != nil {
		t.Fatal(err)
	}
	if d := depth(t, o); d["a"] != 2 || len(d) != 1 {
		t.Fatalf("after removing b: %v", d)
	}
	enqueue(t, db, o, event(3, queue.StatusSent))
	if err := o.SetEndpoints([]webhook.Endpoint{epA, epB}); err != nil {
		t.Fatal(err)
	}
	if d := depth(t, o); d["a"] != 3 || d["b"] != 0 {
		t.Fatalf("after re-adding b: %v, want its old entries gone", d)
	}
	mustFlush(t, o, 3)
	if len(b.requests()) != 0 {
		t.Errorf("removed endpoint got %d requests", len(b.requests()))
	}

	// Entries of an endpoint dropped from the config across a restart go too.
	enqueue(t, db, o, event(4, queue.StatusSent))
	o = open(t, db, clk, epA)
	if d := depth(t, o); d["a"] != 1 || len(d) != 1 {
		t.Errorf("reopen without b: %v", d)
	}
	if d := depth(t, open(t, db, clk, epA, epB)); d["b"] != 0 {
		t.Errorf("b kept entries across a config without it: %v", d)
	}
}

func TestOpenInvalid(t *testing.T) {
	db := tempDB(t)
	ok := webhook.Endpoint{URL: "https://app.example.invalid/hook", Secret: secret}
	for _, c := range []struct {
		name string
		eps  []webhook.Endpoint
		want string
	}{
		{"relative", []webhook.Endpoint{{URL: "/hook", Secret: secret}}, "absolute"},
		{"ftp", []webhook.Endpoint{{URL: "ftp://h.example.invalid/", Secret: secret}}, "absolute"},
		{"no secret", []webhook.Endpoint{{URL: ok.URL}}, "secret"},
		{"unknown event", []webhook.Endpoint{{URL: ok.URL, Secret: secret, Events: []string{"delivered"}}}, `"delivered"`},
		{"duplicate url", []webhook.Endpoint{ok, ok}, "duplicate URL"},
		{"duplicate name", []webhook.Endpoint{{Name: "x", URL: ok.URL, Secret: secret}, {Name: "x", URL: ok.URL + "2", Secret: secret}}, "duplicate endpoint name"},
		{"password redacted", []webhook.Endpoint{{URL: "ftp://u:hunter2@h.example.invalid/", Secret: secret}}, "xxxxx"},
	} {
		_, err := webhook.Open(db, webhook.Options{Endpoints: c.eps})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: Open error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := webhook.Open(db, webhook.Options{}); err != nil {
		t.Errorf("no endpoints: %v", err)
	}
}

func TestRun(t *testing.T) {
	db, rcv := tempDB(t), newReceiver(t)
	o := openOpts(t, db, webhook.Options{Endpoints: []webhook.Endpoint{{URL: rcv.srv.URL, Secret: secret}}}) // real clock
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	for i := uint64(1); i <= 3; i++ {
		enqueue(t, db, o, event(i, queue.StatusSent)) // calls Notify
		select {
		case <-rcv.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d not delivered by Run", i)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := rcv.delivered(); !equal(got, seqs(1, 3)) {
		t.Errorf("delivered %v", got)
	}
}

func TestVerify(t *testing.T) {
	body := []byte(`{"events":[{"seq":1}]}`)
	ts := t0.Unix()
	good := fmt.Sprintf("t=%d,v1=%s", ts, webhook.Sign(secret, ts, body))
	for _, c := range []struct {
		name   string
		secret []byte
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"good", secret, good, body, t0, nil},
		{"within tolerance", secret, good, body, t0.Add(4 * time.Minute), nil},
		{"rotation: second v1 matches", secret, fmt.Sprintf("t=%d,v1=%s,v1=%s", ts, webhook.Sign([]byte("old"), ts, body), webhook.Sign(secret, ts, body)), body, t0, nil},
		{"tampered body", secret, good, []byte(`{"events":[{"seq":2}]}`), t0, webhook.ErrSignatureMismatch},
		{"wrong secret", []byte("nope"), good, body, t0, webhook.ErrSignatureMismatch},
		{"timestamp changed", secret, fmt.Sprintf("t=%d,v1=%s", ts+1, webhook.Sign(secret, ts, body)), body, t0, webhook.ErrSignatureMismatch},
		{"stale", secret, good, body, t0.Add(6 * time.Minute), webhook.ErrStaleTimestamp},
		{"future", secret, good, body, t0.Add(-6 * time.Minute), webhook.ErrStaleTimestamp},
		{"empty", secret, "", body, t0, webhook.ErrMalformedSignature},
		{"no t", secret, "v1=" + webhook.Sign(secret, ts, body), body, t0, webhook.ErrMalformedSignature},
		{"no v1", secret, fmt.Sprintf("t=%d", ts), body, t0, webhook.ErrMalformedSignature},
		{"bad hex", secret, fmt.Sprintf("t=%d,v1=zz", ts), body, t0, webhook.ErrMalformedSignature},
		{"bad t", secret, "t=abc,v1=00", body, t0, webhook.ErrMalformedSignature},
	} {
		err := webhook.Verify(c.secret, c.header, c.body, c.now, 0)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: Verify(%q) = %v, want %v", c.name, c.header, err, c.want)
		}
	}
	// Sign is HMAC-SHA256 over "<t>.<body>" (value from openssl dgst -sha256 -hmac).
	if got, want := webhook.Sign(secret, 1700000000, []byte(`{"events":[]}`)), "41b4d3f6c59a79e37d083fb3cbe77f82807c4369fd469fb70cfa75e02d2e2775"; got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}
