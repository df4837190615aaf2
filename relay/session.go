package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/vocab"
)

// quitTimeout bounds the QUIT sent when an idle connection is dropped.
const quitTimeout = 2 * time.Second

var errClosed = errors.New("relay: closed")

// envelope is one delivery's data.
type envelope struct {
	from, to string
	domain   string // the recipient's domain, A-labels (for the loop message)
	body     Message
	needUTF8 bool // the envelope itself is non-ASCII
	wantUTF8 bool // envelope or header non-ASCII: ask SMTPUTF8 when offered
}

// session is one established SMTP connection, after EHLO (and STARTTLS).
type session struct {
	c         *smtp.Client
	conn      *conn    // what c reads and writes
	raw       net.Conn // the TCP connection
	host      string
	addr      string
	tls       bool
	tlsVer    string // tls.VersionName of the session, "" in plain text
	tlsCipher string // tls.CipherSuiteName of the session
	idleSince time.Time
}

func (s *session) close() { _ = s.raw.Close() }

// quit says goodbye politely, bounded by quitTimeout, and closes.
func (s *session) quit() {
	s.conn.setLimit(time.Now().Add(quitTimeout))
	_ = s.c.Quit()
	s.close()
}

// destination is the pool of one ip:port.
type destination struct {
	addr    string
	open    int // connections counted against PerDestination: in use, idle, dialling
	idle    []*session
	waiters []chan *session // a session to reuse, or nil: permission to dial
	reaping bool
}

// acquire returns a pooled session for addr, or nil and a slot to dial a
// new one (the caller must then call release with the new session, or with
// nil if dialling failed). It waits, honouring ctx, while the destination
// is at PerDestination.
func (r *Relay) acquire(ctx context.Context, addr string) (*session, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errClosed
	}
	d := r.dests[addr]
	if d == nil {
		d = &destination{addr: addr}
		r.dests[addr] = d
	}
	now := r.now()
	for len(d.idle) > 0 {
		s := d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if now.Sub(s.idleSince) < r.opts.IdleTimeout {
			r.mu.Unlock()
			r.reused.Add(1)
			return s, nil
		}
		// Too old: the server has likely dropped it. Keep its slot for us.
		go s.quit()
		d.open--
	}
	if d.open < r.opts.PerDestination {
		d.open++
		r.mu.Unlock()
		return nil, nil
	}
	ch := make(chan *session, 1)
	d.waiters = append(d.waiters, ch)
	r.mu.Unlock()

	select {
	case s := <-ch:
		if s != nil {
			r.reused.Add(1)
		}
		return s, nil
	case <-ctx.Done():
		r.mu.Lock()
		found := false
		for i, w := range d.waiters {
			if w == ch {
				d.waiters = append(d.waiters[:i], d.waiters[i+1:]...)
				found = true
				break
			}
		}
		r.mu.Unlock()
		if !found {
			// Someone handed us a session or a slot meanwhile: pass it on.
			r.release(addr, <-ch, true)
		}
		return nil, fmt.Errorf("waiting for a connection to %s: %w", addr, ctx.Err())
	}
}

// release gives back the slot of addr taken by acquire. A healthy session
// goes to the next waiter or to the idle pool; otherwise it is closed and
// the slot goes to the next waiter, or is freed.
func (r *Relay) release(addr string, s *session, healthy bool) {
	r.mu.Lock()
	d := r.dests[addr]
	if s != nil && healthy && !r.closed {
		s.idleSince = r.now()
		if len(d.waiters) > 0 {
			ch := d.waiters[0]
			d.waiters = d.waiters[1:]
			r.mu.Unlock()
			ch <- s
			return
		}
		d.idle = append(d.idle, s)
		if !d.reaping {
			d.reaping = true
			time.AfterFunc(r.opts.IdleTimeout, func() { r.reap(d) })
		}
		r.mu.Unlock()
		return
	}
	if len(d.waiters) > 0 {
		ch := d.waiters[0]
		d.waiters = d.waiters[1:]
		r.mu.Unlock()
		ch <- nil // the slot passes to the waiter, who dials (or, closed, releases it)
	} else {
		d.open--
		if d.open == 0 && len(d.waiters) == 0 {
			delete(r.dests, addr)
		}
		r.mu.Unlock()
	}
	if s != nil {
		if healthy {
			s.quit()
		} else {
			s.close()
		}
	}
}

// reap closes the idle connections of d older than IdleTimeout, and
// schedules itself again while some remain.
func (r *Relay) reap(d *destination) {
	r.mu.Lock()
	now := r.now()
	var old []*session
	keep := d.idle[:0]
	for _, s := range d.idle {
		if now.Sub(s.idleSince) >= r.opts.IdleTimeout {
			old = append(old, s)
			d.open--
		} else {
			keep = append(keep, s)
		}
	}
	clear(d.idle[len(keep):])
	d.idle = keep
	if d.open == 0 && len(d.waiters) == 0 && r.dests[d.addr] == d {
		delete(r.dests, d.addr)
	}
	if len(d.idle) > 0 && !r.closed {
		next := r.opts.IdleTimeout - now.Sub(d.idle[0].idleSince)
		time.AfterFunc(max(next, time.Second), func() { r.reap(d) })
	} else {
		d.reaping = false
	}
	r.mu.Unlock()
	for _, s := range old {
		s.quit()
	}
}

// Close sends QUIT on and closes every pooled connection; connections in
// use are closed when their delivery ends. Deliver after Close returns
// Temporary results. It always returns nil.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	var idle []*session
	for addr, d := range r.dests {
		idle = append(idle, d.idle...)
		d.open -= len(d.idle)
		d.idle = nil
		if d.open == 0 && len(d.waiters) == 0 {
			delete(r.dests, addr)
		}
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range idle {
		wg.Go(s.quit)
	}
	wg.Wait()
	return nil
}

// attempt delivers env through addr (a host of name). next reports
// whether the caller should try the next address: the host could not be
// reached or refused the session before MAIL. connected reports whether a
// connection was made (a pooled one used, or TCP connected): it counts
// against Options.MXSessionLimit.
func (r *Relay) attempt(ctx context.Context, name, addr string, env envelope) (res Result, next, connected bool) {
	s, err := r.acquire(ctx, addr)
	if err != nil {
		return Result{Outcome: Temporary, Host: name, Addr: addr, Stage: StageConnect, Text: err.Error()}, false, false
	}
	pooled := s != nil
	if pooled {
		s.host = name // the pool is per address; report the name this delivery used
		res, retry := r.transact(ctx, s, env, true)
		if !retry {
			return res, false, true
		}
		r.log.Debug("relay: pooled connection failed, reconnecting", "mx", s.host, "addr", addr, "err", res.Text)
		s.close()
		// Keep the slot: dial a fresh connection in its place.
	}
	if r.isClosed() {
		r.release(addr, nil, false)
		return Result{Outcome: Temporary, Host: name, Addr: addr, Stage: StageConnect, Text: errClosed.Error()}, false, pooled
	}
	s, res = r.connect(ctx, name, addr, env, true)
	connected = pooled || s != nil || res.Stage != StageConnect
	if s == nil && res.Stage == StageSTARTTLS && ctx.Err() == nil {
		// Postfix behaviour: a failed TLS handshake is retried once in plain text.
		r.log.Info("relay: TLS handshake failed, retrying without STARTTLS", "mx", name, "addr", addr, "err", res.Text)
		s, res = r.connect(ctx, name, addr, env, false)
	}
	if s == nil {
		r.release(addr, nil, false)
		return res, !res.Loop, connected
	}
	res, _ = r.transact(ctx, s, env, false)
	return res, false, true
}

func (r *Relay) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// connect dials addr and runs greeting, EHLO and (when offered and
// useTLS) STARTTLS. On failure the session is nil and res says why.
func (r *Relay) connect(ctx context.Context, name, addr string, env envelope, useTLS bool) (s *session, res Result) {
	fail := func(stage string, err error) (*session, Result) {
		res := errResult(stage, err)
		res.Host, res.Addr = name, addr
		return nil, res
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, r.opts.ConnectTimeout)
	raw, err := r.dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return fail(StageConnect, err)
	}
	r.opened.Add(1)
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()

	wc := newConn(raw)
	wc.greetLimit = start.Add(r.opts.ConnectTimeout)
	c := r.newClient(wc)
	if err := wc.check(c.Hello(r.opts.Hostname)); err != nil {
		_ = raw.Close()
		if !wc.greeted() {
			return fail(StageGreeting, err)
		}
		return fail(StageEHLO, err)
	}
	// A mail loop (Postfix: "mail for X loops back to myself"): the host
	// names itself with one of our names. Permanent 5.4.6, Code 0, Loop.
	loop := func(stage string, line string) (*session, Result) {
		_ = raw.Close()
		r.log.Warn("relay: mail loop: the remote host uses my own name", "mx", name, "addr", addr, "stage", stage, "reply", line)
		how := "answered EHLO with"
		if stage == StageGreeting {
			how = "greeted with"
		}
		return nil, Result{Outcome: Permanent, Host: name, Addr: addr, Stage: stage, EnhancedCode: "5.4.6", Loop: true,
			Text: fmt.Sprintf("mail for %s loops back to myself (host %s[%s] %s %q)", env.domain, name, addr, how, line)}
	}
	if l := wc.greetingLine(); r.isOwnName(replyName(l)) {
		return loop(StageGreeting, l)
	}
	if l := wc.replyLine(); r.isOwnName(replyName(l)) {
		return loop(StageEHLO, l)
	}
	s = &session{c: c, conn: wc, raw: raw, host: name, addr: addr}
	if ok, _ := c.Extension("STARTTLS"); ok && useTLS {
		tc, err := r.startTLS(ctx, wc, raw, name)
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se):
			// Refused: RFC 3207 4 leaves the session usable in plain text.
			r.log.Info("relay: STARTTLS refused, continuing in plain text", "mx", name, "addr", addr, "code", se.Code, "err", se.Message)
		case err != nil:
			_ = raw.Close()
			return fail(StageSTARTTLS, err)
		default:
			// go-smtp reads a greeting first; replay one for the new client.
			wc2 := newConn(tc)
			wc2.prefix = []byte("220 " + name + " TLS session\r\n")
			c2 := r.newClient(wc2)
			if err := wc2.check(c2.Hello(r.opts.Hostname)); err != nil {
				_ = raw.Close()
				return fail(StageEHLO, err)
			}
			if l := wc2.replyLine(); r.isOwnName(replyName(l)) {
				return loop(StageEHLO, l)
			}
			cs := tc.ConnectionState()
			s = &session{c: c2, conn: wc2, raw: raw, host: name, addr: addr, tls: true,
				tlsVer: tls.VersionName(cs.Version), tlsCipher: tls.CipherSuiteName(cs.CipherSuite)}
		}
	}
	r.log.Debug("relay: connected", "mx", name, "addr", addr, "tls", s.tls)
	return s, Result{}
}

func (r *Relay) newClient(c net.Conn) *smtp.Client {
	cl := smtp.NewClient(c)
	cl.CommandTimeout = r.opts.CommandTimeout
	cl.SubmissionTimeout = r.opts.DataTimeout
	return cl
}

// startTLS sends STARTTLS on wc (whose go-smtp client is idle after EHLO:
// go-smtp v0.25 only offers STARTTLS through NewClientStartTLS, which would
// say EHLO localhost) and runs the handshake on raw. A refusal is an
// *smtp.SMTPError; anything else means the connection is unusable.
func (r *Relay) startTLS(ctx context.Context, wc *conn, raw net.Conn, name string) (*tls.Conn, error) {
	_ = wc.SetDeadline(time.Now().Add(r.opts.CommandTimeout))
	if _, err := wc.Write([]byte("STARTTLS\r\n")); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	// The server sends nothing after its 220 until our ClientHello, so this
	// reader cannot swallow handshake bytes.
	code, msg, err := textproto.NewReader(bufio.NewReader(wc)).ReadResponse(220)
	if err = wc.check(err); err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return nil, parseReply(code, msg)
		}
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	var cfg *tls.Config
	if r.opts.TLSConfig != nil {
		cfg = r.opts.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	// Opportunistic TLS ("may" level): encrypt, do not authenticate.
	cfg.InsecureSkipVerify = true
	if net.ParseIP(name) == nil {
		cfg.ServerName = name
	}
	tc := tls.Client(raw, cfg)
	_ = raw.SetDeadline(time.Now().Add(r.opts.CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	_ = raw.SetDeadline(time.Time{})
	return tc, nil
}

// transact runs MAIL, RCPT and DATA on s, then RSETs it and returns it to
// the pool (or closes it). retry reports a pooled connection that failed
// before the server answered anything: the caller may redial (s then still
// holds its slot and must not be released).
func (r *Relay) transact(ctx context.Context, s *session, env envelope, reused bool) (res Result, retry bool) {
	healthy := true
	stop := context.AfterFunc(ctx, func() { _ = s.raw.Close() })
	defer func() {
		if !stop() {
			healthy = false // ctx fired: the connection was closed
		}
		if retry {
			return
		}
		if healthy {
			s.conn.setLimit(time.Now().Add(r.opts.CommandTimeout))
			healthy = s.conn.check(s.c.Reset()) == nil
			s.conn.setLimit(time.Time{})
		}
		r.release(s.addr, s, healthy)
	}()
	fail := func(stage string, err error) Result {
		res := errResult(stage, err)
		res.Host, res.Addr, res.TLS, res.TLSVersion, res.TLSCipher = s.host, s.addr, s.tls, s.tlsVer, s.tlsCipher
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code == 421 {
			healthy = false // network error, or the server is closing
		}
		return res
	}

	if reused {
		// go-smtp forgets the EHLO on RSET; say it again (and probe the connection).
		if err := s.conn.check(s.c.Hello(r.opts.Hostname)); err != nil {
			return fail(StageEHLO, err), stale(err)
		}
	}

	var opts *smtp.MailOptions
	if ok, _ := s.c.Extension("SMTPUTF8"); ok && env.wantUTF8 {
		opts = &smtp.MailOptions{UTF8: true}
	} else if env.needUTF8 {
		return Result{Outcome: Permanent, Host: s.host, Addr: s.addr, TLS: s.tls, TLSVersion: s.tlsVer, TLSCipher: s.tlsCipher,
			Stage: StageMail, EnhancedCode: "5.6.7",
			Text: fmt.Sprintf("SMTPUTF8 is required, but was not offered by host %s[%s]", s.host, s.addr)}, false
	}
	if err := s.conn.check(s.c.Mail(env.from, opts)); err != nil {
		return fail(StageMail, err), reused && stale(err)
	}
	if err := s.conn.check(s.c.Rcpt(env.to, nil)); err != nil {
		return fail(StageRcpt, err), false
	}
	w, err := s.c.Data()
	if err = s.conn.check(err); err != nil {
		return fail(StageData, err), false
	}
	s.conn.setLimit(time.Now().Add(r.opts.DataTimeout))
	defer s.conn.setLimit(time.Time{})
	endOfData := func(err error) Result {
		res := fail(StageEndOfData, err)
		res.Phase = vocab.PhaseEndOfData
		return res
	}
	if _, err := io.Copy(w, io.NewSectionReader(env.body, 0, env.body.Size())); err != nil {
		return endOfData(err), false
	}
	resp, err := w.CloseWithResponse()
	if err = s.conn.check(err); err != nil {
		return endOfData(err), false
	}
	res = replyResult(parseReply(250, resp.StatusText))
	res.Outcome, res.Stage, res.Phase = Sent, StageEndOfData, vocab.PhaseEndOfData
	res.Host, res.Addr, res.TLS, res.TLSVersion, res.TLSCipher = s.host, s.addr, s.tls, s.tlsVer, s.tlsCipher
	return res, false
}

// stale reports whether err, on a pooled connection, means the server had
// already dropped it: a network error or a 421 (RFC 5321 3.8 idle timeout).
func stale(err error) bool {
	var se *smtp.SMTPError
	return !errors.As(err, &se) || se.Code == 421
}

// errResult classifies err at stage: an SMTP reply by its code (5xx
// Permanent, anything else Temporary), any other error Temporary.
func errResult(stage string, err error) Result {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		res := replyResult(se)
		res.Stage = stage
		return res
	}
	if IsReplyLimit(err) {
		// A hostile or broken server: our limit, not its reply. Temporary
		// (Code 0, so classified as a network failure), connection closed.
		return Result{Outcome: Temporary, Stage: stage, Text: "remote server misbehaved: " + err.Error()}
	}
	return Result{Outcome: Temporary, Stage: stage, Text: err.Error()}
}

// replyName returns the host name a greeting or EHLO reply line starts
// with ("220 mx.example.test ESMTP" → "mx.example.test"), normalised.
func replyName(line string) string {
	if len(line) < 4 || (line[3] != ' ' && line[3] != '-') {
		return ""
	}
	f := strings.Fields(line[4:])
	if len(f) == 0 {
		return ""
	}
	return normName(f[0])
}

// normName lower-cases a host name and drops a trailing dot.
func normName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

// isOwnName reports whether n (normalised) is one of this host's names.
func (r *Relay) isOwnName(n string) bool { return n != "" && r.own[n] }

func replyResult(se *smtp.SMTPError) Result {
	res := Result{Outcome: Temporary, Code: se.Code, Text: se.Message}
	if se.Code >= 500 && se.Code < 600 {
		res.Outcome = Permanent
	}
	ec := se.EnhancedCode
	if ec != smtp.EnhancedCodeNotSet && ec != smtp.NoEnhancedCode && ec[0] > 0 {
		res.EnhancedCode = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	return res
}

// parseReply turns a reply as net/textproto returns it into an SMTPError,
// splitting off the enhanced status code (RFC 2034) as go-smtp does.
func parseReply(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return se
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return se
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return se
		}
		ec[i] = n
	}
	se.EnhancedCode = ec
	se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return se
}
