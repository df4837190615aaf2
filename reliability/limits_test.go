package reliability

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// TestLimits checks the session limits: connections per address, the idle
// timeout, the recipient cap, and junk commands.
func TestLimits(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, cfgOpts{sink: sink.Addr(), perIP: 5, idleTimeout: "1s", maxRcpts: 100}), daemonOpts())
	addr := d.Addr("submission.listen")

	// Connections beyond max_connections_per_ip get 421 at once.
	var open []*client
	for range 5 {
		cl, g, err := dial(addr)
		if err != nil || !strings.HasPrefix(g, "220") {
			t.Fatalf("connection within the limit: %q %v", g, err)
		}
		open = append(open, cl)
	}
	extra, refused := 8, 0
	for range extra {
		cl, g, err := dial(addr)
		if strings.HasPrefix(g, "421") {
			refused++
		} else {
			t.Errorf("connection over the limit: greeting %q %v", g, err)
		}
		if cl != nil {
			cl.close()
		}
	}
	for _, cl := range open {
		cl.close()
	}
	// The slots come back once closed.
	var cl *client
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, g, err := dial(addr)
		if err == nil && strings.HasPrefix(g, "220") {
			cl = c
			break
		}
		if c != nil {
			c.close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots never came back: %q %v", g, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A client that says nothing is closed with 421 after idle_timeout.
	start := time.Now()
	idle := cl.rest(15 * time.Second)
	idleTook := time.Since(start)
	cl.close()
	idleOK := len(idle) == 1 && strings.HasPrefix(idle[0], "421")
	if !idleOK {
		t.Errorf("idle client got %q, want one 421 and the close", idle)
	}
	// Also after logging in, in the middle of a transaction.
	cl = mustDial(t, addr)
	cl.login(t)
	cl.cmd("MAIL FROM:<app@saas.test>")
	if mid := cl.rest(15 * time.Second); len(mid) != 1 || !strings.HasPrefix(mid[0], "421") {
		t.Errorf("idle mid-transaction: %q, want 421", mid)
		idleOK = false
	}
	cl.close()

	// 10,000 RCPTs pipelined in one transaction: the first max_recipients
	// pass, the rest get 452 4.5.3 (RFC 5321 4.5.3.1.10).
	cl = mustDial(t, addr)
	cl.login(t)
	cl.cmd("MAIL FROM:<app@saas.test>")
	const n = 10000
	go func() {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "RCPT TO:<r%d@dest.test>\r\n", i)
			if b.Len() > 32<<10 {
				cl.write(b.String())
				b.Reset()
			}
		}
		cl.write(b.String())
	}()
	ok250, over452, other := 0, 0, 0
	for range n {
		r, err := cl.reply()
		switch {
		case err != nil:
			t.Fatalf("after %d replies: %v", ok250+over452+other, err)
		case strings.HasPrefix(r, "250"):
			ok250++
		case strings.HasPrefix(r, "452 4.5.3"):
			over452++
		default:
			other++
		}
	}
	id, r := "", cl.cmd("DATA")
	if strings.HasPrefix(r, "354") {
		r = cl.cmd("From: a@customer.test\r\nSubject: many\r\n\r\nbody\r\n.\r\n")
		if m := reQueued.FindStringSubmatch(r); m != nil {
			id = m[1]
		}
	}
	cl.close()
	if ok250 != 100 || over452 != n-100 || other != 0 || id == "" {
		t.Errorf("10,000 RCPTs: %d accepted, %d refused 452 4.5.3, %d other; DATA %q", ok250, over452, other, r)
	} else if m, _ := d.Store.Get(id); len(m.Recipients) != 100 {
		t.Errorf("queued %d recipients, want 100", len(m.Recipients))
	}

	// Pipelined junk: each gets a 5xx and the session carries on.
	cl = mustDial(t, addr)
	cl.login(t)
	junk := []string{"FOO bar", "MAIL FROM:<broken", "RCPT TO:<x@dest.test>", "DATA", "EXPN staff", "HELP",
		"\x01\x02\x03 binary", "MAIL FROM:<a@saas.test> NOSUCHPARAM=1", "AUTH PLAIN", "XCLIENT ADDR=1.2.3.4", "BDAT 0 LAST"}
	var all strings.Builder
	for _, j := range junk {
		all.WriteString(j + "\r\n")
	}
	cl.write(all.String())
	junk5xx := 0
	var junkReplies []string
	for range junk {
		r, err := cl.reply()
		junkReplies = append(junkReplies, r)
		if err != nil {
			break
		}
		if strings.HasPrefix(r, "5") {
			junk5xx++
		}
	}
	noop := cl.cmd("NOOP")
	jid, jr := cl.send("app@saas.test", []string{"after-junk@dest.test"}, "From: a@customer.test\r\nSubject: after junk\r\n\r\nbody\r\n")
	cl.close()
	survived := strings.HasPrefix(noop, "250") && jid != ""
	if junk5xx != len(junk) || !survived {
		t.Errorf("junk: %d of %d got 5xx (%q); then NOOP %q, message %q", junk5xx, len(junk), junkReplies, noop, jr)
	}
	if jid != "" {
		waitRcpt(t, d, jid, 0, queue.StatusSent, 15*time.Second)
	}
	summary(t, "limits: %d connections, %d extra, %d refused with 421; idle client closed with 421 after %s (idle_timeout 1s): %v; 10000 RCPTs: %d accepted, %d refused 452 4.5.3; %d pipelined junk commands, %d got 5xx, session survived: %v",
		5+extra, extra, refused, idleTook.Round(100*time.Millisecond), idleOK, ok250, over452, len(junk), junk5xx, survived)
}
