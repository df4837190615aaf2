package reliability

import (
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// TestOpenRelay tries to get mail relayed to outside domains without
// logging in: on the submission listener unauthenticated, and on the bounce
// listener, which has no AUTH at all and must accept only its own VERP
// addresses (and postmaster, RFC 5321 4.5.1).
func TestOpenRelay(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, cfgOpts{sink: sink.Addr()}), daemonOpts())
	sub, bnc := d.Addr("submission.listen"), d.Addr("bounce.listen")
	id := submit(t, sub, "real@dest.test")
	waitRcpt(t, d, id, 0, queue.StatusSent, 15*time.Second)
	m, _ := d.Store.Get(id)
	verp := m.Recipients[0].EnvelopeFrom
	verpLocal := verp[:strings.IndexByte(verp, '@')]

	tricks := []string{
		"victim@dest.test",
		"victim%dest.test@m.makeleaps.test",
		"victim%dest.test",
		"dest.test!victim@m.makeleaps.test",
		"dest.test!victim",
		"@relay.test:victim@dest.test",
		"@m.makeleaps.test:victim@dest.test",
		"@m.makeleaps.test,@relay.test:victim@dest.test",
		`"victim@dest.test"@m.makeleaps.test`,
		`"victim@dest.test"`,
		`"victim%dest.test"@m.makeleaps.test`,
		"victim@[127.0.0.1]",
		"victim@[IPv6:::1]",
		"victim@127.0.0.1",
		"VICTIM@DEST.TEST",
		"victim@dest.test.",
		"victim@DEST.test.",
		"victim@localhost",
		"victim@m.makeleaps.test",
		"victim@m.makeleaps.test.",
		"victim@sub.m.makeleaps.test",
		"victim@m.makeleaps.test.dest.test",
		verpLocal + "@dest.test",
		verpLocal + "@m.makeleaps.test.evil.test",
		verpLocal + "@evil-m.makeleaps.test",
		strings.ToUpper(verpLocal) + "@DEST.TEST",
		"postmaster@dest.test",
		"abuse@dest.test",
		"Postmaster@dest.test.",
		"postmaster@[127.0.0.1]",
		"victim@dest.test@m.makeleaps.test",
		"victim@dest.test>",
		"<victim@dest.test>",
	}
	// Recipients the bounce listener may accept: its own postmaster.
	allowed := map[string]bool{"postmaster@m.makeleaps.test": true, "postmaster": true}
	extraBounce := []string{"postmaster@m.makeleaps.test", "postmaster"}

	attempts, rcpt2xx, relayed := 0, 0, 0
	try := func(addr, listener, rcpt string, auth bool) {
		attempts++
		cl := mustDial(t, addr)
		defer cl.close()
		cl.cmd("EHLO attacker.test")
		from := "<x@evil.test>"
		if listener == "bounce" {
			from = "<>"
		}
		mr := cl.cmd("MAIL FROM:" + from)
		rr := cl.cmd("RCPT TO:<" + rcpt + ">")
		if strings.HasPrefix(rr, "2") {
			if !allowed[strings.TrimSuffix(rcpt, ".")] || listener != "bounce" {
				rcpt2xx++
				t.Errorf("%s: RCPT TO:<%s> after MAIL %q answered %q", listener, rcpt, mr, rr)
			}
			if r := cl.cmd("DATA"); strings.HasPrefix(r, "354") {
				cl.cmd("From: x@evil.test\r\nTo: " + rcpt + "\r\nSubject: relay me\r\n\r\nrelay test\r\n.\r\n")
			}
		}
		cl.cmd("QUIT")
	}
	for _, rc := range tricks {
		try(sub, "submission", rc, false)
		try(bnc, "bounce", rc, false)
	}
	for _, rc := range extraBounce {
		try(bnc, "bounce", rc, false)
	}
	// Nothing may have been queued or delivered for anyone but the real recipient.
	time.Sleep(300 * time.Millisecond)
	for _, rc := range append(tricks, extraBounce...) {
		ids, _ := d.Store.ByRecipient(strings.ToLower(rc))
		n := sink.Count(rc)
		if len(ids) > 0 || n > 0 {
			relayed++
			t.Errorf("%s: queued %v, delivered %d times", rc, ids, n)
		}
	}
	if n := sink.Count("victim@dest.test"); n > 0 {
		relayed++
		t.Errorf("victim@dest.test delivered %d times", n)
	}
	if c := d.Store.Counts(); c[queue.StatusQueued]+c[queue.StatusDeferred]+c[queue.StatusSent] != 1 {
		t.Errorf("queue counts %v, want only the one real message", c)
	}
	summary(t, "open relay: %d attempts, %d relayed (%d RCPTs got 2xx outside postmaster@bounce-domain)", attempts, relayed, rcpt2xx)
}
