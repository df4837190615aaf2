package smtpd

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// message returns a message of exactly n bytes as DATA carries it (before
// the terminating dot), made of short CRLF lines.
func message(n int) string {
	head := "From: a@example.com\r\nSubject: size\r\n\r\n"
	var b strings.Builder
	b.WriteString(head)
	for n-b.Len() > 74 {
		b.WriteString(strings.Repeat("x", 70) + "\r\n")
	}
	b.WriteString(strings.Repeat("y", n-b.Len()-2) + "\r\n") // n-b.Len() is 3..74 here
	return b.String()
}

// TestIdleTimeoutCountsFromLastByte: a DATA that keeps trickling in for
// longer than idle_timeout is accepted; one that stalls for idle_timeout
// gets 451 4.4.2 with no Go error text, and nothing is queued.
func TestIdleTimeoutCountsFromLastByte(t *testing.T) {
	t.Parallel()
	const idle = 400 * time.Millisecond
	_, addr, rec, _ := startServer(t, Options{IdleTimeout: idle})
	cl := dialT(t, addr)
	cl.login(t)
	cl.cmd("MAIL FROM:<app@example.com>")
	cl.cmd("RCPT TO:<rcpt@example.net>")
	if r := cl.cmd("DATA"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}
	fmt.Fprintf(cl.c, "Subject: slow\r\n\r\n")
	start := time.Now()
	tick := time.NewTicker(idle / 4)
	for time.Since(start) < 3*idle {
		<-tick.C
		fmt.Fprintf(cl.c, "line\r\n")
	}
	tick.Stop()
	if r := cl.cmd("."); !strings.HasPrefix(r, "250 2.0.0") {
		t.Fatalf("slow but steady DATA over %s (idle_timeout %s): %q, want 250", time.Since(start).Round(time.Millisecond), idle, r)
	}

	// Now a stall: nothing for longer than idle.
	cl.cmd("MAIL FROM:<app@example.com>")
	cl.cmd("RCPT TO:<rcpt@example.net>")
	cl.cmd("DATA")
	fmt.Fprintf(cl.c, "Subject: stalled\r\n\r\npart\r\n")
	r, _ := cl.reply() // the server answers on its own at the timeout
	if !strings.HasPrefix(r, "451 4.4.2") || strings.Contains(r, "i/o timeout") || strings.Contains(r, "tcp") {
		t.Fatalf("stalled DATA: %q, want 451 4.4.2 with a generic text", r)
	}
	if n := rec.count(); n != 1 {
		t.Fatalf("%d submissions, want only the slow one", n)
	}
}

// TestDataOverallLimit: DataTimeout bounds a whole DATA even when bytes
// keep coming.
func TestDataOverallLimit(t *testing.T) {
	t.Parallel()
	_, addr, rec, _ := startServer(t, Options{IdleTimeout: time.Second, DataTimeout: 500 * time.Millisecond})
	cl := dialT(t, addr)
	cl.login(t)
	cl.cmd("MAIL FROM:<app@example.com>")
	cl.cmd("RCPT TO:<rcpt@example.net>")
	cl.cmd("DATA")
	fmt.Fprintf(cl.c, "Subject: endless\r\n\r\n")
	done := make(chan string, 1)
	go func() { r, _ := cl.reply(); done <- r }()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case r := <-done:
			if !strings.HasPrefix(r, "451 4.4.2") {
				t.Fatalf("endless DATA: %q, want 451 4.4.2", r)
			}
			if rec.count() != 0 {
				t.Fatal("something was queued")
			}
			return
		case <-deadline:
			t.Fatal("no reply within 5s to a DATA that never ends (DataTimeout 500ms)")
		case <-time.After(50 * time.Millisecond):
			fmt.Fprintf(cl.c, "more\r\n")
		}
	}
}

// TestAuthDeadline: a session that never authenticates is closed with 421
// at AuthTimeout even while it keeps sending NOOPs.
func TestAuthDeadline(t *testing.T) {
	t.Parallel()
	_, addr, _, _ := startServer(t, Options{AuthTimeout: 500 * time.Millisecond, MaxCommandsBeforeAuth: 1000})
	cl := dialT(t, addr)
	cl.cmd("EHLO stranger.test")
	start := time.Now()
	var last string
	for time.Since(start) < 5*time.Second {
		last = cl.cmd("NOOP")
		if !strings.HasPrefix(last, "250") {
			break
		}
		time.Sleep(50 * time.Millisecond) // a client's pace, not a wait for a condition
	}
	took := time.Since(start)
	if !strings.HasPrefix(last, "421") || took > 2*time.Second {
		t.Fatalf("unauthenticated NOOPs: last reply %q after %s, want 421 at ~500ms", last, took)
	}
	if closed, _ := cl.closedWithin(2 * time.Second); !closed {
		t.Fatal("connection still open after the auth deadline")
	}
}

// TestCommandBudgetBeforeAuth: only MaxCommandsBeforeAuth lines are
// answered before AUTH, then 421 4.7.0 and close; after AUTH there is no
// such budget.
func TestCommandBudgetBeforeAuth(t *testing.T) {
	t.Parallel()
	_, addr, _, _ := startServer(t, Options{MaxCommandsBeforeAuth: 5})
	cl := dialT(t, addr)
	fmt.Fprint(cl.c, strings.Repeat("NOOP\r\n", 50))
	answered := 0
	var last string
	for {
		r, err := cl.reply()
		if strings.HasPrefix(r, "250") {
			answered++
		} else if r != "" {
			last = r
		}
		if err != nil {
			break
		}
	}
	if answered != 5 || !strings.HasPrefix(last, "421 4.7.0") {
		t.Fatalf("50 pipelined NOOPs before AUTH: %d answered, last %q; want 5 then 421 4.7.0", answered, last)
	}

	cl = dialT(t, addr)
	cl.login(t) // EHLO + AUTH: 2 of 5
	for i := range 20 {
		if r := cl.cmd("NOOP"); !strings.HasPrefix(r, "250") {
			t.Fatalf("NOOP %d after AUTH: %q", i, r)
		}
	}
}

// TestStrangersShare: unauthenticated connections from addresses that
// never logged in get at most MaxUnauthenticated slots; the application's
// address (which logged in before) still gets in and is served.
func TestStrangersShare(t *testing.T) {
	t.Parallel()
	_, addr, rec, _ := startServer(t, Options{MaxConnections: 10, MaxConnectionsPerIP: 3, MaxUnauthenticated: 4})
	app := dialT(t, addr)
	app.login(t)
	app.cmd("QUIT")

	var held []*client
	refused := 0
	for i := range 12 {
		cl, g := dialFrom(t, addr, fmt.Sprintf("127.0.0.%d", 2+i%6))
		if strings.HasPrefix(g, "220") {
			cl.cmd("EHLO stranger.test")
			held = append(held, cl)
		} else if strings.HasPrefix(g, "421 4.7.0") {
			refused++
		} else {
			t.Fatalf("stranger %d: greeting %q", i, g)
		}
	}
	if len(held) != 4 || refused != 8 {
		t.Fatalf("12 strangers: %d held, %d refused; want 4 held (the share), 8 refused", len(held), refused)
	}
	start := time.Now()
	for range 3 {
		app = dialT(t, addr)
		app.login(t)
		app.cmd("MAIL FROM:<app@example.com>")
		app.cmd("RCPT TO:<rcpt@example.net>")
		app.cmd("DATA")
		if r := app.cmd("Subject: hi\r\n\r\nhello\r\n."); !strings.HasPrefix(r, "250") {
			t.Fatalf("application while strangers hold their share: %q", r)
		}
	}
	if rec.count() != 3 {
		t.Fatalf("%d submissions, want 3", rec.count())
	}
	t.Logf("app served 3 messages in %s with %d strangers held and %d refused", time.Since(start), len(held), refused)
}

// TestParallelGuessesReserved: 12 wrong passwords sent at once from one
// address are not all evaluated: the lockout (10) is reserved before the
// hash is computed.
func TestParallelGuessesReserved(t *testing.T) {
	t.Parallel()
	s, addr, _, _ := startServer(t, Options{HashConcurrency: 1,
		Users: []User{{Name: "app", PasswordHash: testHash(t, 8), Accounts: []string{"*"}}}})
	s.limiter.baseDelay, s.limiter.maxDelay = time.Millisecond, time.Millisecond
	var wg sync.WaitGroup
	replies := make(chan string, 12)
	for i := range 12 {
		cl := dialT(t, addr)
		cl.cmd("EHLO guess.test")
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies <- cl.cmd(plainAuth("app", fmt.Sprintf("wrong-%d", i)))
		}()
	}
	wg.Wait()
	close(replies)
	counts := map[string]int{}
	for r := range replies {
		counts[r[:min(9, len(r))]]++
	}
	if counts["535 5.7.8"] != 10 || counts["454 4.7.0"] != 2 {
		t.Fatalf("12 parallel wrong passwords: %v; want exactly 10 evaluated (535) and 2 refused unevaluated (454)", counts)
	}
}

// TestParallelLoginsNotLocked: the application's parallel logins from one
// address (a connection pool) all succeed: reserving them only makes them
// wait for each other, it does not count them as failures.
func TestParallelLoginsNotLocked(t *testing.T) {
	t.Parallel()
	_, addr, _, _ := startServer(t, Options{HashConcurrency: 1,
		Users: []User{{Name: "app", PasswordHash: testHash(t, 6), Accounts: []string{"*"}}}})
	var wg sync.WaitGroup
	replies := make(chan string, 30)
	for range 30 {
		cl := dialT(t, addr)
		cl.cmd("EHLO pool.test")
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies <- cl.cmd(plainAuth("app", testPass))
		}()
	}
	wg.Wait()
	close(replies)
	for r := range replies {
		if !strings.HasPrefix(r, "235") {
			t.Fatalf("parallel login of the application: %q, want 235", r)
		}
	}
}

// TestLimiterCountsIPv6Per64: failures from many addresses of one /64 lock
// the whole /64, not another one.
func TestLimiterCountsIPv6Per64(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newAuthLimiter(func() time.Time { return now })
	for i := range 10 {
		a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if !l.reserve(a) {
			t.Fatalf("attempt %d refused early", i)
		}
		l.end(a, false)
	}
	if !l.locked(netip.MustParseAddr("2001:db8:1:2:ffff::1")) {
		t.Error("10 failures from one /64 did not lock another address of it")
	}
	if l.locked(netip.MustParseAddr("2001:db8:1:3::1")) {
		t.Error("another /64 is locked too")
	}
	if l.locked(netip.MustParseAddr("192.0.2.1")) {
		t.Error("an IPv4 address is locked")
	}
}

// TestDummyHashCost: an unknown user name is checked against a hash of
// the same cost as the configured users', so it takes as long.
func TestDummyHashCost(t *testing.T) {
	s := New(Options{Users: []User{{Name: "app", PasswordHash: testHash(t, 9)}}})
	_, dummy := s.currentUsers()
	if c, err := bcrypt.Cost(dummy); err != nil || c != 9 {
		t.Fatalf("dummy hash cost %d (%v), want 9 like the user's", c, err)
	}
	s.SetUsers([]User{{Name: "a", PasswordHash: testHash(t, 5)}, {Name: "b", PasswordHash: testHash(t, 7)}})
	if _, dummy = s.currentUsers(); mustCost(t, dummy) != 7 {
		t.Fatalf("after reload: dummy cost %d, want 7 (the highest)", mustCost(t, dummy))
	}
	// And it is used: an unknown name costs one comparison of that cost.
	h := newHasher(1)
	users, dummy := s.currentUsers()
	start := time.Now()
	if _, ok, _ := h.authenticate(users, dummy, "nobody", "x", false); ok {
		t.Fatal("unknown user accepted")
	}
	unknown := time.Since(start)
	start = time.Now()
	h.authenticate(users, dummy, "b", "x", false)
	known := time.Since(start)
	t.Logf("unknown user %s, known user %s", unknown, known)
}

func mustCost(t *testing.T, h []byte) int {
	c, err := bcrypt.Cost(h)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUserNameNotLogged: a user name that is not a user (perhaps a
// password typed in the wrong field) never reaches the log; a real user
// name does.
func TestUserNameNotLogged(t *testing.T) {
	t.Parallel()
	s, addr, _, lb := startServer(t, Options{})
	s.limiter.baseDelay, s.limiter.maxDelay = time.Millisecond, time.Millisecond
	cl := dialT(t, addr)
	cl.cmd("EHLO c.test")
	cl.cmd(plainAuth("Tr0ub4dor&3-secret", "app"))
	cl.cmd("AUTH LOGIN")
	cl.cmd("Q29ycmVjdEhvcnNlQmF0dGVyeQ==") // "CorrectHorseBattery" as a LOGIN user name
	cl.cmd("eA==")
	cl.cmd(plainAuth("app", "wrong"))
	log := lb.String()
	for _, secret := range []string{"Tr0ub4dor", "CorrectHorse"} {
		if strings.Contains(log, secret) {
			t.Errorf("the log holds %q:\n%s", secret, log)
		}
	}
	if strings.Count(log, "unknown user #") != 2 || !strings.Contains(log, "user=app") {
		t.Errorf("log should tag the two unknown names and name the real user:\n%s", log)
	}
}

// TestMaxMessageBytesExact: exactly max_message_bytes is accepted, one
// byte more is 552 5.3.4.
func TestMaxMessageBytesExact(t *testing.T) {
	t.Parallel()
	const max = 4000
	_, addr, rec, _ := startServer(t, Options{MaxMessageBytes: max})
	cl := dialT(t, addr)
	cl.login(t)
	for _, tc := range []struct {
		n    int
		want string
	}{{max, "250 2.0.0"}, {max + 1, "552 5.3.4"}, {max - 1, "250 2.0.0"}} {
		msg := message(tc.n)
		if len(msg) != tc.n {
			t.Fatalf("test message is %d bytes, want %d", len(msg), tc.n)
		}
		cl.cmd("MAIL FROM:<app@example.com>")
		cl.cmd("RCPT TO:<rcpt@example.net>")
		cl.cmd("DATA")
		if r := cl.cmd(msg + "."); !strings.HasPrefix(r, tc.want) {
			t.Errorf("message of %d bytes (max %d): %q, want %s", tc.n, max, r, tc.want)
		}
	}
	if got := rec.count(); got != 2 {
		t.Errorf("%d queued, want 2", got)
	}
	if r := cl.cmd(fmt.Sprintf("MAIL FROM:<app@example.com> SIZE=%d", max+1)); !strings.HasPrefix(r, "552 5.3.4") {
		t.Errorf("MAIL SIZE=max+1: %q, want 552 5.3.4", r)
	}
}

// TestHeaderSectionCapped: too many header fields, or too many header
// bytes, is 552 5.3.4 before the header is parsed; within the caps the
// message is accepted.
func TestHeaderSectionCapped(t *testing.T) {
	t.Parallel()
	_, addr, rec, _ := startServer(t, Options{MaxHeaderFields: 100, MaxHeaderBytes: 8000})
	cl := dialT(t, addr)
	cl.login(t)
	fields := func(n int, val string) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "X-F%d: %s\r\n", i, val)
		}
		return b.String() + "\r\nbody\r\n"
	}
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"100 fields", fields(100, "v"), "250 2.0.0"},
		{"101 fields", fields(101, "v"), "552 5.3.4"},
		{"50 fields over 8000 bytes", fields(50, strings.Repeat("v", 200)), "552 5.3.4"},
		{"folded lines over 8000 bytes", "Subject: x\r\n" + strings.Repeat(" y\r\n", 3000) + "\r\nbody\r\n", "552 5.3.4"},
	} {
		cl.cmd("MAIL FROM:<app@example.com>")
		cl.cmd("RCPT TO:<rcpt@example.net>")
		cl.cmd("DATA")
		if r := cl.cmd(tc.msg + "."); !strings.HasPrefix(r, tc.want) {
			t.Errorf("%s: %q, want %s", tc.name, r, tc.want)
		}
	}
	if rec.count() != 1 {
		t.Errorf("%d queued, want 1", rec.count())
	}
}

// TestHalfClosedData: a client that half-closes its side in the middle of
// DATA gets 451 4.4.2 on the side still open, and nothing is queued —
// whether it stops in the header or in the body.
func TestHalfClosedData(t *testing.T) {
	t.Parallel()
	_, addr, rec, _ := startServer(t, Options{})
	for _, part := range []string{"Subject: cut\r\n\r\nthe body goes on and on\r\n", "Subject: cut\r\nX-Other: in the head"} {
		cl := dialT(t, addr)
		cl.login(t)
		cl.cmd("MAIL FROM:<app@example.com>")
		cl.cmd("RCPT TO:<rcpt@example.net>")
		cl.cmd("DATA")
		fmt.Fprint(cl.c, part)
		if err := cl.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		r, _ := cl.reply()
		if !strings.HasPrefix(r, "451 4.4.2") {
			t.Errorf("DATA cut off after %q: %q, want 451 4.4.2", part, r)
		}
	}
	if n := rec.count(); n != 0 {
		t.Fatalf("%d cut-off messages queued, want 0", n)
	}
}

// TestTrustSharedByListeners: a login on one listener (say implicit TLS)
// makes the address known on the others too, so the application is not
// taken for a stranger on the plain listener.
func TestTrustSharedByListeners(t *testing.T) {
	t.Parallel()
	s, a, _, _ := startServer(t, Options{MaxConnections: 10, MaxUnauthenticated: 2})
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l2, false)
	t.Cleanup(func() { l2.Close() })
	b := l2.Addr().String()
	for range 2 {
		if _, g := dialFrom(t, b, "127.0.0.2"); !strings.HasPrefix(g, "220") {
			t.Fatalf("stranger within the share: %q", g)
		}
	}
	if _, g := dialFrom(t, b, "127.0.0.1"); !strings.HasPrefix(g, "421") {
		t.Fatalf("before logging in, the application is a stranger too: %q", g)
	}
	dialT(t, a).login(t)
	cl, g := dialFrom(t, b, "127.0.0.1")
	if !strings.HasPrefix(g, "220") {
		t.Fatalf("after logging in on the other listener: %q, want 220", g)
	}
	cl.login(t)
}
