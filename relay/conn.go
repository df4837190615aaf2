package relay

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Limits on one reply of a remote server. A reply is everything the server
// sends between two of our writes (a command, or a chunk of the message):
// go-smtp neither pipelines nor reads while it writes, so the bytes a server
// sends before our next command all belong to the reply we are waiting for
// (or are junk it had no business sending). Without these bounds go-smtp's
// net/textproto reader accumulates an endless "250-" reply in memory.
const (
	// MaxReplyLineBytes bounds one reply line, CRLF included. RFC 5321
	// 4.5.3.1.5 allows 512; go-smtp's own reader stops at 2000, and this
	// limit is checked first so the failure is described here.
	MaxReplyLineBytes = 2000
	// MaxReplyLines bounds the lines of one reply (EHLO replies have ~15).
	MaxReplyLines = 128
	// MaxReplyBytes bounds the bytes of one reply.
	MaxReplyBytes = 32 << 10
	// maxFirstLine is how much of a reply's first line is kept (loop check).
	maxFirstLine = 512
)

// ReplyLimitError is returned by reads once a server's reply exceeds one of
// the reply limits; the connection is then unusable and is closed.
type ReplyLimitError struct {
	What  string // "line", "lines" or "bytes"
	Limit int
}

func (e *ReplyLimitError) Error() string {
	switch e.What {
	case "line":
		return fmt.Sprintf("reply line longer than %d bytes", e.Limit)
	case "lines":
		return fmt.Sprintf("reply longer than %d lines", e.Limit)
	}
	return fmt.Sprintf("reply longer than %d bytes", e.Limit)
}

// IsReplyLimit reports whether err is (or wraps) a *ReplyLimitError.
func IsReplyLimit(err error) bool {
	var le *ReplyLimitError
	return errors.As(err, &le)
}

// conn is the net.Conn handed to the go-smtp client. go-smtp sets its own
// per-command deadlines (now + CommandTimeout); conn caps them so that the
// greeting shares the connect budget (Options.ConnectTimeout) and the DATA
// transfer plus its reply share Options.DataTimeout. It bounds every reply
// (MaxReplyLineBytes, MaxReplyLines, MaxReplyBytes), budget reset on each
// write, and keeps the first line of the greeting and of the latest reply
// for the mail loop check. It can also replay a synthetic greeting, so that
// a client created after STARTTLS (go-smtp expects to read a 220 first)
// starts in the right state.
type conn struct {
	net.Conn

	mu         sync.Mutex
	prefix     []byte    // bytes returned by Read before the network's
	wrote      bool      // anything written yet (the greeting is over)
	greetLimit time.Time // deadline cap until the first write
	limit      time.Time // deadline cap set by setLimit
	want       time.Time // the deadline last asked for by the client

	// The reply being read: counted since the last write.
	replyBytes int
	replyLines int // complete lines
	lineBytes  int // bytes of the current, unterminated line
	first      []byte
	firstDone  bool
	greeting   string // first line of the greeting (before the first write)
	overrun    error  // sticky *ReplyLimitError
}

func newConn(c net.Conn) *conn { return &conn{Conn: c} }

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.overrun != nil {
		err := c.overrun
		c.mu.Unlock()
		return 0, err
	}
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		err := c.count(p[:n])
		c.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	lerr := c.count(p[:n])
	c.mu.Unlock()
	if lerr != nil {
		// The rest of the reply is not wanted: stop the sender now.
		_ = c.Conn.Close()
		return 0, lerr
	}
	return n, err
}

// count accounts b to the current reply; c.mu is held. It returns (and
// remembers) a *ReplyLimitError when a limit is exceeded.
func (c *conn) count(b []byte) error {
	for _, ch := range b {
		c.replyBytes++
		c.lineBytes++
		if !c.firstDone {
			if ch == '\n' || len(c.first) >= maxFirstLine {
				c.firstDone = true
			} else if ch != '\r' {
				c.first = append(c.first, ch)
			}
		}
		switch {
		case c.lineBytes > MaxReplyLineBytes:
			c.overrun = &ReplyLimitError{What: "line", Limit: MaxReplyLineBytes}
		case c.replyBytes > MaxReplyBytes:
			c.overrun = &ReplyLimitError{What: "bytes", Limit: MaxReplyBytes}
		case ch == '\n':
			c.lineBytes = 0
			c.replyLines++
			if c.replyLines > MaxReplyLines {
				c.overrun = &ReplyLimitError{What: "lines", Limit: MaxReplyLines}
			}
		}
		if c.overrun != nil {
			return c.overrun
		}
	}
	return nil
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.overrun != nil {
		// The reply that overran may have looked complete to go-smtp (a
		// cut-off line reads as a whole one): nothing more is sent.
		err := c.overrun
		c.mu.Unlock()
		return 0, err
	}
	if !c.wrote {
		c.wrote = true
		c.greeting = string(c.first)
		if !c.greetLimit.IsZero() {
			_ = c.apply()
		}
	}
	// A new command: a new reply budget.
	c.replyBytes, c.replyLines, c.lineBytes = 0, 0, 0
	c.first, c.firstDone = c.first[:0], false
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// check returns err, or, if err is nil, the reply limit error of a reply
// that overran: bufio hands a line cut off by the limit to net/textproto
// as if it were complete, so "250 xxx…" without an end would otherwise
// read as a success.
func (c *conn) check(err error) error {
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.overrun
}

// greetingLine returns the first line of the server's greeting ("220 name
// ESMTP"), once something has been written.
func (c *conn) greetingLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.greeting
}

// replyLine returns the first line of the reply to the latest write.
func (c *conn) replyLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.first)
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
