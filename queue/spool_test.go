package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestBatchReplayIsPure: a batch in which one write fails is run again,
// each write alone. The others must write exactly what they would have
// written once: no duplicate events, the finished index set, counters right.
func TestBatchReplayIsPure(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	m := newMessage("a@a.test", "b@a.test")
	if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.record(ctx, m.ID, 1, Result{Status: StatusSent, Code: 250}, nil, 0); err != nil {
		t.Fatal(err)
	}
	// Hold the committer inside a transaction so the next writes queue up
	// and go into one batch: a good bounce, and two that fail on their own
	// (a second bounce of the same recipient, a bounce for an unknown id).
	hold, release := make(chan struct{}), make(chan struct{})
	go s.update(ctx, func(tx *bolt.Tx, st *txState) error { close(hold); <-release; return nil })
	<-hold
	var wg sync.WaitGroup
	errs := make([]error, 3)
	writes := []func() error{
		func() error {
			_, err := s.Apply(ctx, m.ID, 0, Event{Status: StatusBounced, Reason: "user-unknown", Source: "dsn"})
			return err
		},
		func() error {
			_, err := s.Apply(ctx, m.ID, 1, Event{Status: StatusSent, Source: "dsn"}) // not a status Apply sets
			return err
		},
		func() error {
			_, err := s.Apply(ctx, NewID(time.Now()), 0, Event{Status: StatusBounced, Reason: "user-unknown", Source: "dsn"})
			return err
		},
	}
	// All three wait for the held committer, in this order, so they share
	// the next batch and the good write runs before the failing ones.
	for i, w := range writes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = w() }()
		for deadline := time.Now().Add(5 * time.Second); len(s.commits) < i+1; {
			if time.Now().After(deadline) {
				t.Fatal("writes did not queue up")
			}
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	wg.Wait()
	if errs[0] != nil || errs[1] == nil || errs[2] == nil {
		t.Fatalf("good write: %v; failing writes: %v, %v", errs[0], errs[1], errs[2])
	}
	got, err := s.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	evs := got.Recipients[0].Events
	if len(evs) != 2 || evs[1].Status != StatusBounced {
		t.Fatalf("recipient 0 events %+v, want queued then one bounced", evs)
	}
	seen := map[uint64]bool{}
	all, _ := s.Events(0, 100)
	for _, ev := range all {
		if seen[ev.Seq] {
			t.Errorf("event seq %d stored twice", ev.Seq)
		}
		seen[ev.Seq] = true
	}
	if got.Finished.IsZero() {
		t.Error("message with every recipient final is not finished")
	}
	if n, _ := s.Purge(ctx, time.Now().Add(time.Hour), 10); n != 1 {
		t.Errorf("purge removed %d messages, want 1 (a finished message must be purgeable)", n)
	}
	if c := s.Counts(); c[StatusBounced] != 0 || c[StatusSent] != 0 || c[StatusQueued] != 0 {
		t.Errorf("counts after purge %v", c)
	}
}

// TestWritesAfterCloseFail: a write after Close, or racing with it, returns
// an error at once instead of hanging (v0: 6 of 20 hung).
func TestWritesAfterCloseFail(t *testing.T) {
	for i := 0; i < 20; i++ {
		s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
		var wg sync.WaitGroup
		for j := 0; j < 20; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = s.Enqueue(context.Background(), newMessage("a@a.test"), []byte("x\r\n"))
			}()
		}
		s.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("a write racing with Close hangs")
		}
		if err := s.Enqueue(context.Background(), newMessage("a@a.test"), []byte("x\r\n")); !errors.Is(err, ErrStorage) {
			t.Fatalf("write after Close: %v, want ErrStorage", err)
		}
	}
}

// TestAbortDoesNotCountAnAttempt: a delivery cut short by a stop is not an
// attempt; the recipient is due again at once after a restart.
func TestAbortDoesNotCountAnAttempt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s := openStore(t, path, nil)
	m := newMessage("a@a.test")
	if err := s.Enqueue(context.Background(), m, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	d := delivererFunc(func(ctx context.Context, d Delivery) Result {
		close(started)
		<-ctx.Done()
		return Result{Status: StatusDeferred, Text: "interrupted"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	<-started
	cancel()
	r.Abort()
	<-done
	s.Close()
	s = openStore(t, path, nil)
	defer s.Close()
	got, _ := s.Get(m.ID)
	rc := got.Recipients[0]
	if rc.Attempts != 0 || rc.Status != StatusQueued || rc.NextAttempt.After(time.Now()) || len(rc.Events) != 1 {
		t.Errorf("after a stop mid-delivery: %d attempts, %s, next %v, %d events; want 0, queued, due now, 1", rc.Attempts, rc.Status, rc.NextAttempt, len(rc.Events))
	}
}

type delivererFunc func(ctx context.Context, d Delivery) Result

func (f delivererFunc) Deliver(ctx context.Context, d Delivery) Result { return f(ctx, d) }

// TestDamagedBodyNeverSent: a body file cut short or with a flipped bit,
// and a body in the store with a flipped bit, are never handed to the
// deliverer; the recipient is deferred with a local error and the damage
// is counted.
func TestDamagedBodyNeverSent(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "q.db"), Options{LargeBody: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef", 200) + "\r\n"
	truncated, flipped, inStore := newMessage("t@a.test"), newMessage("f@a.test"), newMessage("s@a.test")
	for _, m := range []*Message{truncated, flipped} {
		if err := s.Enqueue(ctx, m, []byte(big)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Enqueue(ctx, inStore, []byte("Subject: small\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "bodies", truncated.ID), int64(len(big)/2)); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "bodies", flipped.ID), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{'1' ^ 0x04}, 100) // one bit
	f.Close()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBodies)
		v := []byte(string(b.Get([]byte(inStore.ID))))
		v[len(v)-3] ^= 0x01
		return b.Put([]byte(inStore.ID), v)
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sent []string
	d := delivererFunc(func(ctx context.Context, d Delivery) Result {
		mu.Lock()
		sent = append(sent, d.Recipient.Address)
		mu.Unlock()
		return Result{Status: StatusSent, Code: 250}
	})
	rctx, cancel := context.WithCancel(ctx)
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(rctx); close(done) }()
	for _, m := range []*Message{truncated, flipped, inStore} {
		rc := waitStatus(t, s, m.ID, 0, StatusDeferred)
		if !strings.Contains(rc.Last.Text, "damaged") || rc.Last.Source != "queue" {
			t.Errorf("%s: %+v", rc.Address, rc.Last)
		}
	}
	cancel()
	<-done
	if len(sent) != 0 {
		t.Errorf("damaged bodies delivered to %v", sent)
	}
	if n := s.BodyErrors(); n != 3 {
		t.Errorf("BodyErrors = %d, want 3", n)
	}
}

// TestOpenRefuses: each state of the data directory that hermod must not
// guess about is refused with a message that says what is wrong, and
// nothing is deleted.
func TestOpenRefuses(t *testing.T) {
	ctx := context.Background()
	// A populated data dir: a store and two large bodies.
	populate := func(t *testing.T) (dir string, ids []string) {
		dir = t.TempDir()
		s, err := Open(filepath.Join(dir, "hermod.db"), Options{LargeBody: 100})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			m := newMessage(fmt.Sprintf("r%d@a.test", i))
			if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\n"+strings.Repeat("y", 300)+"\r\n")); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, m.ID)
		}
		// Enough small messages that the file has more than its first pages.
		for i := 0; i < 200; i++ {
			if err := s.Enqueue(ctx, newMessage("s@a.test"), []byte("Subject: s\r\n\r\n"+strings.Repeat("z", 200)+"\r\n")); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		return dir, ids
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, db string)
		want   string
	}{
		{"missing store beside bodies", func(t *testing.T, db string) { os.Remove(db) }, "2 body files but the store"},
		{"zero-length store", func(t *testing.T, db string) { os.Truncate(db, 0) }, "is empty (0 bytes)"},
		{"truncated store", func(t *testing.T, db string) {
			fi, _ := os.Stat(db)
			os.Truncate(db, fi.Size()/2)
		}, "is truncated"},
		{"corrupt store", func(t *testing.T, db string) {
			f, _ := os.OpenFile(db, os.O_RDWR, 0)
			junk := make([]byte, 8192)
			for i := range junk {
				junk[i] = 0xA5
			}
			f.WriteAt(junk, 0) // both meta pages
			f.Close()
		}, "is damaged"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, ids := populate(t)
			db := filepath.Join(dir, "hermod.db")
			c.damage(t, db)
			s, err := Open(db, Options{LargeBody: 100})
			if err == nil {
				s.Close()
				t.Fatalf("opened; want a refusal containing %q", c.want)
			}
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want ErrRefused with %q", err, c.want)
			}
			for _, id := range ids {
				if _, err := os.Stat(filepath.Join(dir, "bodies", id)); err != nil {
					t.Errorf("body file %s gone after the refusal: %v", id, err)
				}
			}
		})
	}
	t.Run("second process", func(t *testing.T) {
		dir, _ := populate(t)
		s, err := Open(filepath.Join(dir, "hermod.db"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = Open(filepath.Join(dir, "hermod.db"), Options{})
		want := fmt.Sprintf("in use by hermod pid %d", os.Getpid())
		if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("second open: %v, want a refusal saying %q", err, want)
		}
	})
}

// TestMigrateV0: a store written by hermod v0 (testdata/v0store, made with
// v0's code: messages in every status, a body in a file, a suppression and
// a webhook outbox) opens, keeps every message, recipient, status and
// event, keeps delivering what was pending, and opens again as schema 1.
func TestMigrateV0(t *testing.T) {
	dir := t.TempDir()
	copyTree(t, "testdata/v0store", dir)
	var log lockedBuffer
	s, err := Open(filepath.Join(dir, "hermod.db"), Options{Logger: newTextLogger(&log)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "migrated a v0 store") {
		t.Errorf("migration not logged: %s", log.String())
	}
	want := map[string]Status{"sent1@dest.test": StatusSent, "bounce1@dest.test": StatusBounced, "defer1@dest.test": StatusDeferred,
		"sent2@dest.test": StatusSent, "sent3@dest.test": StatusSent, "defer3@dest.test": StatusDeferred, "gone@dest.test": StatusSuppressed}
	page, _, err := s.List(ListOptions{Limit: 100})
	if err != nil || len(page) != 4 {
		t.Fatalf("list after migration: %d messages, %v; want 4", len(page), err)
	}
	got := map[string]Status{}
	for _, m := range page {
		for _, r := range m.Recipients {
			got[r.Address] = r.Status
			if len(r.Events) == 0 || r.Last == nil || r.Events[0].Status != StatusQueued && r.Events[0].Status != StatusSuppressed {
				t.Errorf("%s: events %+v", r.Address, r.Events)
			}
		}
		if _, err := s.Body(m.ID); err != nil {
			t.Errorf("body of %s (ref %s): %v", m.ID, m.Ref, err)
		}
	}
	for addr, st := range want {
		if got[addr] != st {
			t.Errorf("%s: %q after migration, want %q", addr, got[addr], st)
		}
	}
	if c := s.Counts(); c[StatusDeferred] != 2 || c[StatusSent] != 3 || c[StatusBounced] != 1 || c[StatusSuppressed] != 1 {
		t.Errorf("counts %v", c)
	}
	if deferred, _, _ := s.List(ListOptions{Status: StatusDeferred}); len(deferred) != 2 {
		t.Errorf("status index after migration: %d messages deferred, want 2", len(deferred))
	}
	if s.MigratedSeq() == 0 {
		t.Error("the last v0 event sequence number is not recorded for consumers")
	}
	// What was pending is still delivered.
	if _, err := s.Retry(context.Background(), page[len(page)-1].ID); err != nil {
		t.Fatal(err)
	}
	sink := newCountingSink()
	stop := runRunner(t, s, sink)
	for _, m := range page {
		_, _ = s.Retry(context.Background(), m.ID)
	}
	waitCount(t, s, StatusDeferred, 0)
	stop()
	if n, extra := sink.total(); n != 2 || extra != 0 {
		t.Errorf("%d deliveries (%d extra) of the 2 pending recipients", n, extra)
	}
	s.Close()
	log.Reset()
	s, err = Open(filepath.Join(dir, "hermod.db"), Options{Logger: newTextLogger(&log)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if strings.Contains(log.String(), "migrated") {
		t.Error("migrated twice")
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if fi.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer is a strings.Builder safe for the logger's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// TestSlowDestinationDoesNotStarveOthers: a destination at its cap is
// passed over, not waited on: with every slot of slow.test taken by
// deliveries that hang, mail to fast.test queued behind 200 slow ones still
// goes out at once, and slow.test never gets more than its cap.
func TestSlowDestinationDoesNotStarveOthers(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		if err := s.Enqueue(ctx, newMessage(fmt.Sprintf("r%d@slow.test", i)), []byte("x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	var fast []string
	for i := 0; i < 5; i++ {
		m := newMessage(fmt.Sprintf("r%d@fast.test", i))
		if err := s.Enqueue(ctx, m, []byte("x\r\n")); err != nil {
			t.Fatal(err)
		}
		fast = append(fast, m.ID)
	}
	release := make(chan struct{})
	var mu sync.Mutex
	slowNow, slowMax := 0, 0
	d := delivererFunc(func(ctx context.Context, d Delivery) Result {
		if Destination(d.Recipient.Address) == "slow.test" {
			mu.Lock()
			slowNow++
			slowMax = max(slowMax, slowNow)
			mu.Unlock()
			select {
			case <-release:
			case <-ctx.Done():
			}
			mu.Lock()
			slowNow--
			mu.Unlock()
		}
		return Result{Status: StatusSent, Code: 250}
	})
	rctx, cancel := context.WithCancel(ctx)
	r := NewRunner(s, d, RunnerOptions{Concurrency: 10, PerDestination: 3, Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(rctx); close(done) }()
	for _, id := range fast {
		waitStatus(t, s, id, 0, StatusSent)
	}
	close(release)
	waitCount(t, s, StatusSent, 205)
	cancel()
	<-done
	if slowMax > 3 {
		t.Errorf("slow.test had %d deliveries at once, cap 3", slowMax)
	}
}

// TestDueWhileWindingUp: a recipient whose next attempt falls due before
// its previous attempt has been wound up (the result is written, the
// attempt's bookkeeping still runs) is attempted again at once, not after
// the scheduler's next full read of the time index.
func TestDueWhileWindingUp(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "q.db"), nil)
	defer s.Close()
	d := newScripted()
	d.script["later@a.test"] = []Result{{Status: StatusDeferred, Code: 451, Text: "later"}, {Status: StatusSent, Code: 250}}
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{10 * time.Millisecond},
		// The attempt winds up slowly: its next due time passes meanwhile.
		OnAttempt: func(Delivery, Result, time.Duration) { time.Sleep(60 * time.Millisecond) }})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	m := newMessage("later@a.test")
	start := time.Now()
	if err := s.Enqueue(ctx, m, []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, m.ID, 0, StatusSent)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("second attempt after %s; it was due after 10 ms", took)
	}
}
