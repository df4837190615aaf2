// Package smtpd is hermod's inbound SMTP: the submission listener that
// applications hand mail to (AUTH required) and the bounce listener that
// accepts mail for VERP addresses only. Policy is applied at MAIL and RCPT;
// DATA is read strictly and handed to a Submitter, which answers only after
// the message is durable.
package smtpd

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
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
	// MailFrom and Rcpts are normalised (vocab.ParseAddress): domains in
	// lower-case A-label form, local parts as given.
	MailFrom string
	Rcpts    []string
	// SMTPUTF8 is set when MAIL FROM carried SMTPUTF8 (RFC 6531): the
	// envelope or header may hold UTF-8, and a next hop that does not offer
	// SMTPUTF8 must not get the message as is.
	SMTPUTF8 bool
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
	// AuthTimeout is how long a session may stay unauthenticated, counted
	// from the connection (default 30s); MaxCommandsBeforeAuth how many
	// command lines it may send before AUTH succeeds (default 10). Either
	// ends the session with 421.
	AuthTimeout           time.Duration
	MaxCommandsBeforeAuth int
	// MaxUnauthenticated caps the sessions not yet authenticated from
	// addresses that have not logged in within the last 24 hours (default
	// half of MaxConnections), so that the rest of the slots stay free for
	// the application.
	MaxUnauthenticated int
	// DataTimeout bounds one whole DATA (default 30m); IdleTimeout applies
	// between any two bytes.
	DataTimeout time.Duration
	// MaxHeaderBytes and MaxHeaderFields cap the header section of a message
	// (defaults 1 MiB and 1000 fields); beyond them the message gets 552 5.3.4.
	MaxHeaderBytes  int
	MaxHeaderFields int
	// HashConcurrency bounds concurrent bcrypt comparisons (default: the
	// number of CPUs).
	HashConcurrency int
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

	hasher *hasher
	logKey []byte

	mu      sync.RWMutex
	users   map[string]*User
	dummy   []byte
	tlsConf *tls.Config
	srvs    servers

	// registered, in tests, runs between a listener's registration and
	// go-smtp's Serve: the window in which a stop once went unseen.
	registered func()
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
	if opts.AuthTimeout <= 0 {
		opts.AuthTimeout = 30 * time.Second
	}
	if opts.MaxCommandsBeforeAuth <= 0 {
		opts.MaxCommandsBeforeAuth = 10
	}
	if opts.MaxUnauthenticated <= 0 && opts.MaxConnections > 0 {
		opts.MaxUnauthenticated = max(opts.MaxConnections/2, 1)
	}
	if opts.DataTimeout <= 0 {
		opts.DataTimeout = 30 * time.Minute
	}
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = 1 << 20
	}
	if opts.MaxHeaderFields <= 0 {
		opts.MaxHeaderFields = 1000
	}
	if opts.HashConcurrency <= 0 {
		opts.HashConcurrency = runtime.NumCPU()
	}
	s := &Server{opts: opts, log: opts.Logger, limiter: newAuthLimiter(opts.Now), tlsConf: opts.TLSConfig,
		hasher: newHasher(opts.HashConcurrency), logKey: make([]byte, 32)}
	rand.Read(s.logKey)
	s.SetUsers(opts.Users)
	return s
}

// userTag is what the log shows for a user name that is not a configured
// user: it may be a password typed into the wrong field, so only a keyed
// hash (random key per process) goes to the log, enough to tell repeated
// attempts with the same name apart.
func (s *Server) userTag(name string) string {
	m := hmac.New(sha256.New, s.logKey)
	m.Write([]byte(name))
	return "unknown user #" + hex.EncodeToString(m.Sum(nil)[:6])
}

// SetUsers replaces the submission users (configuration reload); open
// sessions keep the user they logged in as.
func (s *Server) SetUsers(users []User) {
	m := make(map[string]*User, len(users))
	for i := range users {
		u := users[i]
		m[u.Name] = &u
	}
	dummy := dummyHashFor(users)
	s.mu.Lock()
	s.users, s.dummy = m, dummy
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
	// go-smtp refuses the read after MaxMessageBytes bytes even when it
	// would only be the terminating dot: one more byte lets a message of
	// exactly MaxMessageBytes through; strictReader enforces the real limit.
	srv.MaxMessageBytes = s.opts.MaxMessageBytes + 1
	srv.MaxRecipients = s.opts.MaxRecipients
	srv.MaxLineLength = 2000             // commands; DATA lines are checked by strictReader
	srv.ReadTimeout = s.opts.IdleTimeout // the guardConn applies it per read
	srv.EnableSMTPUTF8 = true
	srv.WriteTimeout = time.Minute
	srv.AllowInsecureAuth = isLoopbackListener(l)
	srv.ErrorLog = slogLogger{s.log}
	if !implicitTLS {
		srv.TLSConfig = tc
	}
	pol := connPolicy{idle: s.opts.IdleTimeout, authTimeout: s.opts.AuthTimeout,
		authBudget: s.opts.MaxCommandsBeforeAuth, maxStrangers: s.opts.MaxUnauthenticated}
	lim, err := s.srvs.register(srv, l, s.opts.MaxConnections, s.opts.MaxConnectionsPerIP, s.opts.Hostname, pol, s.opts.Now)
	if err != nil {
		return nil // stopping already
	}
	lim.startTLS, lim.implicitTLS = !implicitTLS && tc != nil, implicitTLS
	if s.registered != nil {
		s.registered()
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

func (s *Server) currentUsers() (map[string]*User, []byte) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.users, s.dummy
}

// slogLogger adapts slog to go-smtp's ErrorLog.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.l.Warn("smtp: " + fmt.Sprintf(format, v...)) }
func (l slogLogger) Println(v ...any)               { l.l.Warn("smtp: " + fmt.Sprint(v...)) }
