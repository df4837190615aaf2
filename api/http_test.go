package api_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/api"
)

// serveAPI serves handler with NewHTTPServer on LimitListener, like the daemon.
func serveAPI(t *testing.T, h http.Handler, o api.HTTPOptions) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewHTTPServer(h, o)
	go srv.Serve(api.LimitListener(l, o))
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// rawGet sends one request on c and returns the status line and whether
// the server then closed the connection (within d).
func rawGet(t *testing.T, c net.Conn, r *bufio.Reader, path, token string, d time.Duration) (string, bool) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	auth := ""
	if token != "" {
		auth = "Authorization: Bearer " + token + "\r\n"
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, auth)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(d))
	_, err = r.ReadByte()
	ne, isNet := err.(net.Error)
	return resp.Status, err != nil && !(isNet && ne.Timeout())
}

// TestAPIClosesAfter401: a request without the token is answered 401 and
// the connection is closed; with the token it is kept alive.
func TestAPIClosesAfter401(t *testing.T) {
	e := newAPI(t)
	addr := serveAPI(t, api.New(api.Options{Token: testToken, Queue: e.store}), api.HTTPOptions{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, closed := rawGet(t, c, bufio.NewReader(c), "/v1/queue", "wrong", time.Second)
	if !strings.HasPrefix(st, "401") || !closed {
		t.Fatalf("wrong token: %s, closed %v; want 401 and closed", st, closed)
	}
	c2, _ := net.Dial("tcp", addr)
	defer c2.Close()
	st, closed = rawGet(t, c2, bufio.NewReader(c2), "/v1/queue", testToken, 300*time.Millisecond)
	if !strings.HasPrefix(st, "200") || closed {
		t.Fatalf("right token: %s, closed %v; want 200 and kept alive", st, closed)
	}
}

// TestAPIIdleAndHeaderTimeouts: an idle keep-alive connection and one
// that never sends a request are closed.
func TestAPIIdleAndHeaderTimeouts(t *testing.T) {
	e := newAPI(t)
	addr := serveAPI(t, api.New(api.Options{Token: testToken, Queue: e.store}),
		api.HTTPOptions{IdleTimeout: 300 * time.Millisecond, ReadHeaderTimeout: 300 * time.Millisecond})
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	st, closed := rawGet(t, c, bufio.NewReader(c), "/v1/queue", testToken, 3*time.Second)
	if !strings.HasPrefix(st, "200") || !closed {
		t.Fatalf("idle keep-alive: %s, closed within 3s %v; want closed after the 300ms idle timeout", st, closed)
	}
	silent, _ := net.Dial("tcp", addr)
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("silent connection: %v, want closed by the server", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestAPIConnectionCaps: beyond the per-address cap a connection gets 503
// and is closed; the connections held stay served.
func TestAPIConnectionCaps(t *testing.T) {
	e := newAPI(t)
	addr := serveAPI(t, api.New(api.Options{Token: testToken, Queue: e.store}), api.HTTPOptions{MaxConnections: 10, MaxConnectionsPerIP: 4})
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	for range 3 {
		c, _ := net.Dial("tcp", addr)
		st, closed := rawGet(t, c, bufio.NewReader(c), "/v1/queue", testToken, 2*time.Second)
		c.Close()
		if !strings.HasPrefix(st, "503") || !closed {
			t.Fatalf("5th connection from one address: %s closed %v, want 503 and closed", st, closed)
		}
	}
	// From another loopback address there is room up to the total.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, _ := rawGet(t, c, bufio.NewReader(c), "/v1/queue", testToken, 100*time.Millisecond); !strings.HasPrefix(st, "200") {
		t.Fatalf("another address: %s", st)
	}
	if st, _ := rawGet(t, held[0], bufio.NewReader(held[0]), "/v1/queue", testToken, 100*time.Millisecond); !strings.HasPrefix(st, "200") {
		t.Fatalf("held connection: %s", st)
	}
}

// TestAPILongPollBounds: a wait above MaxWait is refused; beyond
// MaxLongPolls open waits another gets 429, a plain poll still works.
func TestAPILongPollBounds(t *testing.T) {
	e := newAPI(t)
	h := api.New(api.Options{Token: testToken, Queue: e.store, MaxWait: 10 * time.Second, MaxLongPolls: 2})
	addr := serveAPI(t, h, api.HTTPOptions{MaxWait: 10 * time.Second})
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return -1, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/v1/events?tail=1&wait=11s"); code != 400 {
		t.Fatalf("wait=11s with MaxWait 10s: %d %s", code, body)
	}
	done := make(chan int, 2)
	for range 2 {
		go func() {
			code := 429
			for end := time.Now().Add(10 * time.Second); code == 429 && time.Now().Before(end); {
				code, _ = get("/v1/events?tail=1&wait=5s") // a 429 here met a probe's slot: again
			}
			done <- code
		}()
	}
	// Probe with a 1ms wait until the two are open (a probe that comes
	// first takes a slot for 1ms only, and the waiter tries again).
	deadline := time.Now().Add(10 * time.Second)
	var code int
	for time.Now().Before(deadline) {
		if code, _ = get("/v1/events?tail=1&wait=1ms"); code == 429 {
			break
		}
	}
	if code != 429 {
		t.Fatalf("long-poll while two are open: %d, want 429", code)
	}
	if code, body := get("/v1/events?tail=1"); code != 200 {
		t.Fatalf("plain poll: %d %s", code, body)
	}
	<-done
	<-done
}
