package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// received is one message the sink accepted.
type received struct {
	From string
	To   []string
	Data []byte
	TLS  bool
	UTF8 bool // MAIL had SMTPUTF8
}

// sink is a scripted go-smtp MX on 127.0.0.1:0. Script fields must be set
// before the first connection.
type sink struct {
	addr string
	port int

	// greeting, if set, is written raw (CRLF-terminated lines) instead of
	// the 220 greeting, and the connection is then closed.
	greeting string
	// silent makes the sink accept connections and never greet.
	silent bool
	// ehlo, if set, is called for each EHLO/HELO (n counts from 1); an error is the reply.
	ehlo func(n int) error
	// mail, rcpt and data, if set, give the reply to MAIL, RCPT and the end of DATA.
	mail func(from string) error
	rcpt func(to string) error
	data func(body []byte) error
	// dropInData closes the connection after reading part of the message.
	dropInData bool
	// tarpit, if set, makes MAIL block until it is closed (at cleanup).
	tarpit chan struct{}

	srv *smtp.Server

	mu        sync.Mutex
	msgs      []received
	accepted  int
	hellos    int
	active    int // transactions between MAIL and the end of DATA/RSET
	maxActive int
	conns     []net.Conn
}

func newSink(t *testing.T, configure func(*sink)) *sink {
	t.Helper()
	s := &sink{}
	if configure != nil {
		configure(s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	s.port = l.Addr().(*net.TCPAddr).Port
	if s.srv == nil {
		s.srv = smtp.NewServer(s)
	}
	s.srv.Backend = s
	s.srv.Domain = "sink.test"
	s.srv.ReadTimeout = 10 * time.Second
	s.srv.WriteTimeout = 10 * time.Second
	s.srv.ErrorLog = discardLogger{}
	go s.srv.Serve(&sinkListener{Listener: l, s: s})
	t.Cleanup(func() {
		if s.tarpit != nil {
			close(s.tarpit)
		}
		s.srv.Close()
		s.dropAll()
	})
	return s
}

// withTLS makes the sink offer STARTTLS with a fresh self-signed certificate.
func withTLS(t *testing.T) func(*sink) {
	cert := testnet.Cert(t, "sink.test")
	return func(s *sink) {
		s.srv = smtp.NewServer(s)
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
}

// withBrokenTLS makes the sink offer STARTTLS and fail every handshake.
func withBrokenTLS(s *sink) {
	s.srv = smtp.NewServer(s)
	s.srv.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("no certificate today")
	}}
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}

// sinkListener counts connections and plays the scripted greeting.
type sinkListener struct {
	net.Listener
	s *sink
}

func (l *sinkListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.s.mu.Lock()
		l.s.accepted++
		l.s.conns = append(l.s.conns, c)
		l.s.mu.Unlock()
		if l.s.silent {
			continue // kept open in conns, closed by dropAll or the OS at exit
		}
		if l.s.greeting == "" {
			return c, nil
		}
		_, _ = io.WriteString(c, l.s.greeting)
		c.Close()
	}
}

func (s *sink) messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.msgs...)
}

func (s *sink) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

func (s *sink) peakActive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive
}

// dropAll closes every server-side connection, as an MTA timing out idle clients.
func (s *sink) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
}

func (s *sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.hellos++
	n := s.hellos
	s.mu.Unlock()
	if s.ehlo != nil {
		if err := s.ehlo(n); err != nil {
			return nil, err
		}
	}
	_, isTLS := c.TLSConnectionState()
	return &sinkSession{s: s, c: c, tls: isTLS}, nil
}

type sinkSession struct {
	s      *sink
	c      *smtp.Conn
	tls    bool
	active bool
	msg    received
}

func (ss *sinkSession) setActive(on bool) {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if on == ss.active {
		return
	}
	ss.active = on
	if on {
		ss.s.active++
		ss.s.maxActive = max(ss.s.maxActive, ss.s.active)
	} else {
		ss.s.active--
	}
}

func (ss *sinkSession) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.tarpit != nil {
		<-ss.s.tarpit
	}
	if ss.s.mail != nil {
		if err := ss.s.mail(from); err != nil {
			return err
		}
	}
	ss.setActive(true)
	ss.msg = received{From: from, TLS: ss.tls, UTF8: opts != nil && opts.UTF8}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.s.rcpt != nil {
		if err := ss.s.rcpt(to); err != nil {
			return err
		}
	}
	ss.msg.To = append(ss.msg.To, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	defer ss.setActive(false)
	if ss.s.dropInData {
		_, _ = io.ReadFull(r, make([]byte, 10))
		ss.c.Conn().Close()
		return errors.New("dropped")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if ss.s.data != nil {
		if err := ss.s.data(b); err != nil {
			return err
		}
	}
	ss.msg.Data = b
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, ss.msg)
	ss.s.mu.Unlock()
	return nil
}

func (ss *sinkSession) Reset()        { ss.setActive(false); ss.msg = received{} }
func (ss *sinkSession) Logout() error { ss.setActive(false); return nil }

// smtpErr builds a scripted reply.
func smtpErr(code int, enhanced string, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: text, EnhancedCode: smtp.NoEnhancedCode}
	if enhanced != "" {
		var ec smtp.EnhancedCode
		for i, p := range strings.Split(enhanced, ".") {
			ec[i], _ = strconv.Atoi(p)
		}
		e.EnhancedCode = ec
	}
	return e
}
