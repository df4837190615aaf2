package relay

import (
	"net"
	"sync"
	"time"
)

// conn is the net.Conn handed to the go-smtp client. go-smtp sets its own
// per-command deadlines (now + CommandTimeout); conn caps them so that the
// greeting shares the connect budget (Options.ConnectTimeout) and the DATA
// transfer plus its reply share Options.DataTimeout. It can also replay a
// synthetic greeting, so that a client created after STARTTLS (go-smtp
// expects to read a 220 first) starts in the right state.
type conn struct {
	net.Conn

	mu         sync.Mutex
	prefix     []byte    // bytes returned by Read before the network's
	wrote      bool      // anything written yet (the greeting is over)
	greetLimit time.Time // deadline cap until the first write
	limit      time.Time // deadline cap set by setLimit
	want       time.Time // the deadline last asked for by the client
}

func newConn(c net.Conn) *conn { return &conn{Conn: c} }

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if !c.wrote {
		c.wrote = true
		if !c.greetLimit.IsZero() {
			_ = c.apply()
		}
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want = t
	return c.apply()
}

// setLimit caps every deadline at t (zero removes the cap) and applies it now.
func (c *conn) setLimit(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit = t
	_ = c.apply()
}

// greeted reports whether the peer's greeting was accepted, that is whether
// the client has sent anything.
func (c *conn) greeted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wrote
}

func (c *conn) apply() error {
	t := c.want
	caps := []time.Time{c.limit}
	if !c.wrote && !c.greetLimit.IsZero() {
		// The greeting has the connect budget, even when the per-command
		// timeout go-smtp asks for is shorter.
		t = c.greetLimit
	}
	for _, l := range caps {
		if !l.IsZero() && (t.IsZero() || l.Before(t)) {
			t = l
		}
	}
	return c.Conn.SetDeadline(t)
}
