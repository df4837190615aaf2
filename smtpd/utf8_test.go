package smtpd

import (
	"strings"
	"testing"
)

// TestSMTPUTF8 (RFC 6531): the extension is offered; non-ASCII addresses
// need it on MAIL FROM; invalid UTF-8 and control characters are refused
// with it too; accepted addresses are normalised once (domain to lower-case
// A-labels, local part as given).
func TestSMTPUTF8(t *testing.T) {
	t.Parallel()
	_, addr, rec, _ := startServer(t, Options{})
	cl := dialT(t, addr)
	if r := cl.cmd("EHLO c.test"); !strings.Contains(r, "SMTPUTF8") {
		t.Fatalf("EHLO does not offer SMTPUTF8:\n%s", r)
	}
	cl.cmd(plainAuth("app", testPass))

	for _, tc := range []struct{ mail, rcpt, want string }{
		{"MAIL FROM:<app@example.com>", "RCPT TO:<太郎@例え.jp>", "553 5.6.7"},
		{"MAIL FROM:<app@example.com>", "RCPT TO:<taro@例え.jp>", "553 5.6.7"},
		{"MAIL FROM:<app@example.com> SMTPUTF8", "RCPT TO:<t\xff\xfe@example.jp>", "553 5.1.3"},
		{"MAIL FROM:<app@example.com> SMTPUTF8", "RCPT TO:<a\x01b@example.com>", "553 5.1.3"},
		{"MAIL FROM:<app@example.com> SMTPUTF8", "RCPT TO:<a\u0085b@example.com>", "553 5.1.3"},
		{"MAIL FROM:<app@example.com> SMTPUTF8", "RCPT TO:<太郎@例え.jp>", "250"},
	} {
		cl.cmd("RSET")
		if r := cl.cmd(tc.mail); !strings.HasPrefix(r, "250") {
			t.Fatalf("%s: %q", tc.mail, r)
		}
		if r := cl.cmd(tc.rcpt); !strings.HasPrefix(r, tc.want) {
			t.Errorf("%q after %q: %q, want %s", tc.rcpt, tc.mail, r, tc.want)
		}
	}
	if r := cl.cmd("MAIL FROM:<送信@例え.jp>"); !strings.HasPrefix(r, "553 5.6.7") {
		t.Errorf("non-ASCII MAIL FROM without SMTPUTF8: %q, want 553 5.6.7", r)
	}

	cl.cmd("RSET")
	cl.cmd("MAIL FROM:<App@Example.COM> SMTPUTF8")
	for _, rc := range []string{"太郎@例え.jp", "太郎@例え.JP", "Taro@EXAMPLE.net", "taro@example.net"} {
		if r := cl.cmd("RCPT TO:<" + rc + ">"); !strings.HasPrefix(r, "250") {
			t.Fatalf("RCPT %s: %q", rc, r)
		}
	}
	cl.cmd("DATA")
	if r := cl.cmd("Subject: utf8\r\n\r\nこんにちは\r\n."); !strings.HasPrefix(r, "250") {
		t.Fatalf("DATA: %q", r)
	}
	sub := rec.last()
	if sub == nil || !sub.SMTPUTF8 {
		t.Fatalf("submission %+v: SMTPUTF8 not recorded", sub)
	}
	if sub.MailFrom != "App@example.com" {
		t.Errorf("MailFrom %q, want App@example.com", sub.MailFrom)
	}
	want := []string{"太郎@xn--r8jz45g.jp", "Taro@example.net", "taro@example.net"}
	if strings.Join(sub.Rcpts, " ") != strings.Join(want, " ") {
		t.Errorf("Rcpts %q, want %q (normalised, the duplicate domain spelling folded)", sub.Rcpts, want)
	}
}
