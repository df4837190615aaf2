package reliability

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// dialFrom connects from the loopback address local and reads the greeting.
func dialFrom(addr, local string) (*client, string, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	cl := &client{c: c, r: bufio.NewReaderSize(c, 4<<10)}
	g, err := cl.reply()
	if err != nil {
		c.Close()
		return nil, g, err
	}
	return cl, g, nil
}

// heapPeak samples the heap in use until stop is called and returns the
// highest value seen, in bytes.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return peak.Load() }
}

// TestStrangersCannotHoldSlots (issue 11): 1000 unauthenticated
// connections from 20 addresses keeping themselves busy with NOOPs do not
// keep the application out: strangers get only their share of
// max_connections, each is closed at auth_timeout or after
// max_commands_before_auth lines, and the application is served at once.
func TestStrangersCannotHoldSlots(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr(), maxConns: 1000, perIP: 50})
	// Long enough for the 1000 connections to be made (under -race too)
	// before the first of them reaches it.
	cfg.Submission.AuthTimeout = 10 * time.Second
	cfg.Submission.MaxUnauthenticated = 500
	d := startDaemon(t, cfg, daemonOpts())
	addr := d.Addr("submission.listen")
	submit(t, addr, "warm@dest.test") // the application has logged in before

	var held []*client
	refused := 0
	dialStart := time.Now()
	for i := range 1000 {
		cl, g, err := dialFrom(addr, fmt.Sprintf("127.0.1.%d", 1+i%20))
		switch {
		case err == nil && strings.HasPrefix(g, "220"):
			held = append(held, cl)
			cl.cmd("EHLO stranger.test")
		case strings.HasPrefix(g, "421 4.7.0"):
			refused++
		default:
			t.Fatalf("stranger %d: %q %v", i, g, err)
		}
		if cl != nil && !strings.HasPrefix(g, "220") {
			cl.close()
		}
	}
	defer func() {
		for _, cl := range held {
			cl.close()
		}
	}()
	if d := time.Since(dialStart); d > cfg.Submission.AuthTimeout {
		t.Fatalf("making the connections took %s, longer than auth_timeout: the count of held ones means nothing", d)
	}
	start := time.Now()
	id := submit(t, addr, "app@dest.test")
	took := time.Since(start)
	if _, err := sink.Wait("app@dest.test", 30*time.Second); err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	if len(held) > 500 {
		t.Errorf("%d strangers held, more than max_unauthenticated 500", len(held))
	}
	// Every stranger is closed by the auth deadline or the command budget;
	// NOOPs do not help.
	var wg sync.WaitGroup
	var mu sync.Mutex
	closedBy := map[string]int{}
	for _, cl := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			why := "still open after 22s"
			defer func() { mu.Lock(); closedBy[why]++; mu.Unlock() }()
			for range 15 {
				r := cl.cmd("NOOP")
				if !strings.HasPrefix(r, "250") {
					why = r[:min(9, len(r))]
					if strings.HasPrefix(r, "write:") || strings.Contains(r, "read:") {
						why = "closed"
					}
					return
				}
				time.Sleep(1500 * time.Millisecond) // the stranger's pace: 9 NOOPs take longer than auth_timeout
			}
		}()
	}
	wg.Wait()
	// 421 4.4.2: auth_timeout; 421 4.7.0: the command budget, whichever
	// came first for that connection.
	if closedBy["421 4.4.2"]+closedBy["421 4.7.0"] != len(held) {
		t.Errorf("strangers after auth_timeout 10s: %v, want all %d closed with 421", closedBy, len(held))
	}
	if took > 2*time.Second {
		t.Errorf("application waited %s", took)
	}
	summary(t, "submission: 1000 unauthenticated connections from 20 addresses, %d held (share 500), %d refused 421; NOOPs every 1.5 s: %v at auth_timeout 10s; app still served in %.2f s",
		len(held), refused, closedBy, took.Seconds())
}

// TestAuthFlood (issue 11): wrong passwords from 10 addresses in parallel
// are reserved before hashing (at most 10 per address evaluated), hashing
// is bounded, the application's own login is not starved, and an unknown
// user name costs the same as a known one.
func TestAuthFlood(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr(), maxConns: 1000, perIP: 100})
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Submission.Users[0].PasswordHash = string(h)
	d := startDaemon(t, cfg, daemonOpts())
	addr := d.Addr("submission.listen")
	start := time.Now()
	submit(t, addr, "before@dest.test") // the application, sending as usual
	normal := time.Since(start)

	// Unknown against known user name, from fresh addresses (no lockout).
	timeAuth := func(local, line string) time.Duration {
		cl, _, err := dialFrom(addr, local)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.close()
		cl.cmd("EHLO t.test")
		start := time.Now()
		cl.cmd(line)
		return time.Since(start)
	}
	var known, unknown time.Duration
	for i := range 3 {
		known += timeAuth(fmt.Sprintf("127.0.2.%d", 1+i), authLine("app", "wrong"))
		unknown += timeAuth(fmt.Sprintf("127.0.2.%d", 11+i), authLine("nobody", "wrong"))
	}
	known, unknown = known/3, unknown/3

	guesses := 500
	if soak() {
		guesses = 2000
	}
	var evaluated, locked atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 100)
	for i := range guesses {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cl, _, err := dialFrom(addr, fmt.Sprintf("127.0.3.%d", 1+i%10))
			if err != nil {
				return
			}
			defer cl.close()
			cl.cmd("EHLO guess.test")
			switch r := cl.cmd(authLine("app", fmt.Sprintf("guess-%d", i))); {
			case strings.HasPrefix(r, "535"):
				evaluated.Add(1)
			case strings.HasPrefix(r, "454"):
				locked.Add(1)
			}
		}()
		if i == guesses/2 {
			// The application submits in the middle of the flood.
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				submit(t, addr, "during@dest.test")
				t.Logf("application submission during the flood: %s", time.Since(start))
			}()
		}
	}
	start = time.Now()
	submit(t, addr, "after@dest.test")
	took := time.Since(start)
	wg.Wait()
	if evaluated.Load() > 100 {
		t.Errorf("%d wrong passwords evaluated, want at most 10 per address (100)", evaluated.Load())
	}
	if took > 3*normal+time.Second {
		t.Errorf("application submission took %s during the flood (a hashing slot is kept for addresses that logged in before)", took)
	}
	ratio := float64(unknown) / float64(known)
	if ratio < 0.7 || ratio > 1.4 {
		t.Errorf("unknown user %s, known user %s: distinguishable", unknown, known)
	}
	summary(t, "auth flood: %d wrong passwords from 10 addresses, %d evaluated (535), %d refused before hashing (454); app submission %.2f s during it (%.2f s before); AUTH with a wrong password: known user %.2f s, unknown user %.2f s (bcrypt cost %d)",
		guesses, evaluated.Load(), locked.Load(), took.Seconds(), normal.Seconds(), known.Seconds(), unknown.Seconds(), bcrypt.DefaultCost)
}

// TestDataPromises (issue 11): slow but steady DATA is accepted and a
// stalled one is 451 4.4.2; a message of exactly max_message_bytes is
// accepted and one byte more is 552; 25 MiB of short header lines is
// refused with 552 5.3.4 without costing memory; a DATA cut off by a
// half-close queues nothing and gets 451.
func TestDataPromises(t *testing.T) {
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr(), idleTimeout: "1s"})
	cfg.Submission.MaxMessageBytes = 30 << 20
	d := startDaemon(t, cfg, daemonOpts())
	addr := d.Addr("submission.listen")
	cl := mustDial(t, addr)
	cl.login(t)
	begin := func() {
		cl.cmd("MAIL FROM:<app@saas.test>")
		cl.cmd("RCPT TO:<x@dest.test>")
		cl.cmd("DATA")
	}

	// Slow but steady: a line every 300ms for 3s with idle_timeout 1s.
	begin()
	cl.write("From: a@customer.test\r\nSubject: slow\r\n\r\n")
	for range 10 {
		time.Sleep(300 * time.Millisecond) // the slow client's pace
		cl.write("line\r\n")
	}
	slow := cl.cmd(".")
	// Stalled: nothing for longer than idle_timeout.
	begin()
	cl.write("Subject: stalled\r\n\r\npart\r\n")
	stalled, _ := cl.reply()
	if !strings.HasPrefix(slow, "250") || !strings.HasPrefix(stalled, "451 4.4.2") || strings.Contains(stalled, "tcp") {
		t.Errorf("slow DATA %q (want 250), stalled DATA %q (want 451 4.4.2, generic)", slow, stalled)
	}

	// Exactly max, and max+1 (built before connecting: idle_timeout is 1s).
	max := int(cfg.Submission.MaxMessageBytes)
	build := func(n int) string {
		head := "From: a@customer.test\r\nSubject: exact\r\n\r\n"
		body := make([]byte, 0, n)
		body = append(body, head...)
		for len(body) < n-74 {
			body = append(body, strings.Repeat("x", 70)+"\r\n"...)
		}
		body = append(body, strings.Repeat("y", n-len(body)-2)+"\r\n"...)
		return string(body)
	}
	exactMsg, overMsg := build(max), build(max+1)
	cl = mustDial(t, addr)
	cl.login(t)
	exact := func(msg string) string {
		begin()
		cl.write(msg)
		return cl.cmd(".")
	}
	atMax, overMax := exact(exactMsg), exact(overMsg)
	if !strings.HasPrefix(atMax, "250") || !strings.HasPrefix(overMax, "552 5.3.4") {
		t.Errorf("exactly max_message_bytes: %q (want 250); max+1: %q (want 552 5.3.4)", atMax, overMax)
	}

	// 25 MiB of short header lines.
	runtime.GC()
	stop := heapPeak()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	begin()
	w := bufio.NewWriterSize(cl.c, 256<<10)
	line := "X-A: b\r\n"
	for n := 0; n < 25<<20; n += len(line) {
		w.WriteString(line)
	}
	w.WriteString("\r\nbody\r\n")
	w.Flush()
	header := cl.cmd(".")
	peak := stop()
	if !strings.HasPrefix(header, "552 5.3.4") {
		t.Errorf("25 MiB of short header lines: %q, want 552 5.3.4", header)
	}
	growth := float64(peak-min(peak, before.HeapInuse)) / (1 << 20)
	if growth > 64 {
		t.Errorf("heap grew %.0f MB for a refused 25 MiB header", growth)
	}

	// Half-closed in the middle of DATA.
	before2 := d.Store.Counts()
	hc := mustDial(t, addr)
	hc.login(t)
	hc.cmd("MAIL FROM:<app@saas.test>")
	hc.cmd("RCPT TO:<cut@dest.test>")
	hc.cmd("DATA")
	hc.write("From: a@customer.test\r\nSubject: cut\r\n\r\nthe body, cut off\r\n")
	hc.c.(*net.TCPConn).CloseWrite()
	cut, _ := hc.reply()
	after := d.Store.Counts()
	if !strings.HasPrefix(cut, "451 4.4.2") || fmt.Sprint(before2) != fmt.Sprint(after) {
		t.Errorf("half-closed DATA: %q (want 451 4.4.2), queue %v → %v (want unchanged)", cut, before2, after)
	}
	summary(t, "submission data: slow DATA (a line / 300ms for 3s, idle_timeout 1s) %.9s; stalled %.9s; exactly max_message_bytes %.3s, max+1 %.9s; 25 MiB of short header lines %.9s, heap +%.1f MB; half-closed DATA %.9s, nothing queued",
		slow, stalled, atMax, overMax, header, growth, cut)
}
