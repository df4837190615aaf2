package smtpd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// session is one submission connection.
type session struct {
	srv  *Server
	conn *smtp.Conn
	addr netip.Addr
	helo string

	user     *User
	mailFrom string
	hasFrom  bool
	rcpts    []string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.limiter.locked(s.addr) {
		return nil, errAuthLocked
	}
	check := func(username, password string) error {
		if s.srv.limiter.locked(s.addr) {
			return errAuthLocked
		}
		u, ok := authenticate(s.srv.currentUsers(), username, password)
		if !ok {
			delay := s.srv.limiter.fail(s.addr)
			s.srv.log.Warn("auth failed", "user", username, "client", s.addr, "delay", delay)
			time.Sleep(delay)
			return errAuthFailed
		}
		s.srv.limiter.succeed(s.addr)
		s.user = u
		s.srv.log.Debug("auth ok", "user", username, "client", s.addr)
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return reply(535, smtp.EnhancedCode{5, 7, 8}, "Authorization identity must be empty or equal to the user name")
			}
			return check(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{auth: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.isClosing() {
		return errShutdown
	}
	if s.user == nil {
		return errAuthRequired
	}
	if from != "" {
		if err := checkAddress(from, "sender"); err != nil {
			return err
		}
	}
	s.mailFrom, s.hasFrom = from, true
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.user == nil {
		return errAuthRequired
	}
	if err := checkAddress(to, "recipient"); err != nil {
		return err
	}
	for _, r := range s.rcpts {
		if strings.EqualFold(r, to) {
			return nil // duplicate: one delivery is enough
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	sr := &strictReader{r: r}
	br := bufio.NewReaderSize(sr, 32<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		s.observe("rejected", time.Time{})
		return s.readFailure(sr, err, "header")
	}
	body, err := ReadBody(br)
	if err != nil {
		s.observe("rejected", time.Time{})
		return s.readFailure(sr, err, "body")
	}
	if sr.fault != nil {
		s.srv.log.Info("rejected", "user", s.user.Name, "client", s.addr, "reason", sr.fault.Message)
		s.observe("rejected", time.Time{})
		return sr.fault
	}
	start := time.Now()
	_, isTLS := s.conn.TLSConnectionState()
	sub := &Submission{User: s.user, RemoteAddr: s.addr, HELO: s.helo, TLS: isTLS,
		MailFrom: s.mailFrom, Rcpts: s.rcpts, Header: h, Body: body}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id, err := s.srv.opts.Submitter.Submit(ctx, sub)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			s.srv.log.Info("rejected", "user", s.user.Name, "client", s.addr, "code", se.Code, "reason", se.Message)
			s.observe("rejected", start)
			return se
		}
		s.srv.log.Error("submission failed", "user", s.user.Name, "client", s.addr, "err", err)
		s.observe("error", start)
		return errLocal
	}
	s.observe("accepted", start)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}

// observe reports a DATA result to the metrics hook; a zero start means
// the latency is not meaningful (refused before submission).
func (s *session) observe(result string, start time.Time) {
	if f := s.srv.opts.Observe; f != nil {
		var took time.Duration
		if !start.IsZero() {
			took = time.Since(start)
		}
		f(result, took)
	}
}

// readFailure turns an error while reading DATA into the reply: a
// protocol fault found by strictReader wins, then the size limit; a client
// that went away gets nothing queued.
func (s *session) readFailure(sr *strictReader, err error, part string) error {
	if sr.fault != nil {
		return sr.fault
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 552 {
			return errTooBig
		}
		return se
	}
	if errors.Is(err, smtp.ErrTooLongLine) {
		return errLineTooLong
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		s.srv.log.Info("client vanished during DATA; nothing queued", "client", s.addr)
		return reply(451, smtp.EnhancedCode{4, 4, 2}, "Connection lost during DATA; nothing was queued")
	}
	return reply(550, smtp.EnhancedCode{5, 6, 0}, "Malformed message %s: %v", part, err)
}

func (s *session) Reset() {
	s.mailFrom, s.hasFrom, s.rcpts = "", false, nil
}

func (s *session) Logout() error { return nil }

// checkAddress validates an envelope address: a local part and a domain name
// (or IDN); address literals, source routes and the %/! relay hacks are
// refused, since no legitimate application needs them.
func checkAddress(addr, what string) error {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return reply(553, smtp.EnhancedCode{5, 1, 3}, "Bad %s address syntax %q: expected local-part@domain", what, addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.HasPrefix(domain, "[") {
		return reply(553, smtp.EnhancedCode{5, 1, 3}, "Address literals are not accepted (%s %q): use a domain name", what, addr)
	}
	if strings.ContainsAny(local, "%!@") && !strings.HasPrefix(local, `"`) || strings.HasPrefix(addr, "@") {
		return reply(553, smtp.EnhancedCode{5, 1, 3}, "Source routes and %%/! relay syntax are not accepted (%s %q)", what, addr)
	}
	if strings.HasPrefix(local, `"`) && strings.ContainsAny(local[1:], "@%!") {
		return reply(553, smtp.EnhancedCode{5, 1, 3}, "Quoted local parts with @, %% or ! are not accepted (%s %q)", what, addr)
	}
	if !validDomain(domain) {
		return reply(553, smtp.EnhancedCode{5, 1, 2}, "Bad %s domain %q: not a valid domain name", what, domain)
	}
	return nil
}

// validDomain checks DNS name syntax (ASCII LDH labels or non-ASCII IDN
// labels, at least two labels).
func validDomain(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if len(d) == 0 || len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c > 127) {
				return false
			}
		}
	}
	return true
}
