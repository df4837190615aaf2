package reliability

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// TestLoad keeps many sessions submitting against a slow sink that defers
// about one recipient in ten, then checks every acknowledged recipient is
// accounted for, goroutines come back and the heap did not run away. It is
// not parallel: goroutine counts are process-wide.
func TestLoad(t *testing.T) {
	sessions, dur, pace, drainFor := 20, 5*time.Second, 50*time.Millisecond, 60*time.Second
	perDest, conc := 50, 100
	if soak() {
		sessions, dur, pace, drainFor = 100, 60*time.Second, 200*time.Millisecond, 300*time.Second
		perDest, conc = 100, 200
	}
	if testing.Short() {
		sessions, dur = 5, 2*time.Second
	}
	runtime.GC()
	g0 := runtime.NumGoroutine()

	var failMu sync.Mutex
	failed := map[string]bool{}
	deferredOnce := 0
	greylist := func(to string) *smtp.SMTPError {
		h := fnv.New32a()
		h.Write([]byte(to))
		if h.Sum32()%10 != 0 {
			return nil
		}
		failMu.Lock()
		defer failMu.Unlock()
		if failed[to] {
			return nil
		}
		failed[to] = true
		deferredOnce++
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try again"}
	}
	slowData := func(testnet.Message) *smtp.SMTPError {
		time.Sleep(time.Duration(20+rand.IntN(31)) * time.Millisecond)
		return nil
	}
	sink := testnet.NewSink(t, testnet.DiscardData(), testnet.OnRcpt(greylist), testnet.OnData(slowData))

	cfg := testConfig(t, cfgOpts{sink: sink.Addr(), retry: `"200ms"`, perIP: 1000, maxConns: 2000, perDestination: perDest, concurrency: conc})
	d, err := daemon.New(cfg, slog.New(slog.DiscardHandler), daemon.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			d.Shutdown(ctx)
		}
	}
	t.Cleanup(stop)
	addr := d.Addr("submission.listen")
	time.Sleep(100 * time.Millisecond)
	runtime.GC()
	g1 := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap1 := ms.HeapInuse

	var mu sync.Mutex
	acked := map[string][]string{} // id -> recipients
	sessErrs := 0
	end := time.Now().Add(dur)
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Go(func() {
			cl, g, err := dial(addr)
			if err != nil || !strings.HasPrefix(g, "220") {
				mu.Lock()
				sessErrs++
				mu.Unlock()
				return
			}
			defer cl.close()
			cl.c.SetDeadline(end.Add(60 * time.Second))
			if !strings.HasPrefix(cl.cmd("EHLO load.test"), "250") || !strings.HasPrefix(cl.cmd(plainAuth), "235") {
				mu.Lock()
				sessErrs++
				mu.Unlock()
				return
			}
			for i := 0; time.Now().Before(end) && i < 100000; i++ {
				var rcpts []string
				for k := range 1 + rand.IntN(3) {
					rcpts = append(rcpts, fmt.Sprintf("l%d-%d-%d@dest.test", s, i, k))
				}
				id, r := cl.send("app@saas.test", rcpts, "From: a@customer.test\r\nSubject: load\r\n\r\n"+strings.Repeat("load test body line\r\n", 20))
				if id == "" {
					mu.Lock()
					sessErrs++
					mu.Unlock()
					t.Errorf("session %d message %d: %q", s, i, r)
					return
				}
				mu.Lock()
				acked[id] = rcpts
				mu.Unlock()
				time.Sleep(pace)
			}
			cl.cmd("QUIT")
		})
	}
	wg.Wait()
	loadEnd := time.Now()

	// Drain, bounded.
	deadline := time.Now().Add(drainFor)
	for {
		c := d.Store.Counts()
		if c[queue.StatusQueued]+c[queue.StatusDeferred] == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	drained := time.Since(loadEnd)

	counts := map[queue.Status]int{}
	rcpts, unaccounted, notAtSink, dups := 0, 0, 0, 0
	for id, rs := range acked {
		m, err := d.Store.Get(id)
		if err != nil || len(m.Recipients) != len(rs) {
			unaccounted += len(rs)
			t.Errorf("acknowledged %s: %v", id, err)
			continue
		}
		for i, r := range m.Recipients {
			rcpts++
			counts[r.Status]++
			if r.Address != rs[i] {
				unaccounted++
				t.Errorf("%s/%d is %s, want %s", id, i, r.Address, rs[i])
				continue
			}
			switch r.Status {
			case queue.StatusSent:
				n := sink.CountIDRcpt(id, r.Address)
				if n == 0 {
					notAtSink++
					unaccounted++
				} else if n > 1 {
					dups += n - 1
				}
			case queue.StatusDeferred, queue.StatusBounced:
			default:
				unaccounted++
			}
		}
	}
	if unaccounted > 0 || len(acked) == 0 || sessErrs > 0 {
		t.Errorf("%d messages acknowledged, %d unaccounted (%d sent but never at the sink), %d session errors; statuses %v",
			len(acked), unaccounted, notAtSink, sessErrs, counts)
	}
	if counts[queue.StatusSent] != rcpts {
		t.Errorf("queue not drained within %s: %v", drainFor, counts)
	}

	// Goroutines with the daemon still running (idle pooled relay
	// connections hold one sink goroutine each), then after shutdown.
	idle := d.Relay.Stats().Idle
	gRun := 0
	for dl := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		gRun = runtime.NumGoroutine()
		if gRun <= g1+idle+10 || time.Now().After(dl) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	runtime.ReadMemStats(&ms)
	heap2 := ms.HeapInuse
	stop()
	sink.Close()
	gEnd := 0
	for dl := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		gEnd = runtime.NumGoroutine()
		if gEnd <= g0+5 || time.Now().After(dl) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if gRun > g1+idle+10 {
		t.Errorf("goroutines after the load: %d, baseline %d (+%d idle relay connections)", gRun, g1, idle)
	}
	if gEnd > g0+5 {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines after shutdown: %d, before the daemon %d\n%s", gEnd, g0, buf[:runtime.Stack(buf, true)])
	}
	back := "goroutines back to baseline"
	if gRun > g1+idle+10 || gEnd > g0+5 {
		back = "GOROUTINES NOT BACK TO BASELINE"
	}
	t.Logf("statuses %v; %d recipients deferred once by the sink; drained %s after the load; goroutines %d before the daemon, %d idle daemon, %d after the load (%d idle relay connections), %d after shutdown",
		counts, deferredOnce, drained.Round(100*time.Millisecond), g0, g1, gRun, idle, gEnd)
	summary(t, "load: %d sessions for %s, %d messages (%d recipients), %d unaccounted, %d duplicates, %s (%d→%d, %d after shutdown vs %d), heap in use %.1f MB before, %.1f MB after, growth %.1f MB",
		sessions, dur, len(acked), rcpts, unaccounted, dups, back, g1, gRun, gEnd, g0, mb(heap1), mb(heap2), mb(heap2)-mb(heap1))
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
