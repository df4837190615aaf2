package daemon

import (
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/internal/testnet"
)

func sendOver(t *testing.T, c *smtp.Client, auth sasl.Client, rcpt string) {
	t.Helper()
	if err := c.Auth(auth); err != nil {
		t.Fatalf("auth: %v", err)
	}
	if err := c.SendMail("app@saas.test", []string{rcpt}, strings.NewReader("From: a@customer.test\r\nSubject: tls\r\n\r\nover TLS\r\n")); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.Quit()
}

func TestSTARTTLSAndImplicitTLS(t *testing.T) {
	sink := testnet.NewSink(t)
	dir := t.TempDir()
	cfg := testConfig(t, dir, sink.Addr())
	cfg.Submission.TLSCert, cfg.Submission.TLSKey = testnet.WriteCert(t, dir, "submission", "hermod.test")
	cfg.Submission.ListenTLS = "127.0.0.1:0"
	d := startDaemon(t, cfg)
	tc := &tls.Config{InsecureSkipVerify: true, ServerName: "hermod.test"}

	// STARTTLS, then AUTH LOGIN.
	c, err := smtp.DialStartTLS(d.Addr("submission.listen"), tc)
	if err != nil {
		t.Fatal(err)
	}
	sendOver(t, c, sasl.NewLoginClient("app", "secret-pass"), "starttls@dest.test")
	m, err := sink.Wait("starttls@dest.test", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), "with ESMTPSA") {
		t.Errorf("Received line does not record TLS:\n%s", m.Data)
	}

	// Implicit TLS (RFC 8314), AUTH PLAIN.
	c, err = smtp.DialTLS(d.Addr("submission.listen_tls"), tc)
	if err != nil {
		t.Fatal(err)
	}
	sendOver(t, c, sasl.NewPlainClient("", "app", "secret-pass"), "implicit@dest.test")
	if _, err := sink.Wait("implicit@dest.test", 15*time.Second); err != nil {
		t.Fatal(err)
	}

	// The plain listener offers STARTTLS.
	conn, err := netDial(d.Addr("submission.listen"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := newReplyReader(conn)
	rd.next(t)
	io.WriteString(conn, "EHLO c.test\r\n")
	var ehlo []string
	for {
		line, _ := rd.r.ReadString('\n')
		ehlo = append(ehlo, strings.TrimSpace(line))
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	if !strings.Contains(strings.Join(ehlo, "\n"), "STARTTLS") {
		t.Errorf("EHLO does not offer STARTTLS: %q", ehlo)
	}
}
