package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// countingSink is a Deliverer that accepts everything and counts deliveries
// per recipient, as a remote MX would see them.
type countingSink struct {
	mu    sync.Mutex
	count map[string]int
	// during, when set, is called with each delivery before it is counted.
	during func(addr string)
	// text is the reply text (a long one makes every result need new pages).
	text string
}

func newCountingSink() *countingSink { return &countingSink{count: map[string]int{}} }

func (c *countingSink) Deliver(ctx context.Context, d Delivery) Result {
	if c.during != nil {
		c.during(d.Recipient.Address)
	}
	c.mu.Lock()
	c.count[d.Recipient.Address]++
	c.mu.Unlock()
	return Result{Status: StatusSent, Code: 250, Text: "2.0.0 ok " + c.text}
}

func (c *countingSink) total() (deliveries, extra int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.count {
		deliveries += n
		extra += n - 1
	}
	return deliveries, extra
}

// fill writes a file in dir until the file system is full, leaving keep
// bytes free (0: completely full). It returns the file's path.
func fill(t *testing.T, dir string, keep int64) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("filler-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<10)
	for {
		if keep > 0 {
			r := &reserve{path: filepath.Join(dir, "x")}
			if free, err := r.free(); err == nil && free <= keep+int64(len(buf)) {
				return path
			}
		}
		if _, err := f.Write(buf); err != nil {
			f.Sync()
			return path
		}
	}
}

func runRunner(t *testing.T, s *Store, d Deliverer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}, Concurrency: 8})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

func waitCount(t *testing.T, s *Store, st Status, want int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Counts()[st] != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s count %d, want %d (counts %v)", st, s.Counts()[st], want, s.Counts())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDiskNearlyFullRefusesNewMail: once less than the reserve is free, new
// mail is refused with ErrStorage, everything acknowledged before is
// intact and still delivered exactly once (outcomes are recorded), and mail
// is accepted again as soon as space comes back.
func TestDiskNearlyFullRefusesNewMail(t *testing.T) {
	dir := testnet.Tmpfs(t, "6m")
	s, err := Open(filepath.Join(dir, "q.db"), Options{Reserve: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	filler := fill(t, dir, 2<<20)
	ctx := context.Background()
	body := make([]byte, 64<<10)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var accepted []string
	var full error
	for i := 0; i < 200; i++ {
		m := newMessage(fmt.Sprintf("r%d@dest.test", i))
		if err := s.Enqueue(ctx, m, body); err != nil {
			full = err
			break
		}
		accepted = append(accepted, m.ID)
	}
	if full == nil || !errors.Is(full, ErrStorage) {
		t.Fatalf("enqueue on a nearly full disk: %v after %d messages, want ErrStorage", full, len(accepted))
	}
	for _, id := range accepted {
		if b, err := s.Body(id); err != nil || len(b) != len(body) {
			t.Fatalf("acknowledged message %s: %d bytes, %v", id, len(b), err)
		}
	}
	sink := newCountingSink()
	stop := runRunner(t, s, sink)
	waitCount(t, s, StatusSent, int64(len(accepted)))
	stop()
	if n, extra := sink.total(); n != len(accepted) || extra != 0 {
		t.Errorf("%d deliveries (%d extra) for %d recipients", n, extra, len(accepted))
	}
	os.Remove(filler)
	if err := s.Enqueue(ctx, newMessage("after@dest.test"), []byte("Subject: after\r\n\r\nsmall\r\n")); err != nil {
		t.Fatalf("enqueue after space came back: %v", err)
	}
	t.Logf("%d messages accepted, then: %v", len(accepted), full)
}

// TestDiskFillsUnderneath: another process fills the disk completely after
// mail was accepted. Recording outcomes and deleting still work (the
// reserve is released for them), every recipient is delivered exactly
// once, new mail is refused until space is back, and the reserve is made
// again then.
func TestDiskFillsUnderneath(t *testing.T) {
	dir := testnet.Tmpfs(t, "8m")
	s, err := Open(filepath.Join(dir, "q.db"), Options{Reserve: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const n = 300
	var ids []string
	for i := 0; i < n; i++ {
		m := newMessage(fmt.Sprintf("r%d@dest.test", i))
		if err := s.Enqueue(ctx, m, []byte(fmt.Sprintf("Subject: %d\r\n\r\n%0400d\r\n", i, i))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	filler := fill(t, dir, 0) // completely full now; only the reserve file is left
	sink := newCountingSink()
	stop := runRunner(t, s, sink)
	waitCount(t, s, StatusSent, n)
	stop()
	if got, extra := sink.total(); got != n || extra != 0 {
		t.Errorf("%d deliveries (%d extra) for %d recipients", got, extra, n)
	}
	if _, err := os.Stat(filepath.Join(dir, ReserveFile)); err == nil {
		t.Log("the reserve was not needed (the store had free pages)")
	}
	for _, id := range ids[:50] {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("delete on a full disk: %v", err)
		}
	}
	if err := s.Enqueue(ctx, newMessage("refused@dest.test"), []byte("Subject: x\r\n\r\ny\r\n")); !errors.Is(err, ErrStorage) {
		t.Errorf("enqueue on a full disk: %v, want ErrStorage", err)
	}
	os.Remove(filler)
	if err := s.Enqueue(ctx, newMessage("after@dest.test"), []byte("Subject: x\r\n\r\ny\r\n")); err != nil {
		t.Fatalf("enqueue after space came back: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, ReserveFile)); err != nil || fi.Size() != 2<<20 {
		t.Errorf("reserve after space came back: %v %v", fi, err)
	}
}

// TestStoreUnwritableMidRun: the disk fills up completely while deliveries
// are running, with no reserve to fall back on, so that the store cannot
// record anything (v0 turned this into a mail storm: 29,510 extra copies in
// 30 s). Nothing is delivered twice: the results that cannot be written are
// kept and written later, and no new delivery starts while the store cannot
// record it.
func TestStoreUnwritableMidRun(t *testing.T) {
	dir := testnet.Tmpfs(t, "16m")
	s, err := Open(filepath.Join(dir, "q.db"), Options{Reserve: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const n = 300
	for i := 0; i < n; i++ {
		if err := s.Enqueue(ctx, newMessage(fmt.Sprintf("r%d@dest.test", i)), []byte("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	sink := newCountingSink()
	sink.text = strings.Repeat("long reply ", 300)
	var once sync.Once
	var filler string
	full := make(chan struct{})
	sink.during = func(string) {
		// After a few deliveries the disk fills up under them.
		sink.mu.Lock()
		delivered := len(sink.count)
		sink.mu.Unlock()
		if delivered >= 20 {
			once.Do(func() { filler = fill(t, dir, 0); close(full) })
		}
	}
	stop := runRunner(t, s, sink)
	<-full
	deadline := time.Now().Add(10 * time.Second)
	for s.Writable() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Writable() {
		t.Fatal("store still writable on a full disk with no reserve")
	}
	// Deliveries already handed out when the store stopped taking writes
	// finish (at most Concurrency of them); after that none may start.
	atFlip, _ := sink.total()
	time.Sleep(300 * time.Millisecond)
	atStop, _ := sink.total()
	if atStop-atFlip > 8 {
		t.Errorf("%d deliveries after the store stopped taking writes; at most the 8 in flight may finish", atStop-atFlip)
	}
	time.Sleep(time.Second) // a window in which no delivery may start
	during, _ := sink.total()
	os.Remove(filler)
	waitCount(t, s, StatusSent, n)
	stop()
	got, extra := sink.total()
	if extra != 0 || got != n {
		t.Errorf("%d deliveries (%d extra) for %d recipients", got, extra, n)
	}
	if during != atStop {
		t.Errorf("%d deliveries started while the store could not be written", during-atStop)
	}
	t.Logf("store unwritable mid-run: %d deliveries before, %d while unwritable, %d extra in all", atStop, during-atStop, extra)
}
