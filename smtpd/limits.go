package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// connPolicy is what a guarded connection enforces on its reads.
type connPolicy struct {
	// idle is the longest wait for the next byte (from the last byte read,
	// whatever command or DATA it belongs to).
	idle time.Duration
	// authTimeout, when > 0, is how long a session may stay unauthenticated
	// (counted from accept); authBudget, when > 0, is how many lines it may
	// send before authenticating.
	authTimeout time.Duration
	authBudget  int
	// maxStrangers, when > 0, caps the connections that are not yet
	// authenticated and come from addresses that have not authenticated
	// recently, so that strangers cannot hold every slot.
	maxStrangers int
	// trustFor is how long a successful login makes its address known.
	trustFor time.Duration
}

// limitListener refuses connections beyond a total and a per-address cap
// (and, for strangers, beyond their share) with a 421 greeting, before any
// session state is created. The connections it returns are guardConns.
type limitListener struct {
	net.Listener
	total, perIP int
	domain       string
	pol          connPolicy
	// startTLS: the server offers STARTTLS; implicitTLS: connections are TLS
	// from the first byte (both tell the guard what it reads).
	startTLS, implicitTLS bool
	now                   func() time.Time

	mu        sync.Mutex
	open      int
	strangers int
	byAddr    map[netip.Addr]int
	trust     *trustSet
	draining  bool
}

// maxTrusted bounds the memory of recently authenticated addresses.
const maxTrusted = 4096

// drain makes every new connection get a 421.
func (l *limitListener) drain() {
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
}

func (l *limitListener) openConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func newLimitListener(l net.Listener, total, perIP int, domain string, pol connPolicy, now func() time.Time) *limitListener {
	if now == nil {
		now = time.Now
	}
	return &limitListener{Listener: l, total: total, perIP: perIP, domain: domain, pol: pol, now: now,
		byAddr: map[netip.Addr]int{}, trust: newTrustSet(pol.trustFor, now)}
}

// trustSet remembers the client addresses (IPv6: /64) that logged in
// successfully, for a while; every listener of one service shares it.
type trustSet struct {
	mu  sync.Mutex
	m   map[netip.Prefix]time.Time
	ttl time.Duration
	now func() time.Time
}

func newTrustSet(ttl time.Duration, now func() time.Time) *trustSet {
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	if now == nil {
		now = time.Now
	}
	return &trustSet{m: map[netip.Prefix]time.Time{}, ttl: ttl, now: now}
}

// has reports whether addr logged in within the last ttl.
func (t *trustSet) has(addr netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.m[clientKey(addr)]
	return ok && t.now().Before(until)
}

// add records a successful login from addr.
func (t *trustSet) add(addr netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if len(t.m) >= maxTrusted {
		for k, until := range t.m {
			if !now.Before(until) {
				delete(t.m, k)
			}
		}
		for k := range t.m { // still full: forget an arbitrary one
			if len(t.m) < maxTrusted {
				break
			}
			delete(t.m, k)
		}
	}
	t.m[clientKey(addr)] = now.Add(t.ttl)
}

// trustedAddr reports whether addr logged in recently.
func (l *limitListener) trustedAddr(addr netip.Addr) bool { return l.trust.has(addr) }

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := remoteAddr(c)
		l.mu.Lock()
		draining := l.draining
		over := l.total > 0 && l.open >= l.total || l.perIP > 0 && l.byAddr[addr] >= l.perIP
		stranger := l.pol.maxStrangers > 0 && !l.trust.has(addr)
		overShare := stranger && l.strangers >= l.pol.maxStrangers
		ok := !over && !overShare && !draining
		if ok {
			l.open++
			l.byAddr[addr]++
			if stranger {
				l.strangers++
			}
		}
		l.mu.Unlock()
		switch {
		case draining:
			go refuse(c, "421 4.3.2 "+l.domain+" Service shutting down; try again later\r\n")
			continue
		case over:
			go refuse(c, "421 4.7.0 "+l.domain+" Too many connections from your address or in total; try again later\r\n")
			continue
		case overShare:
			go refuse(c, "421 4.7.0 "+l.domain+" Too many unauthenticated connections; try again later\r\n")
			continue
		}
		return newGuardConn(c, l, addr, stranger), nil
	}
}

// refuse answers a connection with one reply line and closes it.
func refuse(c net.Conn, line string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(line))
	c.Close()
}

func (l *limitListener) release(addr netip.Addr, stranger bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if stranger {
		l.strangers--
	}
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
}

// authenticated moves a connection out of the strangers' share.
func (l *limitListener) authenticated(wasStranger bool) {
	if !wasStranger {
		return
	}
	l.mu.Lock()
	l.strangers--
	l.mu.Unlock()
}

// guardConn enforces connPolicy on reads: each read waits at most idle for
// the next byte (go-smtp's own deadlines, set once per command, are
// ignored, so that a slow but steady DATA is not cut off), an
// unauthenticated session ends at its auth deadline, and it may send only
// authBudget lines before it authenticates.
type guardConn struct {
	net.Conn
	l    *limitListener
	addr netip.Addr

	mu        sync.Mutex
	authed    bool
	stranger  bool
	authBy    time.Time // zero once authenticated or when not limited
	budget    int       // lines left before AUTH; < 0: unlimited
	dataBy    time.Time // overall DATA deadline, zero when none
	line      []byte    // start of the current plain-text line (for STARTTLS)
	records   bool      // counting TLS records, not lines
	recHead   int       // bytes of the current record header seen
	recLen    int       // record length being read from the header
	recSkip   int       // record payload bytes still to skip
	latched   error     // a timeout or budget error, returned from then on
	closeOnce sync.Once
}

func newGuardConn(c net.Conn, l *limitListener, addr netip.Addr, stranger bool) *guardConn {
	g := &guardConn{Conn: c, l: l, addr: addr, stranger: stranger, budget: -1}
	if l.pol.authTimeout > 0 {
		g.authBy = l.now().Add(l.pol.authTimeout)
	}
	if l.pol.authBudget > 0 {
		g.budget = l.pol.authBudget
	}
	if l.pol.authTimeout <= 0 && l.pol.authBudget <= 0 {
		g.authed = true
	}
	g.records = l.implicitTLS
	return g
}

// timeoutError is a read timeout that go-smtp recognises as such (it
// answers 421 4.4.2 and closes at a command).
type timeoutError struct{}

func (timeoutError) Error() string   { return "smtpd: read timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// Read reads with the policy's deadline.
func (g *guardConn) Read(p []byte) (int, error) {
	g.mu.Lock()
	if g.latched != nil {
		err := g.latched
		g.mu.Unlock()
		return 0, err
	}
	if !g.authed && g.budget == 0 {
		// The budget is spent: say so (in plain text only) and end the
		// session as if the client had closed (go-smtp then closes
		// without another reply).
		g.latched = io.EOF
		records := g.records
		g.mu.Unlock()
		if !records {
			g.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			g.Conn.Write([]byte("421 4.7.0 " + g.l.domain + " Too many commands without authentication; closing\r\n"))
		}
		return 0, io.EOF
	}
	var deadline time.Time
	if g.l.pol.idle > 0 {
		deadline = g.l.now().Add(g.l.pol.idle)
	}
	if !g.authed && !g.authBy.IsZero() && (deadline.IsZero() || g.authBy.Before(deadline)) {
		deadline = g.authBy
	}
	if !g.dataBy.IsZero() && (deadline.IsZero() || g.dataBy.Before(deadline)) {
		deadline = g.dataBy
	}
	g.mu.Unlock()
	g.Conn.SetReadDeadline(deadline)
	n, err := g.Conn.Read(p)
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.authed && g.budget > 0 {
		n = g.count(p[:n])
	}
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		g.latched = timeoutError{}
		return n, g.latched
	}
	return n, err
}

// count spends the command budget on the bytes just read and returns how
// many of them the session may see. In plain text a command is a line; once
// the connection is encrypted (implicit TLS, or after a STARTTLS line when
// STARTTLS is offered) the guard, which sits under TLS, counts TLS
// application-data records instead: clients send one per command. g.mu
// must be held.
func (g *guardConn) count(p []byte) int {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if g.records {
			// TLS record layer: type(1) version(2) length(2), then length bytes.
			if g.recSkip > 0 {
				skip := min(g.recSkip, len(p)-i)
				g.recSkip -= skip
				i += skip - 1
			} else {
				if g.recHead == 0 && c == 23 { // application_data
					g.budget--
				}
				if g.recHead == 3 || g.recHead == 4 {
					g.recLen = g.recLen<<8 | int(c)
				}
				if g.recHead++; g.recHead == 5 {
					g.recSkip, g.recHead, g.recLen = g.recLen, 0, 0
				}
			}
			if g.budget == 0 && g.recSkip == 0 && g.recHead == 0 {
				return i + 1 // the last record allowed is complete
			}
			continue
		}
		if c != '\n' {
			if len(g.line) < 16 {
				g.line = append(g.line, c)
			}
			continue
		}
		startTLS := g.l.startTLS && strings.EqualFold(strings.TrimRight(string(g.line), "\r"), "STARTTLS")
		g.line = g.line[:0]
		if g.budget--; g.budget == 0 {
			return i + 1 // the rest is never seen: the budget is spent
		}
		if startTLS {
			g.records = true
		}
	}
	return len(p)
}

// SetReadDeadline is ignored: the guard sets the deadline of every read.
func (g *guardConn) SetReadDeadline(time.Time) error { return nil }

// SetDeadline sets only the write deadline (see SetReadDeadline).
func (g *guardConn) SetDeadline(t time.Time) error { return g.Conn.SetWriteDeadline(t) }

// authenticate lifts the auth deadline and command budget and records the
// address as known.
func (g *guardConn) authenticate() {
	g.mu.Lock()
	was := !g.authed && g.stranger
	g.authed, g.stranger = true, false
	g.mu.Unlock()
	g.l.authenticated(was)
	g.l.trust.add(g.addr)
}

// hangUp ends the session after the reply being written: the next read
// reports end of input, so go-smtp closes the connection.
func (g *guardConn) hangUp() {
	g.mu.Lock()
	if g.latched == nil {
		g.latched = io.EOF
	}
	g.mu.Unlock()
}

// setDataDeadline sets (or, with a zero t, clears) an overall deadline for
// the DATA being read.
func (g *guardConn) setDataDeadline(t time.Time) {
	g.mu.Lock()
	g.dataBy = t
	g.mu.Unlock()
}

// timedOut reports whether a read of this connection hit a deadline.
func (g *guardConn) timedOut() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.latched.(timeoutError)
	return ok
}

// Close releases the connection's slot once.
func (g *guardConn) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		stranger := g.stranger
		g.stranger = false
		g.mu.Unlock()
		g.l.release(g.addr, stranger)
	})
	return g.Conn.Close()
}

// guardOf finds the guardConn under c (through TLS), nil if there is none.
func guardOf(c net.Conn) *guardConn {
	for c != nil {
		switch v := c.(type) {
		case *guardConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// remoteAddr returns the client IP of c (unspecified if unknown).
func remoteAddr(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.IPv6Unspecified()
}

// clientKey is the unit client addresses are counted in: the address for
// IPv4, its /64 for IPv6 (one customer's network usually gets a whole /64,
// so counting single IPv6 addresses would count nothing).
func clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, err := a.Prefix(64)
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

// isLoopbackListener reports whether l only accepts loopback connections.
func isLoopbackListener(l net.Listener) bool {
	ap, err := netip.ParseAddrPort(l.Addr().String())
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// servers tracks the go-smtp servers and limit listeners of one service so
// that a stop can drain them all (new connections get 421, open sessions end
// on their own or at the deadline).
type servers struct {
	mu        sync.Mutex
	list      []*smtp.Server
	listeners []*limitListener
	trust     *trustSet // shared by the listeners
	closing   bool
}

// register wraps l in a limit listener and records srv; it fails once the
// service is stopping.
func (ss *servers) register(srv *smtp.Server, l net.Listener, total, perIP int, domain string, pol connPolicy, now func() time.Time) (*limitListener, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closing {
		return nil, smtp.ErrServerClosed
	}
	lim := newLimitListener(l, total, perIP, domain, pol, now)
	if ss.trust == nil {
		ss.trust = lim.trust
	}
	lim.trust = ss.trust
	ss.list = append(ss.list, srv)
	ss.listeners = append(ss.listeners, lim)
	return lim, nil
}

func (ss *servers) isClosing() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closing
}

// shutdown drains every listener, waits for their sessions to end (or ctx),
// then closes the servers.
func (ss *servers) shutdown(ctx context.Context) error {
	ss.mu.Lock()
	ss.closing = true
	list, listeners := ss.list, ss.listeners
	ss.mu.Unlock()
	for _, l := range listeners {
		l.drain()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		open := 0
		for _, l := range listeners {
			open += l.openConns()
		}
		if open == 0 {
			break
		}
		select {
		case <-ctx.Done():
			break wait
		case <-tick.C:
		}
	}
	var errs []error
	for _, srv := range list {
		if err := srv.Close(); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	// go-smtp closes only the listeners its Serve has seen: a Serve that
	// registered here but had not yet started would wait in Accept forever
	// (a stop right after the start). Closing the listener ends its Accept.
	for _, l := range listeners {
		l.Close()
	}
	return errors.Join(errs...)
}

// serve runs srv on l; a stop is not an error.
func serve(srv *smtp.Server, l net.Listener) error {
	if err := srv.Serve(l); !errors.Is(err, smtp.ErrServerClosed) {
		return err
	}
	return nil
}
