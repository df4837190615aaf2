package queue

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bulkFixture enqueues, without a runner, the messages the filter tests
// select from. Received times are fixed relative to now.
//
//	m0  account acme, ref r-1, 3h old: a@bücher.example, b@XN--BCHER-KVA.example, c@other.test
//	m1  account acme, ref r-2, 1h old: d@other.test
//	m2  account beta, ref r-1, 5h old: E@Other.Test, f@bücher.example
func bulkFixture(t *testing.T, s *Store, now time.Time) []*Message {
	t.Helper()
	mk := func(account, ref string, age time.Duration, rcpts ...string) *Message {
		m := newMessage(rcpts...)
		m.Account, m.Ref, m.Received = account, ref, now.Add(-age)
		if err := s.Enqueue(context.Background(), m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return []*Message{
		mk("acme", "r-1", 3*time.Hour, "a@bücher.example", "b@XN--BCHER-KVA.example", "c@other.test"),
		mk("acme", "r-2", time.Hour, "d@other.test"),
		mk("beta", "r-1", 5*time.Hour, "E@Other.Test", "f@bücher.example"),
	}
}

func sampleAddrs(res *BulkResult) string {
	var a []string
	for _, it := range res.Sample {
		a = append(a, it.Address)
	}
	sort.Strings(a)
	return strings.Join(a, " ")
}

// TestBulkFilterDryRun: each filter field selects what its description
// says, fields combine with AND, the domain compares U-labels and A-labels
// in any case, and a dry run changes nothing.
func TestBulkFilterDryRun(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), func() time.Time { return now })
	defer s.Close()
	ms := bulkFixture(t, s, now)
	ctx := context.Background()
	cases := []struct {
		name      string
		f         Filter
		rcpts     int
		msgs      int
		addresses string
	}{
		{"domain unicode upper case", Filter{Domain: "BÜCHER.example"}, 3, 2, "a@bücher.example b@XN--BCHER-KVA.example f@bücher.example"},
		{"domain a-label", Filter{Domain: "xn--bcher-kva.example."}, 3, 2, "a@bücher.example b@XN--BCHER-KVA.example f@bücher.example"},
		{"domain other", Filter{Domain: "other.test"}, 3, 3, "E@Other.Test c@other.test d@other.test"},
		{"account", Filter{Account: "acme"}, 4, 2, "a@bücher.example b@XN--BCHER-KVA.example c@other.test d@other.test"},
		{"account and domain", Filter{Account: "acme", Domain: "other.test"}, 2, 2, "c@other.test d@other.test"},
		{"ref", Filter{Ref: "r-1"}, 5, 2, "E@Other.Test a@bücher.example b@XN--BCHER-KVA.example c@other.test f@bücher.example"},
		{"ref and account", Filter{Ref: "r-1", Account: "beta"}, 2, 1, "E@Other.Test f@bücher.example"},
		{"older than 2h", Filter{OlderThan: 2 * time.Hour}, 5, 2, "E@Other.Test a@bücher.example b@XN--BCHER-KVA.example c@other.test f@bücher.example"},
		{"older than 4h and domain", Filter{OlderThan: 4 * time.Hour, Domain: "bücher.example"}, 1, 1, "f@bücher.example"},
		{"rcpt any case", Filter{Rcpt: "e@other.test"}, 1, 1, "E@Other.Test"},
		{"ids", Filter{IDs: []string{ms[1].ID, ms[2].ID}}, 3, 2, "E@Other.Test d@other.test f@bücher.example"},
		{"ids and domain", Filter{IDs: []string{ms[1].ID, ms[2].ID}, Domain: "other.test"}, 2, 2, "E@Other.Test d@other.test"},
		{"status", Filter{Status: StatusQueued, Account: "beta"}, 2, 1, "E@Other.Test f@bücher.example"},
		{"nothing matches", Filter{Account: "acme", Ref: "r-1", Domain: "nowhere.test"}, 0, 0, ""},
	}
	for _, c := range cases {
		res, err := s.Bulk(ctx, ActionHold, c.f, true, 100)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Recipients != c.rcpts || res.Messages != c.msgs || sampleAddrs(res) != c.addresses || !res.DryRun {
			t.Errorf("%s: %d recipients in %d messages [%s], want %d in %d [%s]", c.name,
				res.Recipients, res.Messages, sampleAddrs(res), c.rcpts, c.msgs, c.addresses)
		}
	}
	// The sample is bounded; the count is not.
	if res, err := s.Bulk(ctx, ActionHold, Filter{Account: "acme"}, true, 2); err != nil || res.Recipients != 4 || len(res.Sample) != 2 {
		t.Errorf("sample of 2: %+v %v", res, err)
	}
	if c := s.Counts(); c[StatusQueued] != 6 || c[StatusHeld] != 0 {
		t.Errorf("dry runs changed the queue: counts %v", c)
	}
	if _, err := s.Bulk(ctx, ActionHold, Filter{}, false, 0); !errors.Is(err, ErrEmptyFilter) {
		t.Errorf("empty filter: %v, want ErrEmptyFilter", err)
	}
	for _, f := range []Filter{{IDs: []string{"nope"}}, {Status: "lost"}, {Status: StatusSent}, {OlderThan: -time.Hour}} {
		if _, err := s.Bulk(ctx, ActionHold, f, false, 0); !errors.Is(err, ErrBadFilter) {
			t.Errorf("filter %+v: %v, want ErrBadFilter", f, err)
		}
	}
	if c := s.Counts(); c[StatusQueued] != 6 {
		t.Errorf("refused filters changed the queue: counts %v", c)
	}
}

// dueEntries counts the due-index entries (both indexes) of message id.
func dueEntries(t *testing.T, s *Store, id string) (n int) {
	t.Helper()
	s.db.View(func(tx *bolt.Tx) error {
		tx.Bucket(bucketDue).ForEach(func(k, _ []byte) error {
			if len(k) == 26 && string(k[8:24]) == id {
				n++
			}
			return nil
		})
		tx.Bucket(bucketDueDest).ForEach(func(k, _ []byte) error {
			if bytes.Contains(k, []byte(id)) {
				n++
			}
			return nil
		})
		return nil
	})
	return n
}

// TestHoldNeverAttemptedThenRelease: a held recipient is never attempted
// while the others of its message are delivered, its message is not
// finished (and not purged), it shows held in the counts; release makes it
// due and it is delivered. Hold and release are events from "admin".
func TestHoldNeverAttemptedThenRelease(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	s.KeepEventsAfter(func() uint64 { return 0 }) // Purge below keeps the log
	ctx := context.Background()
	m := newMessage("keep@held.test", "go@free.test")
	m.Account = "acme"
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	res, err := s.Bulk(ctx, ActionHold, Filter{Domain: "held.test"}, false, 0)
	if err != nil || res.Recipients != 1 || res.Messages != 1 || res.Sample[0].Address != "keep@held.test" || res.Sample[0].Status != StatusQueued {
		t.Fatalf("hold: %+v %v", res, err)
	}
	if n := dueEntries(t, s, m.ID); n != 2 { // go@free.test in both indexes, keep@held.test in none
		t.Errorf("due entries after hold: %d, want 2", n)
	}
	d := newScripted()
	stop := runRunner(t, s, d)
	defer stop()
	waitStatus(t, s, m.ID, 1, StatusSent)
	// A second message, enqueued after the held one and delivered, proves the
	// runner has passed the held recipient's place in the time index.
	m2 := newMessage("later@free.test")
	if err := s.Enqueue(ctx, m2, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, m2.ID, 0, StatusSent)
	got, _ := s.Get(m.ID)
	if r := got.Recipients[0]; r.Status != StatusHeld || r.Attempts != 0 || d.attemptsOf("keep@held.test") != 0 {
		t.Fatalf("held recipient: %+v, deliverer saw it %d times", r, d.attemptsOf("keep@held.test"))
	}
	if !got.Finished.IsZero() || got.Done() {
		t.Error("a message with a held recipient is finished")
	}
	if n, _ := s.Purge(ctx, time.Now().Add(24*time.Hour), 10); n != 1 { // m2 only
		t.Errorf("purge removed %d messages, want 1 (not the held one)", n)
	}
	if c := s.Counts(); c[StatusHeld] != 1 {
		t.Errorf("counts %v, want 1 held", c)
	}
	ev := got.Recipients[0].Last
	if ev == nil || ev.Status != StatusHeld || ev.Source != "admin" || !strings.Contains(ev.Note, "hold") {
		t.Errorf("hold event %+v", ev)
	}
	// Release by the same filter.
	res, err = s.Bulk(ctx, ActionRelease, Filter{Domain: "held.test"}, false, 0)
	if err != nil || res.Recipients != 1 {
		t.Fatalf("release: %+v %v", res, err)
	}
	r := waitStatus(t, s, m.ID, 0, StatusSent)
	if r.Attempts != 1 {
		t.Errorf("after release: %d attempts, want 1", r.Attempts)
	}
	var seen []string
	for _, ev := range r.Events {
		seen = append(seen, string(ev.Status)+"/"+ev.Source)
	}
	if strings.Join(seen, " ") != "queued/smtp held/admin queued/admin sent/relay" {
		t.Errorf("events %v", seen)
	}
	if c := s.Counts(); c[StatusHeld] != 0 || c[StatusSent] != 2 {
		t.Errorf("counts after release %v", c)
	}
}

func (s *scripted) attemptsOf(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[addr]
}

// TestReleaseKeepsDeferredAndMaxAge: a deferred recipient held and released
// is deferred again (not queued), and its queue lifetime counts from
// acceptance, hold time included: released past max_age, its next
// temporary failure bounces it "expired".
func TestReleaseKeepsDeferredAndMaxAge(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("slow@a.test")
	m.Received = time.Now().Add(-2 * time.Hour)
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.record(ctx, m.ID, 0, Result{Status: StatusDeferred, Code: 451, Text: "later"},
		func(time.Time, int, time.Time) (time.Time, bool) { return time.Now().Add(time.Hour), true }, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Bulk(ctx, ActionHold, Filter{IDs: []string{m.ID}}, false, 0); err != nil {
		t.Fatal(err)
	}
	d := newScripted()
	d.script["slow@a.test"] = []Result{{Status: StatusDeferred, Code: 451, Text: "still later"}}
	ctxRun, cancel := context.WithCancel(ctx)
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}, MaxAge: time.Hour})
	done := make(chan struct{})
	go func() { r.Run(ctxRun); close(done) }()
	defer func() { cancel(); <-done }()
	res, err := s.Bulk(ctx, ActionRelease, Filter{Account: "", Rcpt: "SLOW@a.test"}, false, 0)
	if err != nil || res.Recipients != 1 {
		t.Fatalf("release: %+v %v", res, err)
	}
	got, _ := s.Get(m.ID)
	if ev := got.Recipients[0].Events[3]; ev.Status != StatusDeferred || ev.Source != "admin" {
		t.Errorf("release event %+v, want back to deferred", ev)
	}
	rc := waitStatus(t, s, m.ID, 0, StatusBounced)
	if rc.Reason != "expired" || rc.Attempts != 2 {
		t.Errorf("released past max_age: reason %q after %d attempts, want expired after 2", rc.Reason, rc.Attempts)
	}
}

// TestHoldWhileInFlight: a recipient held while its attempt is in flight
// keeps the attempt's outcome: a deferral leaves it held (attempt counted,
// reply kept), a 250 makes it sent — never a lost result that release
// would send again.
func TestHoldWhileInFlight(t *testing.T) {
	for _, outcome := range []Status{StatusDeferred, StatusSent} {
		t.Run(string(outcome), func(t *testing.T) {
			s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
			defer s.Close()
			ctx := context.Background()
			started, finish := make(chan struct{}, 1), make(chan struct{})
			d := delivererFunc(func(ctx context.Context, d Delivery) Result {
				select {
				case started <- struct{}{}:
				default: // a later attempt, after release
				}
				<-finish
				return Result{Status: outcome, Code: map[Status]int{StatusDeferred: 451, StatusSent: 250}[outcome], Text: "reply"}
			})
			stop := runRunner(t, s, d)
			defer stop()
			m := newMessage("x@a.test")
			if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
				t.Fatal(err)
			}
			<-started
			if res, err := s.Bulk(ctx, ActionHold, Filter{IDs: []string{m.ID}}, false, 0); err != nil || res.Recipients != 1 {
				t.Fatalf("hold: %+v %v", res, err)
			}
			close(finish)
			want := StatusHeld
			if outcome == StatusSent {
				want = StatusSent
			}
			// Poll for the attempt to be recorded (the status alone is already held).
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, _ := s.Get(m.ID)
				r := got.Recipients[0]
				if r.Attempts == 1 {
					if r.Status != want || r.Last.Code == 0 || r.Last.Text != "reply" {
						t.Fatalf("after the in-flight attempt: %+v last %+v, want %s", r, r.Last, want)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the in-flight attempt's result was not recorded: %+v", r)
				}
				<-time.After(10 * time.Millisecond)
			}
			if outcome == StatusDeferred {
				res, err := s.Bulk(ctx, ActionRelease, Filter{IDs: []string{m.ID}}, false, 0)
				if err != nil || res.Recipients != 1 {
					t.Fatalf("release: %+v %v", res, err)
				}
				if got, _ := s.Get(m.ID); got.Recipients[0].Status != StatusDeferred {
					t.Errorf("released: %s, want deferred", got.Recipients[0].Status)
				}
			}
		})
	}
}

// TestBulkRetryAndDelete: retry makes deferred recipients of one domain due
// now (and only those); delete removes whole messages with an open matching
// recipient and leaves the audit events in the log; the store checks clean.
func TestBulkRetryAndDelete(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	s := openStore(t, path, nil)
	ctx := context.Background()
	d := newScripted()
	d.script["a@slow.test"] = []Result{{Status: StatusDeferred, Code: 451, Text: "later"}}
	d.script["b@other.test"] = []Result{{Status: StatusDeferred, Code: 451, Text: "later"}}
	stop := runRunner(t, s, d) // retries after an hour
	m1 := newMessage("a@slow.test")
	m2 := newMessage("b@other.test", "c@ok.test")
	m2.Account = "gone"
	for _, m := range []*Message{m1, m2} {
		if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	waitStatus(t, s, m1.ID, 0, StatusDeferred)
	waitStatus(t, s, m2.ID, 0, StatusDeferred)
	waitStatus(t, s, m2.ID, 1, StatusSent)
	res, err := s.Bulk(ctx, ActionRetry, Filter{Domain: "slow.test"}, false, 0)
	if err != nil || res.Recipients != 1 || res.Sample[0].Address != "a@slow.test" {
		t.Fatalf("retry: %+v %v", res, err)
	}
	for deadline := time.Now().Add(10 * time.Second); d.attemptsOf("a@slow.test") < 2; {
		if time.Now().After(deadline) {
			t.Fatal("retried recipient not attempted again")
		}
		<-time.After(10 * time.Millisecond)
	}
	if n := d.attemptsOf("b@other.test"); n != 1 {
		t.Errorf("b@other.test attempted %d times; retry of slow.test touched it", n)
	}
	// Delete by account: m2 goes (its deferred recipient matches), m1 stays.
	res, err = s.Bulk(ctx, ActionDelete, Filter{Account: "gone"}, false, 0)
	if err != nil || res.Messages != 1 || res.Recipients != 1 {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if _, err := s.Get(m2.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted message still there: %v", err)
	}
	if _, err := s.Get(m1.ID); err != nil {
		t.Errorf("other message: %v", err)
	}
	evs, _ := s.Events(0, 1000)
	audit := 0
	for _, ev := range evs {
		if ev.MessageID == m2.ID && ev.Source == "admin" && strings.Contains(ev.Note, "deleted") {
			audit++
		}
	}
	if audit != 1 {
		t.Errorf("%d delete audit events for m2, want 1", audit)
	}
	// Nothing left to delete for that account: a second run changes nothing.
	if res, err := s.Bulk(ctx, ActionDelete, Filter{Account: "gone"}, false, 0); err != nil || res.Messages != 0 {
		t.Errorf("second delete: %+v %v", res, err)
	}
	if _, err := s.Bulk(ctx, ActionHold, Filter{IDs: []string{m1.ID}}, false, 0); err != nil {
		t.Fatal(err)
	}
	stop()
	s.Close()
	rep, err := Check(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 || rep.Counts[StatusHeld] != 1 || rep.Messages != 1 {
		t.Errorf("check after bulk actions: %+v", rep)
	}
}

// TestHoldLastOpenRecipient: holding the only recipient of a message that
// is not final yet does not finish the message (held is not final), so
// retention never purges it.
func TestHoldLastOpenRecipient(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("wait@a.test", "done@a.test")
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.record(ctx, m.ID, 1, Result{Status: StatusSent, Code: 250}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Bulk(ctx, ActionHold, Filter{Rcpt: "wait@a.test"}, false, 0); err != nil || res.Recipients != 1 {
		t.Fatalf("hold: %+v %v", res, err)
	}
	if got, _ := s.Get(m.ID); !got.Finished.IsZero() {
		t.Errorf("message finished at %v with a held recipient", got.Finished)
	}
	if n, _ := s.Purge(ctx, time.Now().Add(24*time.Hour), 10); n != 0 {
		t.Errorf("purge removed %d messages, want 0", n)
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"2d": 48 * time.Hour, "90m": 90 * time.Minute, "0d": 0, "1h30m": 90 * time.Minute} {
		if got, err := ParseAge(in); err != nil || got != want {
			t.Errorf("ParseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "1.5d", "-1d", "soon", "99999d"} {
		if _, err := ParseAge(in); !errors.Is(err, ErrBadFilter) {
			t.Errorf("ParseAge(%q): %v, want ErrBadFilter", in, err)
		}
	}
}

// BenchmarkBulk10k: a dry run and a hold over 10000 queued messages, half
// of them matching by domain.
func BenchmarkBulk10k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(b.TempDir(), "q.db"), Options{})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		for j := 0; j < 10000; j++ {
			dom := []string{"a.test", "b.test"}[j%2]
			if err := s.Enqueue(ctx, newMessage("r@"+dom), []byte("x\r\n")); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		t0 := time.Now()
		res, err := s.Bulk(ctx, ActionHold, Filter{Domain: "a.test"}, true, 0)
		if err != nil || res.Recipients != 5000 {
			b.Fatalf("dry run %+v %v", res, err)
		}
		t1 := time.Now()
		if res, err = s.Bulk(ctx, ActionHold, Filter{Domain: "a.test"}, false, 0); err != nil || res.Recipients != 5000 {
			b.Fatalf("hold %+v %v", res, err)
		}
		b.ReportMetric(float64(t1.Sub(t0).Milliseconds()), "dryrun-ms")
		b.ReportMetric(float64(time.Since(t1).Milliseconds()), "hold-ms")
		b.StopTimer()
		s.Close()
	}
}

// TestEnqueueHeld: a message accepted with a held recipient is not
// finished and not due; release makes it due and it is delivered.
func TestEnqueueHeld(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("h@a.test")
	m.Recipients[0].Status = StatusHeld
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(m.ID); !got.Finished.IsZero() || dueEntries(t, s, m.ID) != 0 || s.Counts()[StatusHeld] != 1 {
		t.Fatalf("accepted held: finished %v, %d due entries, counts %v", got.Finished, dueEntries(t, s, m.ID), s.Counts())
	}
	stop := runRunner(t, s, newScripted())
	defer stop()
	if res, err := s.Bulk(ctx, ActionRelease, Filter{IDs: []string{m.ID}}, false, 0); err != nil || res.Recipients != 1 {
		t.Fatalf("release: %+v %v", res, err)
	}
	waitStatus(t, s, m.ID, 0, StatusSent)
}
