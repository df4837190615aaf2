package reliability

import (
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// smuggled is what an attacker hides after an end-of-data lookalike: a
// second transaction to a victim, ended by the real end of data.
const smuggled = "MAIL FROM:<x@evil.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nFrom: x@evil.test\r\nTo: victim@dest.test\r\nSubject: smuggled\r\n\r\nyou have been smuggled\r\n.\r\n"

// smuggleVariants are end-of-data lookalikes and malformed data, each
// followed by the smuggled transaction (RFC 5321 4.1.1.4, 2.3.8: only
// CRLF.CRLF ends the data; bare CR and LF must not be guessed at).
var smuggleVariants = []struct{ name, s string }{
	{`\n.\n`, "\n.\n"},
	{`\n.\r\n`, "\n.\r\n"},
	{`\r.\r`, "\r.\r"},
	{`\r\n.\r`, "\r\n.\r"},
	{`\r\n.\n`, "\r\n.\n"},
	{`\r.\r\n`, "\r.\r\n"},
	{`\n.\r`, "\n.\r"},
	{`.\n at line start`, "\r\n.\n"},
	{`\r\n.\r\r\n`, "\r\n.\r\r\n"},
	{`\r\n.\r\r\n (no smuggled body break)`, "\r\n.\r\r\n\r\n"},
	{`\r\r\n.\r\r\n`, "\r\r\n.\r\r\n"},
	{`\n\n.\n\n`, "\n\n.\n\n"},
	{`\r\n\x00.\r\n`, "\r\n\x00.\r\n"},
	{`\r\n.\x00\r\n`, "\r\n.\x00\r\n"},
	{"bare CR inside a line", "\r\nab\rcd\r\n"},
	{"bare LF inside a line", "\r\nab\ncd\r\n"},
	{"NUL byte", "\r\nab\x00cd\r\n"},
	{"line of 1001 octets", "\r\n" + strings.Repeat("x", 1001) + "\r\n"},
	{"line of 5000 octets", "\r\n" + strings.Repeat("y", 5000) + "\r\n"},
	{`\r\n.\r\n with trailing bare LF`, "\r\n..\n.\n"},
	{"dot-CR-space", "\r\n.\r \r\n"},
}

// smuggle runs one DATA with variant v on an open transaction and reports the
// DATA reply and every reply after it (until QUIT's or the connection's end).
func smuggle(cl *client, head, v string) (string, []string) {
	if r := cl.cmd("DATA"); !strings.HasPrefix(r, "354") {
		return r, nil
	}
	cl.write(head + "body" + v + smuggled + "QUIT\r\n")
	rs := cl.rest(20 * time.Second)
	if len(rs) == 0 {
		return "(no reply)", nil
	}
	return rs[0], rs[1:]
}

func TestSmuggling(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, cfgOpts{sink: sink.Addr()}), daemonOpts())
	sub, bnc := d.Addr("submission.listen"), d.Addr("bounce.listen")

	// A real message gives a valid VERP recipient for the bounce listener.
	id := submit(t, sub, "real@dest.test")
	waitRcpt(t, d, id, 0, queue.StatusSent, 15*time.Second)
	m, _ := d.Store.Get(id)
	verp := m.Recipients[0].EnvelopeFrom

	tried, accepted, soft := 0, 0, 0
	for _, listener := range []string{"submission", "bounce"} {
		for _, v := range smuggleVariants {
			tried++
			var cl *client
			var head string
			if listener == "submission" {
				cl = mustDial(t, sub)
				cl.login(t)
				cl.cmd("MAIL FROM:<app@saas.test>")
				if r := cl.cmd("RCPT TO:<r@dest.test>"); !strings.HasPrefix(r, "250") {
					t.Fatalf("RCPT: %q", r)
				}
				head = "From: a@customer.test\r\nSubject: s\r\n\r\n"
			} else {
				cl = mustDial(t, bnc)
				cl.cmd("EHLO mx.remote.test")
				cl.cmd("MAIL FROM:<>")
				if r := cl.cmd("RCPT TO:<" + verp + ">"); !strings.HasPrefix(r, "250") {
					t.Fatalf("bounce RCPT %s: %q", verp, r)
				}
				head = "From: MAILER-DAEMON@mx.remote.test\r\nSubject: Undelivered Mail\r\n\r\n"
			}
			first, later := smuggle(cl, head, v.s)
			cl.close()
			bad := strings.HasPrefix(first, "2")
			for _, r := range later {
				if reQueued.MatchString(r) || strings.HasPrefix(r, "354") || strings.Contains(r, "report received") {
					bad = true
				}
			}
			switch {
			case bad:
				accepted++
				t.Errorf("%s, variant %s: DATA answered %q, then %q; want one 5xx", listener, v.name, first, later)
			case !strings.HasPrefix(first, "5"):
				soft++
				t.Errorf("%s, variant %s: DATA answered %q, then %q; want a 5xx refusal", listener, v.name, first, later)
			}
		}
	}
	ids, _ := d.Store.ByRecipient("victim@dest.test")
	time.Sleep(300 * time.Millisecond) // let the runner pick up anything that slipped through
	if len(ids) > 0 || sink.Count("victim@dest.test") > 0 {
		accepted++
		t.Errorf("the smuggled message was queued (%v) or delivered (%d times)", ids, sink.Count("victim@dest.test"))
	}
	if m, _ := d.Store.Get(id); m.Recipients[0].Status != queue.StatusSent {
		t.Errorf("smuggled bounces changed the real message: %s", m.Recipients[0].Status)
	}
	summary(t, "smuggling: %d variants, %d accepted (%d refused with a non-5xx reply)", tried, accepted, soft)
}
