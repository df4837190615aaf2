package api

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// HTTPOptions configures the API's HTTP server and listener. Zero values
// take the defaults noted.
type HTTPOptions struct {
	// ReadHeaderTimeout bounds reading a request's header (default 10s),
	// ReadTimeout the whole request (default 30s).
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// WriteTimeout bounds writing the answer, counted from the end of the
	// request header; it must exceed the longest long-poll (default
	// MaxWait + 30s).
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long (default 60s).
	IdleTimeout time.Duration
	// MaxWait is the longest /v1/events?wait= (default 60s); it only sizes
	// WriteTimeout here (Options.MaxWait bounds the handler).
	MaxWait time.Duration
	// MaxConnections caps open API connections in total (default 256),
	// MaxConnectionsPerIP per client address (default 64). A connection
	// over a cap gets "503 Service Unavailable" and is closed at once, so
	// that file descriptors stay free for the SMTP listeners.
	MaxConnections      int
	MaxConnectionsPerIP int
}

func (o *HTTPOptions) defaults() {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = o.MaxWait + 30*time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 256
	}
	if o.MaxConnectionsPerIP <= 0 {
		o.MaxConnectionsPerIP = 64
	}
}

// NewHTTPServer returns an http.Server for handler with the timeouts of o.
// Serve it on LimitListener(l, o) so that the connection caps apply too.
func NewHTTPServer(handler http.Handler, o HTTPOptions) *http.Server {
	o.defaults()
	return &http.Server{Handler: handler, ReadHeaderTimeout: o.ReadHeaderTimeout, ReadTimeout: o.ReadTimeout,
		WriteTimeout: o.WriteTimeout, IdleTimeout: o.IdleTimeout, MaxHeaderBytes: 64 << 10}
}

// LimitListener wraps l so that at most o.MaxConnections connections (and
// o.MaxConnectionsPerIP from one address) are open at once; a connection
// over a cap is answered 503 and closed without being handed to the server.
func LimitListener(l net.Listener, o HTTPOptions) net.Listener {
	o.defaults()
	return &limitListener{Listener: l, total: o.MaxConnections, perIP: o.MaxConnectionsPerIP, byAddr: map[netip.Addr]int{}}
}

type limitListener struct {
	net.Listener
	total, perIP int

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int
}

// busyBody is the JSON answered to a connection over a cap.
const busyBody = `{"error":"too many API connections; try again later","code":"unavailable"}` + "\n"

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := netip.IPv6Unspecified()
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			addr = ap.Addr().Unmap()
		}
		l.mu.Lock()
		ok := l.open < l.total && l.byAddr[addr] < l.perIP
		if ok {
			l.open++
			l.byAddr[addr]++
		}
		l.mu.Unlock()
		if !ok {
			go func() {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s", len(busyBody), busyBody)
				c.Close()
			}()
			continue
		}
		return &countedConn{Conn: c, release: func() { l.release(addr) }}, nil
	}
}

func (l *limitListener) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
}

// Open reports the connections currently held (for tests and metrics).
func (l *limitListener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
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
