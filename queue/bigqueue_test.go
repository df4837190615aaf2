package queue

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestBigQueue measures the store with a large deferred queue: start-up
// time, the first page of `queue ls`, finding due work by the time index,
// and memory. It prints figures and asserts only behaviour; set
// HERMOD_BIG_QUEUE=1000000 to run it at the size the performance targets
// name (it writes about 1 GB to a temporary directory).
func TestBigQueue(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("HERMOD_BIG_QUEUE"))
	if n <= 0 {
		t.Skip("set HERMOD_BIG_QUEUE=N to run")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	now := time.Now()
	s := openStore(t, path, func() time.Time { return now })
	body := []byte("Subject: big queue\r\n\r\n" + strings.Repeat("x", 200) + "\r\n")
	start := time.Now()
	const perTx = 5000
	for done := 0; done < n; done += perTx {
		batch := min(perTx, n-done)
		err := s.update(context.Background(), func(tx *bolt.Tx, st *txState) error {
			for i := 0; i < batch; i++ {
				id := NewID(now.Add(time.Duration(done+i) * time.Microsecond))
				m := &msgRecord{ID: id, MailFrom: "app@saas.test", Received: now, Size: len(body), Rcpts: 1}
				if err := tx.Bucket(bucketBodies).Put([]byte(id), body); err != nil {
					return err
				}
				r := &rcptRecord{Address: fmt.Sprintf("r%d@dest.test", done+i), EnvelopeFrom: "bounce-md_x@m.test", Attempts: 1}
				if _, err := s.setStatus(tx, st, m, 0, r, StatusDeferred, now.Add(time.Hour+time.Duration(i)*time.Millisecond)); err != nil {
					return err
				}
				if err := putRcpt(tx, id, 0, r); err != nil {
					return err
				}
				if err := putMsg(tx, m); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	fill := time.Since(start)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)

	runtime.GC()
	debug.FreeOSMemory() // measure the reopened store, not the filling
	start = time.Now()
	s, err := Open(path, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	openTook := time.Since(start)
	if got := s.Counts()[StatusDeferred]; got != int64(n) {
		t.Fatalf("deferred count after reopen %d, want %d", got, n)
	}
	start = time.Now()
	page, next, err := s.List(ListOptions{Status: StatusDeferred, Limit: 50})
	lsTook := time.Since(start)
	if err != nil || len(page) != 50 || next == "" {
		t.Fatalf("first page: %d %q %v", len(page), next, err)
	}
	// Nothing is due for an hour: the scheduler must answer at once.
	r := NewRunner(s, nil, RunnerOptions{})
	start = time.Now()
	nextDue, err := r.dispatch()
	dispatchTook := time.Since(start)
	if err != nil || !nextDue.After(now) {
		t.Fatalf("dispatch: next %v err %v", nextDue, err)
	}
	rss := vmRSS()
	summary := fmt.Sprintf("big queue: %d deferred recipients, file %d MB, filled in %s; open %s, queue ls first page %s, due scan %s, RSS %d MB",
		n, fi.Size()>>20, fill.Round(time.Millisecond), openTook.Round(time.Millisecond), lsTook.Round(time.Microsecond), dispatchTook.Round(time.Microsecond), rss>>20)
	t.Log(summary)
	fmt.Println(summary)
}

// vmRSS reads this process's resident set size from /proc.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
