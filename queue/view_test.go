package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// steppingClock runs with real time from a fixed start and jumps when the
// test says, so that attempts happen at known ages of the message while
// retries (200ms: longer than recording a result takes) come due as usual.
type steppingClock struct {
	mu     sync.Mutex
	base   time.Time
	real   time.Time
	offset time.Duration
}

func newSteppingClock() *steppingClock {
	return &steppingClock{base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), real: time.Now()}
}

func (c *steppingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(c.offset + time.Since(c.real))
}

func (c *steppingClock) add(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// TestDelayWarningOnce: with a delay warning of 1h and attempts at 40, 80,
// 120 and 160 minutes (the last one delivers), the recipient gets exactly
// one delayed event, right after the 80-minute deferral, with status
// deferred; every attempt event carries the MX address, TLS details and
// the attempt's duration.
func TestDelayWarningOnce(t *testing.T) {
	clock := newSteppingClock()
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), clock.Now)
	defer s.Close()
	deferRes := Result{Status: StatusDeferred, Code: 451, EnhancedCode: "4.7.1", Text: "greylisted", Reason: "rate-limited",
		Host: "mx1.b.test[192.0.2.7:25]", Addr: "192.0.2.7:25", TLS: "TLS 1.3", TLSCipher: "TLS_AES_128_GCM_SHA256"}
	var calls int
	d := delivererFunc(func(ctx context.Context, dl Delivery) Result {
		clock.add(40 * time.Minute)
		calls++
		if calls == 4 {
			return Result{Status: StatusSent, Code: 250, Text: "ok", Addr: "192.0.2.7:25", TLS: "plain", Duration: 1500 * time.Millisecond}
		}
		return deferRes
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{200 * time.Millisecond}, MaxAge: 24 * time.Hour, DelayWarning: time.Hour, Concurrency: 1})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	m := newMessage("slow@b.test")
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	rc := waitStatus(t, s, m.ID, 0, StatusSent)
	var delayed []Event
	var attempts []Event
	for _, ev := range rc.Events {
		switch {
		case ev.Type == EventDelayed:
			delayed = append(delayed, ev)
		case ev.Source == "relay":
			attempts = append(attempts, ev)
		}
	}
	if len(delayed) != 1 {
		t.Fatalf("delayed events %+v, want exactly one; all events %+v", delayed, rc.Events)
	}
	dl := delayed[0]
	if dl.Status != StatusDeferred || dl.Attempt != 2 || dl.Delay < Duration(80*time.Minute) || dl.Delay >= Duration(81*time.Minute) || !strings.Contains(dl.Note, "1h0m0s") {
		t.Errorf("delayed event %+v, want status deferred after attempt 2 at 80m, note naming 1h", dl)
	}
	if len(attempts) != 4 {
		t.Fatalf("attempt events %+v, want 4", attempts)
	}
	a := attempts[0]
	if a.Addr != "192.0.2.7:25" || a.TLS != "TLS 1.3" || a.TLSCipher != "TLS_AES_128_GCM_SHA256" || a.Code != 451 ||
		a.EnhancedCode != "4.7.1" || a.Text != "greylisted" {
		t.Errorf("first attempt %+v: details lost", a)
	}
	if a.Duration < Duration(40*time.Minute) || a.Duration >= Duration(41*time.Minute) {
		t.Errorf("first attempt duration %v, want measured on the store's clock (40m)", time.Duration(a.Duration))
	}
	if last := attempts[3]; last.TLS != "plain" || last.Duration != Duration(1500*time.Millisecond) || last.Status != StatusSent {
		t.Errorf("last attempt %+v, want plain, 1.5s as reported, sent", last)
	}
}

// TestDelayWarningDisabled: 0 disables the warning.
func TestDelayWarningDisabled(t *testing.T) {
	clock := newSteppingClock()
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), clock.Now)
	defer s.Close()
	var calls int
	d := delivererFunc(func(ctx context.Context, dl Delivery) Result {
		clock.add(3 * time.Hour)
		if calls++; calls == 3 {
			return Result{Status: StatusSent, Code: 250}
		}
		return Result{Status: StatusDeferred, Code: 421, Text: "busy"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{200 * time.Millisecond}, MaxAge: 24 * time.Hour, Concurrency: 1})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	m := newMessage("slow@b.test")
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, ev := range waitStatus(t, s, m.ID, 0, StatusSent).Events {
		if ev.Type != "" {
			t.Errorf("event %+v with delay_warning 0", ev)
		}
	}
}

// TestSummary builds a queue by hand — three waiting recipients at
// gmail.test (two deferred with the same 421 reply, one queued), one
// deferred at b.test with another error, one sent at b.test (not counted)
// — and checks each grouping, counted from the input, not from the code.
func TestSummary(t *testing.T) {
	clock := newSteppingClock()
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), clock.Now)
	defer s.Close()
	ctx := context.Background()
	m1 := newMessage("a@gmail.test", "b@gmail.test", "c@b.test", "d@b.test")
	m1.Account = "acme"
	if err := s.Enqueue(ctx, m1, []byte("Subject: x\r\n\r\n1\r\n")); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Hour)
	m2 := newMessage("e@GMail.test")
	if err := s.Enqueue(ctx, m2, []byte("Subject: x\r\n\r\n2\r\n")); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Hour)
	busy := Result{Status: StatusDeferred, Code: 421, EnhancedCode: "4.7.0", Text: "try  again\nlater", Host: "mx.gmail.test[192.0.2.1:25]"}
	sched := func(received time.Time, attempts int, now time.Time) (time.Time, bool) {
		return now.Add(time.Hour), true
	}
	for _, c := range []struct {
		idx int
		res Result
	}{
		{0, busy}, {1, busy},
		{2, Result{Status: StatusDeferred, Code: 451, Text: "greylisted", Host: "MX.b.test[192.0.2.2:25]"}},
		{3, Result{Status: StatusSent, Code: 250, Host: "mx.b.test[192.0.2.2:25]"}},
	} {
		if err := s.record(ctx, m1.ID, c.idx, c.res, sched, 0); err != nil {
			t.Fatal(err)
		}
	}
	want := []SummaryRow{
		{Key: "gmail.test", Queued: 1, Deferred: 2, Total: 3, TopError: "421 4.7.0 try again later", TopErrorCount: 2},
		{Key: "b.test", Deferred: 1, Total: 1, TopError: "451 greylisted", TopErrorCount: 1},
	}
	// Read in one transaction, and one or two recipients per transaction:
	// resuming a chunk neither skips nor repeats a recipient.
	for _, chunk := range []int{summaryChunk, 1, 2} {
		byDomain, err := s.summary("", chunk)
		if err != nil {
			t.Fatal(err)
		}
		checkRows(t, fmt.Sprintf("domain (chunk %d)", chunk), byDomain, want, []time.Duration{2 * time.Hour, 2 * time.Hour})
	}

	byAccount, err := s.Summary(SummaryByAccount)
	if err != nil {
		t.Fatal(err)
	}
	want = []SummaryRow{
		{Key: "acme", Deferred: 3, Total: 3, TopError: "421 4.7.0 try again later", TopErrorCount: 2},
		{Key: "-", Queued: 1, Total: 1},
	}
	checkRows(t, "account", byAccount, want, []time.Duration{2 * time.Hour, time.Hour})

	byMX, err := s.Summary(SummaryByMX)
	if err != nil {
		t.Fatal(err)
	}
	want = []SummaryRow{
		{Key: "mx.gmail.test", Deferred: 2, Total: 2, TopError: "421 4.7.0 try again later", TopErrorCount: 2},
		{Key: "-", Queued: 1, Total: 1},
		{Key: "mx.b.test", Deferred: 1, Total: 1, TopError: "451 greylisted", TopErrorCount: 1},
	}
	checkRows(t, "mx", byMX, want, []time.Duration{2 * time.Hour, time.Hour, 2 * time.Hour})

	if _, err := s.Summary("rcpt"); err == nil {
		t.Error("Summary(rcpt) did not fail")
	}
}

func checkRows(t *testing.T, by string, got, want []SummaryRow, ages []time.Duration) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("by %s: %+v, want %+v", by, got, want)
	}
	for i := range want {
		g := got[i]
		age := time.Duration(g.OldestAge)
		g.Oldest, g.OldestAge = time.Time{}, 0
		if g != want[i] {
			t.Errorf("by %s row %d: %+v, want %+v", by, i, g, want[i])
		}
		if age < ages[i] || age > ages[i]+time.Minute {
			t.Errorf("by %s row %d: oldest age %s, want %s", by, i, age, ages[i])
		}
	}
}

// TestDelayWarningSurvivesRestart: the one delayed event is remembered in
// the recipient's record, so a deferral after a restart adds no second one.
func TestDelayWarningSurvivesRestart(t *testing.T) {
	clock := newSteppingClock()
	path := filepath.Join(t.TempDir(), "q.db")
	s := openStore(t, path, clock.Now)
	ctx := context.Background()
	m := newMessage("slow@b.test")
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nb\r\n")); err != nil {
		t.Fatal(err)
	}
	sched := func(received time.Time, attempts int, now time.Time) (time.Time, bool) {
		return now.Add(time.Hour), true
	}
	busy := Result{Status: StatusDeferred, Code: 421, Text: "busy"}
	delayed := func(s *Store) int {
		got, err := s.Get(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range got.Recipients[0].Events {
			if ev.Type == EventDelayed {
				n++
			}
		}
		return n
	}
	clock.add(2 * time.Hour)
	if err := s.record(ctx, m.ID, 0, busy, sched, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := delayed(s); n != 1 {
		t.Fatalf("%d delayed events after a deferral at 2h, want 1", n)
	}
	s.Close()
	s = openStore(t, path, clock.Now)
	defer s.Close()
	clock.add(time.Hour)
	if err := s.record(ctx, m.ID, 0, busy, sched, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := delayed(s); n != 1 {
		t.Errorf("%d delayed events after a restart and another deferral, want 1", n)
	}
}
