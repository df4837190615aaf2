package smtpd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/vocab"
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
	utf8     bool // MAIL FROM carried SMTPUTF8
	rcpts    []string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.limiter.locked(s.addr) {
		return nil, errAuthLocked
	}
	check := func(username, password string) error {
		// The attempt is counted before the password is hashed, so that
		// parallel guesses from one address stop at the lockout.
		if !s.srv.limiter.reserve(s.addr) {
			return errAuthLocked
		}
		users, dummy := s.srv.currentUsers()
		g := guardOf(s.conn.Conn())
		trusted := g != nil && g.l.trustedAddr(s.addr)
		u, ok, err := s.srv.hasher.authenticate(users, dummy, username, password, trusted)
		if err != nil {
			s.srv.limiter.release(s.addr)
			s.srv.log.Warn("auth: no hashing slot free", "client", s.addr, "err", err)
			return errAuthBusy
		}
		delay := s.srv.limiter.end(s.addr, ok)
		if !ok {
			// A name that is not a user may be a password typed into the
			// wrong field: the log gets a tag, never the text.
			name := username
			if _, known := users[username]; !known {
				name = s.srv.userTag(username)
			}
			s.srv.log.Warn("auth failed", "user", name, "client", s.addr, "delay", delay)
			time.Sleep(delay) // deliberate: slows down guessing
			return errAuthFailed
		}
		s.user = u
		if g != nil {
			g.authenticate()
		}
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
	if opts != nil && opts.Size > s.srv.opts.MaxMessageBytes {
		return errTooBig
	}
	utf8Mail := opts != nil && opts.UTF8
	var norm vocab.Address
	if from != "" {
		a, err := envelopeAddress(from, "sender", utf8Mail)
		if err != nil {
			return err
		}
		norm = a
	}
	s.mailFrom, s.hasFrom, s.utf8 = string(norm), true, utf8Mail
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.user == nil {
		return errAuthRequired
	}
	a, err := envelopeAddress(to, "recipient", s.utf8)
	if err != nil {
		return err
	}
	for _, r := range s.rcpts {
		if r == string(a) {
			return nil // duplicate: one delivery is enough
		}
	}
	s.rcpts = append(s.rcpts, string(a))
	return nil
}

func (s *session) Data(r io.Reader) error {
	g := guardOf(s.conn.Conn())
	if g != nil {
		g.setDataDeadline(s.srv.opts.Now().Add(s.srv.opts.DataTimeout))
		defer g.setDataDeadline(time.Time{})
	}
	sr := &strictReader{r: r, max: s.srv.opts.MaxMessageBytes}
	br := bufio.NewReaderSize(sr, 32<<10)
	h, err := readHeader(br, s.srv.opts.MaxHeaderBytes, s.srv.opts.MaxHeaderFields)
	if err != nil {
		s.observe("rejected", time.Time{})
		return s.readFailure(sr, g, err, "header")
	}
	body, err := ReadBody(br)
	if err != nil {
		s.observe("rejected", time.Time{})
		return s.readFailure(sr, g, err, "body")
	}
	if sr.fault != nil {
		s.srv.log.Info("rejected", "user", s.user.Name, "client", s.addr, "reason", sr.fault.Message)
		s.observe("rejected", time.Time{})
		return sr.fault
	}
	start := time.Now()
	_, isTLS := s.conn.TLSConnectionState()
	sub := &Submission{User: s.user, RemoteAddr: s.addr, HELO: s.helo, TLS: isTLS,
		MailFrom: s.mailFrom, Rcpts: s.rcpts, SMTPUTF8: s.utf8, Header: h, Body: body}
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
// protocol fault found by strictReader wins, then the size and header
// limits; a timeout or a client that went away gets 451 4.4.2 and nothing
// queued. Go error text never reaches the client.
func (s *session) readFailure(sr *strictReader, g *guardConn, err error, part string) error {
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
	var ne net.Error
	if g != nil && g.timedOut() || errors.As(err, &ne) && ne.Timeout() {
		s.srv.log.Info("timeout during DATA; nothing queued", "client", s.addr)
		return errDataTimeout
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		s.srv.log.Info("client vanished during DATA; nothing queued", "client", s.addr)
		return errDataLost
	}
	if errors.Is(err, errMalformedHeader) {
		return reply(550, smtp.EnhancedCode{5, 6, 0}, "Malformed message header: each header line must be a field name, a colon and a value, or a continuation")
	}
	s.srv.log.Warn("DATA read failed; nothing queued", "client", s.addr, "part", part, "err", err)
	return errDataLost
}

func (s *session) Reset() {
	s.mailFrom, s.hasFrom, s.rcpts, s.utf8 = "", false, nil, false
}

func (s *session) Logout() error { return nil }

// envelopeAddress checks an envelope address and returns its normalised
// form (vocab.ParseAddress): invalid UTF-8 and control characters are 553
// 5.1.3, non-ASCII without SMTPUTF8 on MAIL FROM is 553 5.6.7 (RFC 6531
// 3.5), then the policy of checkAddress applies. go-smtp hands a quoted
// local part over unquoted; it is quoted again here when it needs it.
func envelopeAddress(addr, what string, smtputf8 bool) (vocab.Address, error) {
	if !utf8.ValidString(addr) {
		return "", reply(553, smtp.EnhancedCode{5, 1, 3}, "Bad %s address: not valid UTF-8", what)
	}
	for _, r := range addr {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return "", reply(553, smtp.EnhancedCode{5, 1, 3}, "Bad %s address: control characters are not allowed", what)
		}
	}
	if !smtputf8 && !isASCII(addr) {
		return "", reply(553, smtp.EnhancedCode{5, 6, 7}, "Non-ASCII %s address needs SMTPUTF8 (RFC 6531) on MAIL FROM", what)
	}
	if err := checkAddress(addr, what); err != nil {
		return "", err
	}
	a, err := vocab.ParseAddress(addr)
	if err != nil {
		at := strings.LastIndexByte(addr, '@')
		a, err = vocab.ParseAddress(quoteLocal(addr[:at]) + addr[at:])
	}
	if err != nil {
		return "", reply(553, smtp.EnhancedCode{5, 1, 3}, "Bad %s address syntax %q", what, addr)
	}
	return a, nil
}

// quoteLocal returns local as an RFC 5321 quoted string.
func quoteLocal(local string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range local {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

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
