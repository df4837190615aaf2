package bench

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadOptions is the workload: what every session submits.
type loadOptions struct {
	Addr           string
	User, Password string // empty user: no AUTH (Postfix, mynetworks)
	Messages       int
	Sessions       int
	Size           int
	Rcpts          int
	// Domains spreads recipients over this many domains (dest<k>.bench.test).
	Domains int
	// Rate paces the load at this many messages per second in all (an open
	// loop, as applications send); 0 sends as fast as the sessions can.
	Rate float64
}

// loadResult is what the load generator measured.
type loadResult struct {
	Start, End time.Time // first connection, last 250
	Accepted   int       // messages answered 250
	Rejected   int       // messages answered otherwise
	Errors     []string  // the first few failures, verbatim
	Latencies  []time.Duration
	// Acks maps the key the sink will report (queue id for hermod, the
	// bench's envelope sender local part otherwise) to the time of the 250.
	Acks map[string]time.Time
}

var reQueuedAs = regexp.MustCompile(`(?i)queued as ([0-9a-z]+(?:-[0-9a-z]+)?)`)

// runLoad drives opts.Sessions SMTP sessions that together submit
// opts.Messages messages, each session reusing its connection. It stops when
// every message was tried or ctx ends. keyByQueueID says whether the sink
// will report hermod queue ids (VERP) rather than the envelope sender.
func runLoad(ctx context.Context, opts loadOptions, keyByQueueID bool) *loadResult {
	res := &loadResult{Acks: make(map[string]time.Time, opts.Messages), Latencies: make([]time.Duration, 0, opts.Messages)}
	g := &generator{opts: opts, keyByQueueID: keyByQueueID, res: res}
	res.Start = time.Now()
	var wg sync.WaitGroup
	for c := 0; c < opts.Sessions; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for ctx.Err() == nil && g.next.Load() < int64(opts.Messages) {
				// A broken session is replaced, as an application would,
				// after a short pause.
				if err := g.session(ctx, c); err != nil {
					g.fail(0, err.Error())
					select {
					case <-ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}(c)
	}
	wg.Wait()
	return res
}

type generator struct {
	opts         loadOptions
	keyByQueueID bool
	next         atomic.Int64

	mu  sync.Mutex
	res *loadResult
}

func (g *generator) record(key string, lat time.Duration, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.res.Accepted++
	g.res.Latencies = append(g.res.Latencies, lat)
	g.res.Acks[key] = at
	if at.After(g.res.End) {
		g.res.End = at
	}
}

// fail counts n messages not accepted and keeps the first few reasons.
func (g *generator) fail(n int, what string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.res.Rejected += n
	if what != "" && len(g.res.Errors) < 5 {
		g.res.Errors = append(g.res.Errors, what)
	}
}

// errReply is an SMTP reply other than the one expected.
type errReply struct{ cmd, line string }

func (e *errReply) Error() string { return fmt.Sprintf("%s: %s", e.cmd, e.line) }

// session runs one SMTP connection: greeting, EHLO, AUTH PLAIN, then
// messages until none are left. A rejected message is counted and the
// session goes on after RSET; a broken connection returns an error (the
// message in progress is counted as failed).
func (g *generator) session(ctx context.Context, c int) error {
	opts := g.opts
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	cl := &client{conn: conn, r: bufio.NewReaderSize(conn, 4096), w: bufio.NewWriterSize(conn, 64<<10)}
	if err := cl.expect("greeting", "", 220); err != nil {
		return err
	}
	if err := cl.expect("EHLO", "EHLO load.bench.test", 250); err != nil {
		return err
	}
	if opts.User != "" {
		tok := base64.StdEncoding.EncodeToString([]byte("\x00" + opts.User + "\x00" + opts.Password))
		if err := cl.expect("AUTH", "AUTH PLAIN "+tok, 235); err != nil {
			return err
		}
	}
	for {
		i := g.next.Add(1) - 1
		if i >= int64(opts.Messages) || ctx.Err() != nil {
			cl.send("QUIT")
			return nil
		}
		if opts.Rate > 0 {
			due := g.res.Start.Add(time.Duration(float64(i) / opts.Rate * float64(time.Second)))
			select {
			case <-ctx.Done():
			case <-time.After(time.Until(due)):
			}
		}
		err := g.message(cl, c, i)
		var rej *errReply
		switch {
		case err == nil:
		case errors.As(err, &rej):
			g.fail(1, err.Error())
			if cl.expect("RSET", "RSET", 250) != nil {
				return err
			}
		default:
			g.fail(1, "")
			return err
		}
	}
}

// message submits message number i on the session.
func (g *generator) message(cl *client, c int, i int64) error {
	opts := g.opts
	local := fmt.Sprintf("bench-%d", i)
	if err := cl.expect("MAIL", "MAIL FROM:<"+local+"@bench.test>", 250); err != nil {
		return err
	}
	rcpts := make([]string, opts.Rcpts)
	for j := range rcpts {
		rcpts[j] = fmt.Sprintf("r%d-%d@dest%d.bench.test", i, j, (int(i)*opts.Rcpts+j)%max(opts.Domains, 1))
		if err := cl.expect("RCPT", "RCPT TO:<"+rcpts[j]+">", 250); err != nil {
			return err
		}
	}
	if err := cl.expect("DATA", "DATA", 354); err != nil {
		return err
	}
	hdr := fmt.Sprintf("From: \"Bench App\" <app@bench.test>\r\nTo: <%s>\r\nSubject: bench message %d\r\n"+
		"Date: %s\r\nMessage-ID: <%s.%d@load.bench.test>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nX-Hermod-Ref: %s\r\n\r\n",
		rcpts[0], i, time.Now().Format(time.RFC1123Z), local, c, local)
	cl.w.WriteString(hdr)
	cl.w.WriteString(makeBody(opts.Size - len(hdr)))
	cl.w.WriteString(".\r\n")
	if err := cl.w.Flush(); err != nil {
		return fmt.Errorf("DATA: write: %w", err)
	}
	t0 := time.Now() // end of DATA
	line, code, err := cl.reply()
	t1 := time.Now()
	if err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	if code != 250 {
		return &errReply{"end of DATA", line}
	}
	key := local
	if g.keyByQueueID {
		m := reQueuedAs.FindStringSubmatch(line)
		if m == nil {
			return &errReply{"end of DATA (no queue id)", line}
		}
		key = m[1]
	}
	g.record(key, t1.Sub(t0), t1)
	return nil
}

// client is the bench's minimal SMTP client: no pipelining, so each reply
// time is exact.
type client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func (c *client) send(line string) error {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
	return c.w.Flush()
}

// reply reads a (possibly multi-line) reply and returns its last line and code.
func (c *client) reply() (string, int, error) {
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return "", 0, err
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 3 {
			return l, 0, fmt.Errorf("malformed reply %q", l)
		}
		if len(l) > 3 && l[3] == '-' {
			continue
		}
		var code int
		fmt.Sscanf(l[:3], "%d", &code)
		return l, code, nil
	}
}

func (c *client) expect(what, line string, want int) error {
	if line != "" {
		if err := c.send(line); err != nil {
			return fmt.Errorf("%s: write: %w", what, err)
		}
	}
	l, code, err := c.reply()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if code != want {
		return &errReply{what, l}
	}
	return nil
}

// makeBody returns a text body of about size bytes, CRLF lines of 76
// characters, none starting with a dot.
func makeBody(size int) string {
	const line = "The quick brown fox jumps over the lazy dog; 0123456789 bench filler text.\r\n"
	var b strings.Builder
	b.Grow(size + len(line))
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	if rest := size - b.Len(); rest > 2 {
		b.WriteString(strings.Repeat("x", rest-2))
		b.WriteString("\r\n")
	}
	return b.String()
}
