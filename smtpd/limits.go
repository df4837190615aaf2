package smtpd

import (
	"context"
	"errors"

	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// limitListener refuses connections beyond a total and a per-address cap
// with a 421 greeting, before any session state is created.
type limitListener struct {
	net.Listener
	total, perIP int
	domain       string

	mu       sync.Mutex
	open     int
	byAddr   map[netip.Addr]int
	draining bool
}

// drain makes every new connection get a 421 and reports how many
// connections are still open.
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

func newLimitListener(l net.Listener, total, perIP int, domain string) *limitListener {
	return &limitListener{Listener: l, total: total, perIP: perIP, domain: domain, byAddr: map[netip.Addr]int{}}
}

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
		if !over && !draining {
			l.open++
			l.byAddr[addr]++
		}
		l.mu.Unlock()
		if draining {
			go refuse(c, "421 4.3.2 "+l.domain+" Service shutting down; try again later\r\n")
			continue
		}
		if over {
			go refuse(c, "421 4.7.0 "+l.domain+" Too many connections from your address or in total; try again later\r\n")
			continue
		}
		return &countedConn{Conn: c, release: func() { l.release(addr) }}, nil
	}
}

// refuse answers a connection with one reply line and closes it.
func refuse(c net.Conn, line string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(line))
	c.Close()
}

func (l *limitListener) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
}

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// remoteAddr returns the client IP of c (unspecified if unknown).
func remoteAddr(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.IPv6Unspecified()
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
	closing   bool
}

// register wraps l in a limit listener and records srv; it fails once the
// service is stopping.
func (ss *servers) register(srv *smtp.Server, l net.Listener, total, perIP int, domain string) (*limitListener, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closing {
		return nil, smtp.ErrServerClosed
	}
	lim := newLimitListener(l, total, perIP, domain)
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
	return errors.Join(errs...)
}

// serve runs srv on l; a stop is not an error.
func serve(srv *smtp.Server, l net.Listener) error {
	if err := srv.Serve(l); !errors.Is(err, smtp.ErrServerClosed) {
		return err
	}
	return nil
}
