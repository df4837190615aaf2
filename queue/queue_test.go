package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// scripted is a Deliverer answering from a per-recipient script of results;
// the last result repeats. It records every attempt.
type scripted struct {
	mu       sync.Mutex
	script   map[string][]Result
	attempts map[string]int
	done     chan string
}

func newScripted() *scripted {
	return &scripted{script: map[string][]Result{}, attempts: map[string]int{}, done: make(chan string, 1000)}
}

func (s *scripted) Deliver(ctx context.Context, d Delivery) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.script[d.Recipient.Address]
	n := s.attempts[d.Recipient.Address]
	s.attempts[d.Recipient.Address]++
	res := Result{Status: StatusSent, Code: 250, Text: "2.0.0 ok"}
	if len(rs) > 0 {
		res = rs[min(n, len(rs)-1)]
	}
	s.done <- d.Recipient.Address
	return res
}

func openStore(t *testing.T, path string, now func() time.Time) *Store {
	t.Helper()
	s, err := Open(path, Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newMessage(rcpts ...string) *Message {
	m := &Message{ID: NewID(time.Now()), MailFrom: "app@example.test"}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, &Recipient{Address: r, EnvelopeFrom: "bounce-md_x@m.example.test"})
	}
	return m
}

// waitStatus polls the store until recipient idx of id has the status (bounded).
func waitStatus(t *testing.T, s *Store, id string, idx int, want Status) *Recipient {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Recipients[idx].Status == want {
			return m.Recipients[idx]
		}
		if time.Now().After(deadline) {
			t.Fatalf("recipient %d of %s: status %s, want %s; events %+v", idx, id, m.Recipients[idx].Status, want, m.Recipients[idx].Events)
		}
		select {
		case <-s.EventsChanged():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestDeliverDeferRetryBounceExpire(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	d := newScripted()
	d.script["retry@a.test"] = []Result{{Status: StatusDeferred, Code: 451, EnhancedCode: "4.3.0", Text: "try later", Reason: "system"}, {Status: StatusSent, Code: 250, Text: "ok queued as X"}}
	d.script["gone@a.test"] = []Result{{Status: StatusBounced, Code: 550, EnhancedCode: "5.1.1", Text: "5.1.1 no such user", Reason: "user-unknown"}}
	d.script["slow@a.test"] = []Result{{Status: StatusDeferred, Code: 421, Text: "busy"}}
	ctx, cancel := context.WithCancel(context.Background())
	// The lifetime leaves room for the first attempts on a slow machine
	// (-race): with 300 ms a first attempt could already come too late.
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{20 * time.Millisecond}, MaxAge: 2 * time.Second})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	m := newMessage("ok@a.test", "retry@a.test", "gone@a.test", "slow@a.test")
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if rc := waitStatus(t, s, m.ID, 0, StatusSent); rc.Last.Code != 250 {
		t.Errorf("sent: last %+v", rc.Last)
	}
	rc := waitStatus(t, s, m.ID, 1, StatusSent)
	if rc.Attempts != 2 || rc.Events[1].Status != StatusDeferred || rc.Events[1].Text != "try later" {
		t.Errorf("retry: attempts %d events %+v", rc.Attempts, rc.Events)
	}
	rc = waitStatus(t, s, m.ID, 2, StatusBounced)
	if rc.Reason != "user-unknown" || rc.Last.EnhancedCode != "5.1.1" || rc.Attempts != 1 {
		t.Errorf("bounce: %+v", rc)
	}
	rc = waitStatus(t, s, m.ID, 3, StatusBounced)
	if rc.Reason != "expired" || rc.Attempts < 2 {
		t.Errorf("expiry: reason %q attempts %d", rc.Reason, rc.Attempts)
	}
	got, _ := s.Get(m.ID)
	if got.Finished.IsZero() {
		t.Error("message with only final recipients not marked finished")
	}
	if c := s.Counts(); c[StatusSent] != 2 || c[StatusBounced] != 2 || c[StatusQueued] != 0 || c[StatusDeferred] != 0 {
		t.Errorf("counts %v", c)
	}
}

func TestRestartKeepsQueueAndDoesNotResend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s := openStore(t, path, nil)
	d := newScripted()
	d.script["later@a.test"] = []Result{{Status: StatusDeferred, Code: 451, Text: "later"}}
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	m := newMessage("now@a.test", "later@a.test")
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, m.ID, 0, StatusSent)
	waitStatus(t, s, m.ID, 1, StatusDeferred)
	cancel()
	<-done
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen an hour later: the deferred recipient is due, the sent one is not resent.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	s = openStore(t, path, later)
	defer s.Close()
	d2 := newScripted()
	ctx2, cancel2 := context.WithCancel(context.Background())
	r2 := NewRunner(s, d2, RunnerOptions{Retry: []time.Duration{time.Hour}, MaxAge: 24 * time.Hour})
	done2 := make(chan struct{})
	go func() { r2.Run(ctx2); close(done2) }()
	defer func() { cancel2(); <-done2 }()
	waitStatus(t, s, m.ID, 1, StatusSent)
	d2.mu.Lock()
	defer d2.mu.Unlock()
	if d2.attempts["now@a.test"] != 0 || d2.attempts["later@a.test"] != 1 {
		t.Errorf("after restart attempts %v, want only later@a.test once", d2.attempts)
	}
}

func TestGroupCommitSharesFsync(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- s.Enqueue(context.Background(), newMessage(fmt.Sprintf("r%d@a.test", i)), []byte("x\r\n"))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	txs, writes := s.Commits()
	if writes != n {
		t.Errorf("writes = %d, want %d", writes, n)
	}
	if txs >= n {
		t.Errorf("%d concurrent enqueues took %d commits: no group commit", n, txs)
	}
	t.Logf("%d enqueues in %d commits", n, txs)
	page, next, err := s.List(ListOptions{Status: StatusQueued, Limit: 150})
	if err != nil || len(page) != 150 || next == "" {
		t.Fatalf("list page 1: %d next %q err %v", len(page), next, err)
	}
	page2, next2, err := s.List(ListOptions{Status: StatusQueued, Before: next, Limit: 150})
	if err != nil || len(page2) != 50 || next2 != "" {
		t.Fatalf("list page 2: %d next %q err %v", len(page2), next2, err)
	}
	if page[0].ID < page[1].ID || page[149].ID < page2[0].ID {
		t.Error("list not newest first")
	}
}

func TestFailingWriteDoesNotSinkBatch(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	m := newMessage("a@a.test")
	if err := s.Enqueue(context.Background(), m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var dupErr, okErr error
	wg.Add(2)
	go func() { defer wg.Done(); dupErr = s.Enqueue(context.Background(), m, []byte("x\r\n")) }()
	go func() {
		defer wg.Done()
		okErr = s.Enqueue(context.Background(), newMessage("b@a.test"), []byte("y\r\n"))
	}()
	wg.Wait()
	if dupErr == nil || okErr != nil {
		t.Fatalf("duplicate id: %v; independent write: %v", dupErr, okErr)
	}
}

func TestApplyBounceAfterSentAndDelete(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("a@a.test", "b@a.test")
	m.Ref = "invoice-42"
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.record(ctx, m.ID, 0, Result{Status: StatusSent, Code: 250}, nil, 0); err != nil {
		t.Fatal(err)
	}
	r, err := s.Apply(ctx, m.ID, 0, Event{Status: StatusBounced, Reason: "user-unknown", Source: "dsn", EnhancedCode: "5.1.1"})
	if err != nil || r.Status != StatusBounced || r.Reason != "user-unknown" {
		t.Fatalf("apply: %+v %v", r, err)
	}
	if _, err := s.Apply(ctx, m.ID, 0, Event{Status: StatusBounced}); err == nil {
		t.Error("second bounce applied to a bounced recipient")
	}
	ids, _ := s.ByRef("invoice-42")
	if len(ids) != 1 || ids[0] != m.ID {
		t.Errorf("ByRef = %v", ids)
	}
	ids, _ = s.ByRecipient("B@A.TEST")
	if len(ids) != 1 {
		t.Errorf("ByRecipient = %v", ids)
	}
	evs, _ := s.Events(0, 100)
	if len(evs) != 4 || evs[3].Status != StatusBounced || evs[3].Seq <= evs[2].Seq {
		t.Errorf("events %+v", evs)
	}
	if err := s.Delete(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(m.ID); err == nil {
		t.Error("deleted message still there")
	}
	if c := s.Counts(); c[StatusQueued] != 0 || c[StatusBounced] != 0 {
		t.Errorf("counts after delete %v", c)
	}
}

func TestPurgeAfterRetention(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), clock)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("a@a.test")
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	pending := newMessage("b@a.test")
	if err := s.Enqueue(ctx, pending, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.record(ctx, m.ID, 0, Result{Status: StatusSent}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Purge(ctx, now.Add(-time.Hour), 100); n != 0 {
		t.Fatalf("purged %d within retention", n)
	}
	n, err := s.Purge(ctx, now.Add(time.Second), 100)
	if err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if _, err := s.Get(m.ID); err == nil {
		t.Error("finished message not purged")
	}
	if _, err := s.Get(pending.ID); err != nil {
		t.Error("pending message purged")
	}
}

func TestNewIDSortsAndValidates(t *testing.T) {
	a := NewID(time.Unix(1000, 0))
	b := NewID(time.Unix(1001, 0))
	if !ValidID(a) || !ValidID(b) || a >= b {
		t.Fatalf("ids %q %q", a, b)
	}
	for _, bad := range []string{"", "ABCDEFGHIJKLMNOP", "0123456789abcdew", "0123456789abcdef0"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}
