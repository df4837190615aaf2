package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// recorder is a Submitter that keeps what it is handed.
type recorder struct {
	mu   sync.Mutex
	subs []*Submission
}

func (r *recorder) Submit(ctx context.Context, sub *Submission) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs = append(r.subs, sub)
	return "0123456789abcdef", nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.subs)
}

func (r *recorder) last() *Submission {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.subs) == 0 {
		return nil
	}
	return r.subs[len(r.subs)-1]
}

// logBuf is a concurrency-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const testPass = "secret-pass"

// testHash is computed once per test binary run at bcrypt.MinCost.
func testHash(t testing.TB, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(testPass), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// startServer runs a submission server on 127.0.0.1:0 with user "app".
func startServer(t testing.TB, opts Options) (*Server, string, *recorder, *logBuf) {
	t.Helper()
	rec := &recorder{}
	lb := &logBuf{}
	if opts.Hostname == "" {
		opts.Hostname = "hermod.test"
	}
	if opts.Users == nil {
		opts.Users = []User{{Name: "app", PasswordHash: testHash(t, bcrypt.MinCost), Accounts: []string{"*"}}}
	}
	opts.Submitter = rec
	opts.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		l.Close()
		<-done
	})
	return s, l.Addr().String(), rec, lb
}

// client is a line-level SMTP client for tests.
type client struct {
	c net.Conn
	r *bufio.Reader
}

// dialFrom connects from local address from ("" for any) and reads the greeting.
func dialFrom(t testing.TB, addr, from string) (*client, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	cl := &client{c: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	g, _ := cl.reply()
	return cl, g
}

func dialT(t testing.TB, addr string) *client {
	t.Helper()
	cl, g := dialFrom(t, addr, "")
	if !strings.HasPrefix(g, "220") {
		t.Fatalf("greeting %q", g)
	}
	return cl
}

// reply reads one (possibly multi-line) reply and returns its lines joined by "\n".
func (cl *client) reply() (string, error) {
	var lines []string
	for {
		line, err := cl.r.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if err != nil {
			if line != "" {
				lines = append(lines, line)
			}
			return strings.Join(lines, "\n"), err
		}
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

func (cl *client) cmd(s string) string {
	if _, err := io.WriteString(cl.c, s+"\r\n"); err != nil {
		return "write: " + err.Error()
	}
	r, err := cl.reply()
	if err != nil && r == "" {
		return "read: " + err.Error()
	}
	return r
}

func plainAuth(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

// login sends EHLO and a successful AUTH.
func (cl *client) login(t testing.TB) {
	t.Helper()
	if r := cl.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO: %q", r)
	}
	if r := cl.cmd(plainAuth("app", testPass)); !strings.HasPrefix(r, "235") {
		t.Fatalf("AUTH: %q", r)
	}
}

// closedWithin reports whether the server closes the connection within d
// (reading and dropping whatever it sends), and the last line it sent.
func (cl *client) closedWithin(d time.Duration) (bool, string) {
	cl.c.SetReadDeadline(time.Now().Add(d))
	last := ""
	for {
		line, err := cl.r.ReadString('\n')
		if l := strings.TrimRight(line, "\r\n"); l != "" {
			last = l
		}
		if err != nil {
			ne, ok := err.(net.Error)
			return !(ok && ne.Timeout()), last
		}
	}
}
