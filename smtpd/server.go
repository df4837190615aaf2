// Package smtpd is hermod's inbound SMTP: the submission listener that
// applications hand mail to (AUTH required) and the bounce listener that
// accepts mail for VERP addresses only. Policy is applied at MAIL and RCPT;
// DATA is read strictly and handed to a Submitter, which answers only after
// the message is durable.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"
)

// Submission is one message as the application handed it over.
type Submission struct {
	User       *User
	RemoteAddr netip.Addr
	HELO       string
	TLS        bool
	MailFrom   string
	Rcpts      []string
	// Header is the parsed header block; Body the bytes after it, verbatim.
	Header textproto.Header
	Body   *Body
	// System marks mail hermod writes itself (domain notices): it is sent
	// from the platform identity as written, without the sender rule.
	System bool
}

// Submitter turns a submission into a queued message and returns its id once
// it is on disk. An error of type *smtp.SMTPError is sent to the client as
// is; any other error becomes 451 4.3.0.
type Submitter interface {
	Submit(ctx context.Context, sub *Submission) (id string, err error)
}

// Options configures a submission Server.
type Options struct {
	// Hostname is used in the greeting.
	Hostname            string
	Users               []User
	MaxMessageBytes     int64
	MaxRecipients       int
	IdleTimeout         time.Duration
	MaxConnections      int
	MaxConnectionsPerIP int
	// TLSConfig enables STARTTLS on plain listeners and is required for implicit TLS.
	TLSConfig *tls.Config
	Submitter Submitter
	Logger    *slog.Logger
	Now       func() time.Time
	// Observe, when set, is told the result of every DATA ("accepted",
	// "rejected" or "error") and the time from the end of the data to the reply.
	Observe func(result string, took time.Duration)
}

// Server is the submission service. One Server may serve several listeners.
type Server struct {
	opts    Options
	log     *slog.Logger
	limiter *authLimiter

	mu      sync.RWMutex
	users   map[string]*User
	tlsConf *tls.Config
	srvs    servers
}

// New returns a submission server.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 25 << 20
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 100
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	s := &Server{opts: opts, log: opts.Logger, limiter: newAuthLimiter(opts.Now), tlsConf: opts.TLSConfig}
	s.SetUsers(opts.Users)
	return s
}

// SetUsers replaces the submission users (configuration reload); open
// sessions keep the user they logged in as.
func (s *Server) SetUsers(users []User) {
	m := make(map[string]*User, len(users))
	for i := range users {
		u := users[i]
		m[u.Name] = &u
	}
	s.mu.Lock()
	s.users = m
	s.mu.Unlock()
}

// SetTLSConfig replaces the certificates used by new STARTTLS and implicit
// TLS handshakes (configuration reload).
func (s *Server) SetTLSConfig(c *tls.Config) {
	s.mu.Lock()
	s.tlsConf = c
	s.mu.Unlock()
}

// tlsConfig is handed to go-smtp; it defers to the current configuration so
// that a reload takes effect for the next handshake.
func (s *Server) tlsConfig() *tls.Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.tlsConf == nil {
		return nil
	}
	return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.tlsConf, nil
	}}
}

// Serve accepts submission sessions on l until Shutdown. With implicitTLS the
// connection starts with a TLS handshake (RFC 8314); otherwise STARTTLS is
// offered when a TLS configuration is set. AUTH without TLS is allowed only
// when l is a loopback listener.
func (s *Server) Serve(l net.Listener, implicitTLS bool) error {
	tc := s.tlsConfig()
	if implicitTLS && tc == nil {
		return errors.New("smtpd: implicit TLS listener needs a TLS certificate")
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = s.opts.Hostname
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	srv.MaxRecipients = s.opts.MaxRecipients
	srv.MaxLineLength = 2000 // commands; DATA lines are checked by strictReader
	srv.ReadTimeout = s.opts.IdleTimeout
	srv.WriteTimeout = time.Minute
	srv.AllowInsecureAuth = isLoopbackListener(l)
	srv.ErrorLog = slogLogger{s.log}
	if !implicitTLS {
		srv.TLSConfig = tc
	}
	lim, err := s.srvs.register(srv, l, s.opts.MaxConnections, s.opts.MaxConnectionsPerIP, s.opts.Hostname)
	if err != nil {
		return nil // stopping already
	}
	ll := net.Listener(lim)
	if implicitTLS {
		ll = tls.NewListener(ll, tc)
	}
	return serve(srv, ll)
}

// Shutdown drains the server: new connections get 421, open sessions may
// finish the message they are sending but get 421 at their next MAIL, and
// once they are gone (or ctx ends) everything is closed.
func (s *Server) Shutdown(ctx context.Context) error { return s.srvs.shutdown(ctx) }

func (s *Server) isClosing() bool { return s.srvs.isClosing() }

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	if s.isClosing() {
		return nil, errShutdown
	}
	return &session{srv: s, conn: c, addr: remoteAddr(c.Conn()), helo: c.Hostname()}, nil
}

func (s *Server) currentUsers() map[string]*User {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.users
}

// slogLogger adapts slog to go-smtp's ErrorLog.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.l.Warn("smtp: " + fmt.Sprintf(format, v...)) }
func (l slogLogger) Println(v ...any)               { l.l.Warn("smtp: " + fmt.Sprint(v...)) }
