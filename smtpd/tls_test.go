package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestCommandBudgetOverTLS: the command budget before AUTH also holds on
// encrypted sessions, where the guard under TLS counts records (implicit
// TLS, and after STARTTLS); a session that authenticates is not cut off.
func TestCommandBudgetOverTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile := testnet.WriteCert(t, t.TempDir(), "s", "hermod.test")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Hostname: "hermod.test", MaxCommandsBeforeAuth: 6, Submitter: &recorder{}, Logger: slog.New(slog.DiscardHandler),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Users:     []User{{Name: "app", PasswordHash: testHash(t, bcrypt.MinCost), Accounts: []string{"*"}}}})
	plainL, _ := net.Listen("tcp", "127.0.0.1:0")
	tlsL, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(plainL, false)
	go s.Serve(tlsL, true)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		plainL.Close()
		tlsL.Close()
	})
	tc := &tls.Config{InsecureSkipVerify: true}

	// noops sends NOOPs one at a time and reports how many got 250.
	noops := func(cl *client, n int) int {
		ok := 0
		for range n {
			if r := cl.cmd("NOOP"); !strings.HasPrefix(r, "250") {
				break
			}
			ok++
		}
		return ok
	}
	implicit := func() *client {
		c, err := tls.Dial("tcp", tlsL.Addr().String(), tc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		cl := &client{c: c, r: bufio.NewReader(c)}
		cl.reply()
		return cl
	}
	cl := implicit()
	cl.cmd("EHLO c.test")
	if n := noops(cl, 30); n > 6 {
		t.Errorf("implicit TLS: %d NOOPs answered before AUTH, budget 6", n)
	}

	cl = dialT(t, plainL.Addr().String())
	cl.cmd("EHLO c.test")
	if r := cl.cmd("STARTTLS"); !strings.HasPrefix(r, "220") {
		t.Fatalf("STARTTLS: %q", r)
	}
	tcn := tls.Client(cl.c, tc)
	if err := tcn.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	cl = &client{c: tcn, r: bufio.NewReader(tcn)}
	cl.cmd("EHLO c.test")
	if n := noops(cl, 30); n > 6 {
		t.Errorf("after STARTTLS: %d NOOPs answered before AUTH, budget 6", n)
	}

	cl = implicit()
	cl.cmd("EHLO c.test")
	if r := cl.cmd(plainAuth("app", testPass)); !strings.HasPrefix(r, "235") {
		t.Fatalf("AUTH over TLS: %q", r)
	}
	if n := noops(cl, 30); n != 30 {
		t.Errorf("after AUTH over TLS: %d of 30 NOOPs answered", n)
	}
}
