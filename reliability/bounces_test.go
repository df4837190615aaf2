package reliability

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

func dsnFor(finalRcpt, origRcpt string) string {
	orig := ""
	if origRcpt != "" {
		orig = "Original-Recipient: rfc822;" + origRcpt + "\r\n"
	}
	return "From: MAILER-DAEMON@mx.dest.test\r\nTo: bounce@m.makeleaps.test\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n" +
		"--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\r\n" +
		orig + "Final-Recipient: rfc822; " + finalRcpt + "\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx2.dest.test\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 <" + finalRcpt + ">: Recipient address rejected: User unknown\r\n\r\n" +
		"--b1--\r\n"
}

func arfFor(rcpt string) string {
	return "From: abuse@isp.test\r\nTo: bounce@m.makeleaps.test\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b2\"\r\n\r\n" +
		"--b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\r\n" +
		"--b2\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: " + rcpt + "\r\n\r\n" +
		"--b2\r\nContent-Type: message/rfc822\r\n\r\nFrom: bounce@makeleaps.test\r\nTo: " + rcpt + "\r\nSubject: x\r\n\r\nx\r\n\r\n--b2--\r\n"
}

// TestForgedBounces sends bounces that must change nothing: a forged or
// mangled VERP address, the VERP of a deleted message, a report about
// another recipient, a complaint about another recipient.
func TestForgedBounces(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, cfgOpts{sink: sink.Addr()}), daemonOpts())
	sub, bnc := d.Addr("submission.listen"), d.Addr("bounce.listen")
	id := submit(t, sub, "taro@dest.test", "jiro@dest.test")
	gone := submit(t, sub, "gone@dest.test")
	for i := range 2 {
		waitRcpt(t, d, id, i, queue.StatusSent, 15*time.Second)
	}
	waitRcpt(t, d, gone, 0, queue.StatusSent, 15*time.Second)
	m, _ := d.Store.Get(id)
	verp0, verp1 := m.Recipients[0].EnvelopeFrom, m.Recipients[1].EnvelopeFrom
	mg, _ := d.Store.Get(gone)
	goneVERP := mg.Recipients[0].EnvelopeFrom
	if err := d.Store.Delete(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	at := strings.IndexByte(verp0, '@')
	local, host := verp0[:at], verp0[at:]
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == '0' {
			b[i] = '1'
		} else {
			b[i] = '0'
		}
		return string(b)
	}
	// The token is bounce-md_ + 16 id + 3 index + 8 MAC characters.
	const pre = len("bounce-md_")
	cases := []struct {
		name, rcpt, body string
	}{
		{"wrong HMAC (last character)", flip(local, len(local)-1) + host, dsnFor("taro@dest.test", "")},
		{"wrong HMAC (first MAC character)", flip(local, pre+19) + host, dsnFor("taro@dest.test", "")},
		{"other recipient index, same MAC", flip(local, pre+18) + host, dsnFor("jiro@dest.test", "")},
		{"other message id, same MAC", flip(local, pre+5) + host, dsnFor("taro@dest.test", "")},
		{"truncated VERP (one character)", local[:len(local)-1] + host, dsnFor("taro@dest.test", "")},
		{"truncated VERP (no MAC)", local[:pre+19] + host, dsnFor("taro@dest.test", "")},
		{"VERP with extra character", local + "0" + host, dsnFor("taro@dest.test", "")},
		{"VERP without prefix", local[pre:] + host, dsnFor("taro@dest.test", "")},
		{"VERP of a deleted message", goneVERP, dsnFor("gone@dest.test", "")},
		{"VERP on a foreign host", local + "@dest.test", dsnFor("taro@dest.test", "")},
		{"DSN about another recipient of the message", verp0, dsnFor("jiro@dest.test", "")},
		{"right VERP, different Final-Recipient", verp0, dsnFor("someone@else.test", "")},
		{"right VERP, different Final- and Original-Recipient", verp1, dsnFor("someone@else.test", "other@else.test")},
		{"complaint about another recipient", verp0, arfFor("jiro@dest.test")},
		{"complaint about an outsider", verp1, arfFor("ceo@bigcorp.test")},
	}
	applied := 0
	for _, tc := range cases {
		cl := mustDial(t, bnc)
		cl.cmd("EHLO mx.dest.test")
		cl.cmd("MAIL FROM:<>")
		rr := cl.cmd("RCPT TO:<" + tc.rcpt + ">")
		if strings.HasPrefix(rr, "2") {
			if r := cl.cmd("DATA"); strings.HasPrefix(r, "354") {
				cl.cmd(tc.body + ".\r\n")
			}
		}
		cl.cmd("QUIT")
		cl.close()
		// Statuses and the suppression list must be as before.
		m, _ := d.Store.Get(id)
		changed := false
		for _, r := range m.Recipients {
			if r.Status != queue.StatusSent || len(r.Events) != 2 {
				changed = true
				t.Errorf("%s: recipient %s is %s with %d events (last %+v)", tc.name, r.Address, r.Status, len(r.Events), r.Last)
			}
		}
		if n, _ := d.Suppress.Count(); n != 0 {
			changed = true
			t.Errorf("%s: suppression list has %d entries", tc.name, n)
		}
		if changed {
			applied++
		}
	}
	if ids, _ := d.Store.ByRecipient("gone@dest.test"); len(ids) != 0 {
		t.Errorf("a bounce for a deleted message brought it back: %v", ids)
	}
	// Control: the genuine report does apply, so the checks above can fail.
	cl := mustDial(t, bnc)
	cl.cmd("EHLO mx.dest.test")
	cl.cmd("MAIL FROM:<>")
	cl.cmd("RCPT TO:<" + verp0 + ">")
	cl.cmd("DATA")
	cl.cmd(dsnFor("taro@dest.test", "") + ".\r\n")
	cl.close()
	waitRcpt(t, d, id, 0, queue.StatusBounced, 10*time.Second)
	summary(t, "forged bounces: %d tried, %d applied", len(cases), applied)
}
