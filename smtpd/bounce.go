package smtpd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/mailbox"
)

// BounceRcpt is one accepted recipient of the bounce listener: a VERP address
// that decoded to (MessageID, Index), or a postmaster/abuse mailbox.
type BounceRcpt struct {
	Address   string
	MessageID string
	Index     int
	// Mailbox is "postmaster" or "abuse" for mail to a person, else "".
	Mailbox string
}

// BounceIntake receives what the bounce listener accepts.
type BounceIntake interface {
	// Known reports whether recipient index of message id exists, so that
	// bounces for unknown messages are refused at RCPT.
	Known(id string, index int) bool
	// Receive handles one message; it returns once the result is durable.
	Receive(ctx context.Context, remote netip.Addr, mailFrom string, rcpts []BounceRcpt, data []byte) error
}

// MailboxStore keeps mail for people (postmaster@, abuse@) within its
// limits; mailbox.Mailbox implements it. Deliver reads the message from r
// and returns once it is stored; its errors wrap the mailbox package's
// ErrTooBig, ErrQuota, ErrRate or ErrReserve when a limit refused it.
type MailboxStore interface {
	Deliver(ctx context.Context, client netip.Addr, mailFrom string, boxes []string, r io.Reader) (string, error)
}

// VERPDecoder decodes VERP addresses.
type VERPDecoder interface {
	ParseAddress(addr string) (msgID string, rcpt int, err error)
}

// BounceOptions configures the bounce listener.
type BounceOptions struct {
	Hostname string
	// BounceDomain is the platform bounce host; ReturnPathLabel the label of
	// customer return-path hosts (<label>.<customer domain>).
	BounceDomain        string
	ReturnPathLabel     string
	MaxMessageBytes     int64
	MaxConnections      int
	MaxConnectionsPerIP int
	IdleTimeout         time.Duration
	// MaxMessagesPerMinutePerIP caps the transactions one client address
	// may start per minute (default 120), so a flood of junk cannot
	// exhaust the listener.
	MaxMessagesPerMinutePerIP int
	// MaxConcurrentData bounds the DATA phases running at once (default 8);
	// others wait up to a minute, then get 451 4.3.2. Mail for people is
	// streamed to the Mailbox; only bounces for VERP addresses are held in
	// memory (for parsing), so memory is at most about
	// MaxConcurrentData × MaxMessageBytes.
	MaxConcurrentData int
	// MaxRcptFailures is how many refused RCPTs one session may make
	// (default 10), MaxRcptFailuresPerIP how many one client address
	// (IPv6: /64) may make per hour (default 30); beyond either, 421 4.7.0
	// and the connection is closed. VERP addresses cannot be guessed at
	// line speed then.
	MaxRcptFailures      int
	MaxRcptFailuresPerIP int
	VERP                 VERPDecoder
	Intake               BounceIntake
	// Mailbox stores mail for postmaster@ and abuse@; when nil, such mail
	// is handed to Intake with the rest.
	Mailbox MailboxStore
	Logger  *slog.Logger
	Now     func() time.Time
}

// BounceServer is the inbound MX for VERP addresses. It has no AUTH and
// relays nothing: RCPT is accepted only for a VERP address that verifies and
// names a known message, or for postmaster/abuse of the bounce domain.
type BounceServer struct {
	opts BounceOptions
	log  *slog.Logger

	srvs    servers
	dataSem chan struct{}

	mu       sync.Mutex // guards rate, failures and logged
	rate     map[netip.Addr]*window
	failures map[netip.Prefix]*window
	logged   map[netip.Prefix]*window
}

// NewBounceServer returns a bounce listener.
func NewBounceServer(opts BounceOptions) *BounceServer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 10 << 20
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 500
	}
	if opts.MaxConnectionsPerIP <= 0 {
		opts.MaxConnectionsPerIP = 10
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.MaxMessagesPerMinutePerIP <= 0 {
		opts.MaxMessagesPerMinutePerIP = 120
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxConcurrentData <= 0 {
		opts.MaxConcurrentData = 8
	}
	if opts.MaxRcptFailures <= 0 {
		opts.MaxRcptFailures = 10
	}
	if opts.MaxRcptFailuresPerIP <= 0 {
		opts.MaxRcptFailuresPerIP = 30
	}
	return &BounceServer{opts: opts, log: opts.Logger, rate: map[netip.Addr]*window{},
		dataSem:  make(chan struct{}, opts.MaxConcurrentData),
		failures: map[netip.Prefix]*window{}, logged: map[netip.Prefix]*window{}}
}

// rcptFailureWindow is the period MaxRcptFailuresPerIP counts over.
const rcptFailureWindow = time.Hour

// countIn adds n to the window of key in m (a new window when the current
// one is older than period) and returns the count; b.mu must be held.
func (b *BounceServer) countIn(m map[netip.Prefix]*window, key netip.Prefix, n int, period time.Duration) *window {
	now := b.opts.Now()
	if len(m) > 10000 {
		for k, w := range m {
			if now.Sub(w.start) > period {
				delete(m, k)
			}
		}
	}
	w := m[key]
	if w == nil || now.Sub(w.start) > period {
		w = &window{start: now}
		m[key] = w
	}
	w.n += n
	return w
}

// clientBlocked reports whether addr used up its RCPT failure budget.
func (b *BounceServer) clientBlocked(addr netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.countIn(b.failures, clientKey(addr), 0, rcptFailureWindow).n >= b.opts.MaxRcptFailuresPerIP
}

// rcptFailed counts a refused RCPT of addr, logs it at most once per
// client per minute (with the number refused since the last line), and
// reports whether the client is now over its budget.
func (b *BounceServer) rcptFailed(addr netip.Addr, rcpt, why string) bool {
	b.mu.Lock()
	key := clientKey(addr)
	over := b.countIn(b.failures, key, 1, rcptFailureWindow).n >= b.opts.MaxRcptFailuresPerIP
	lw := b.logged[key]
	now := b.opts.Now()
	logNow := lw == nil || now.Sub(lw.start) >= time.Minute
	var suppressed int
	if logNow {
		if lw != nil {
			suppressed = lw.n
		}
		b.logged[key] = &window{start: now} // a new minute from now
	} else {
		lw.n++
	}
	b.mu.Unlock()
	if logNow {
		b.log.Info("bounce: refused recipient", "client", addr, "rcpt", rcpt, "why", why, "refused_since_last_line", suppressed)
	}
	return over
}

// window counts transactions of one client address in the current minute.
type window struct {
	start time.Time
	n     int
}

// allow counts a new transaction from addr and reports whether it is within the rate.
func (b *BounceServer) allow(addr netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.opts.Now()
	if len(b.rate) > 10000 {
		for a, w := range b.rate {
			if now.Sub(w.start) > time.Minute {
				delete(b.rate, a)
			}
		}
	}
	w := b.rate[addr]
	if w == nil || now.Sub(w.start) > time.Minute {
		w = &window{start: now}
		b.rate[addr] = w
	}
	w.n++
	return w.n <= b.opts.MaxMessagesPerMinutePerIP
}

// Serve accepts connections on l until Shutdown.
func (b *BounceServer) Serve(l net.Listener) error {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		if b.srvs.isClosing() {
			return nil, errShutdown
		}
		if b.clientBlocked(remoteAddr(c.Conn())) {
			if g := guardOf(c.Conn()); g != nil {
				g.hangUp()
			}
			return nil, errTooManyRefused
		}
		return &bounceSession{b: b, conn: c, addr: remoteAddr(c.Conn())}, nil
	}))
	srv.Domain = b.opts.Hostname
	srv.MaxMessageBytes = b.opts.MaxMessageBytes + 1 // see Server.Serve; strictReader has the limit
	srv.MaxRecipients = 50
	srv.ReadTimeout = b.opts.IdleTimeout // the guardConn applies it per read
	srv.WriteTimeout = time.Minute
	srv.EnableSMTPUTF8 = true // DSNs about SMTPUTF8 mail come with it (RFC 6533)
	srv.ErrorLog = slogLogger{b.log}
	lim, err := b.srvs.register(srv, l, b.opts.MaxConnections, b.opts.MaxConnectionsPerIP, b.opts.Hostname,
		connPolicy{idle: b.opts.IdleTimeout}, b.opts.Now)
	if err != nil {
		return nil // stopping already
	}
	return serve(srv, lim)
}

// Shutdown drains the listener like Server.Shutdown.
func (b *BounceServer) Shutdown(ctx context.Context) error { return b.srvs.shutdown(ctx) }

type bounceSession struct {
	b        *BounceServer
	conn     *smtp.Conn
	addr     netip.Addr
	mailFrom string
	rcpts    []BounceRcpt
	failures int
	closing  bool
}

var (
	errNoSuchVERP     = reply(550, smtp.EnhancedCode{5, 1, 1}, "No such recipient here: this host only accepts bounces for addresses it issued")
	errTooManyRefused = reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many refused recipients; closing connection")
	errBounceBusy     = reply(451, smtp.EnhancedCode{4, 3, 2}, "Too many messages being received; try again later")
)

// hangUp makes the session end after the current reply: every later
// command gets err, and the connection is closed at the next read.
func (s *bounceSession) hangUp(err error) error {
	s.closing = true
	if g := guardOf(s.conn.Conn()); g != nil {
		g.hangUp()
	}
	return err
}

func (s *bounceSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.b.srvs.isClosing() {
		return errShutdown
	}
	if s.closing || s.b.clientBlocked(s.addr) {
		return s.hangUp(errTooManyRefused)
	}
	if !s.b.allow(s.addr) {
		s.b.log.Warn("bounce: rate limited", "client", s.addr)
		return reply(450, smtp.EnhancedCode{4, 7, 1}, "Too much mail from your address; try again later")
	}
	if opts != nil && opts.Size > s.b.opts.MaxMessageBytes {
		return errTooBig
	}
	s.mailFrom = from
	return nil
}

// ourHost reports whether host is the bounce domain or a customer
// return-path host (<label>.<domain>).
func (s *bounceSession) ourHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == strings.ToLower(s.b.opts.BounceDomain) {
		return true
	}
	label := strings.ToLower(s.b.opts.ReturnPathLabel)
	return label != "" && strings.HasPrefix(host, label+".") && validDomain(host[len(label)+1:])
}

// refuse counts a refused RCPT; over the session's or the client's budget
// the answer becomes 421 and the connection is closed.
func (s *bounceSession) refuse(to, why string, err error) error {
	s.failures++
	over := s.b.rcptFailed(s.addr, to, why)
	if over || s.failures >= s.b.opts.MaxRcptFailures {
		return s.hangUp(errTooManyRefused)
	}
	return err
}

func (s *bounceSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.closing {
		return s.hangUp(errTooManyRefused)
	}
	at := strings.LastIndexByte(to, '@')
	local, host := to, ""
	if at >= 0 {
		local, host = to[:at], to[at+1:]
	}
	lower := strings.ToLower(local)
	if (lower == "postmaster" || lower == "abuse") && (at < 0 && lower == "postmaster" || strings.EqualFold(host, s.b.opts.BounceDomain)) {
		s.add(BounceRcpt{Address: to, Mailbox: lower})
		return nil
	}
	if at < 0 || !s.ourHost(host) {
		return s.refuse(to, "not our host", reply(550, smtp.EnhancedCode{5, 7, 1}, "Relaying denied: this host accepts mail only for its own bounce addresses"))
	}
	id, idx, err := s.b.opts.VERP.ParseAddress(to)
	if err != nil || !s.b.opts.Intake.Known(id, idx) {
		return s.refuse(to, "invalid or unknown VERP", errNoSuchVERP)
	}
	s.add(BounceRcpt{Address: to, MessageID: id, Index: idx})
	return nil
}

// add records a recipient once: a repeated RCPT changes nothing.
func (s *bounceSession) add(r BounceRcpt) {
	for _, have := range s.rcpts {
		if have.Mailbox == r.Mailbox && have.MessageID == r.MessageID && have.Index == r.Index {
			return
		}
	}
	s.rcpts = append(s.rcpts, r)
}

// sinkWriter writes to w until the first error, then drops what follows
// (the DATA must still be read to its end).
type sinkWriter struct {
	w   io.Writer
	err error
}

func (s *sinkWriter) Write(p []byte) (int, error) {
	if s.err == nil {
		_, s.err = s.w.Write(p)
	}
	return len(p), nil
}

func (s *bounceSession) Data(r io.Reader) error {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case s.b.dataSem <- struct{}{}:
	case <-t.C:
		return errBounceBusy
	}
	defer func() { <-s.b.dataSem }()

	var boxes []string
	var verps []BounceRcpt
	for _, rc := range s.rcpts {
		if rc.Mailbox != "" && s.b.opts.Mailbox != nil {
			boxes = append(boxes, rc.Mailbox)
		} else {
			verps = append(verps, rc)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute+s.b.opts.IdleTimeout)
	defer cancel()

	sr := &strictReader{r: r, max: s.b.opts.MaxMessageBytes}
	var sinks []io.Writer
	var buf bytes.Buffer
	if len(verps) > 0 {
		sinks = append(sinks, &buf)
	}
	var pw *io.PipeWriter
	var box *sinkWriter
	mailboxDone := make(chan error, 1)
	if len(boxes) > 0 {
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		box = &sinkWriter{w: pw}
		sinks = append(sinks, box)
		go func() {
			_, err := s.b.opts.Mailbox.Deliver(ctx, s.addr, s.mailFrom, boxes, pr)
			pr.CloseWithError(errMailboxDone)
			mailboxDone <- err
		}()
	}
	_, err := io.Copy(io.MultiWriter(sinks...), sr)
	if pw != nil {
		if err != nil || sr.fault != nil {
			pw.CloseWithError(errAborted)
		} else {
			pw.Close()
		}
	}
	var boxErr error
	if len(boxes) > 0 {
		boxErr = <-mailboxDone
	}
	if err != nil {
		var se *smtp.SMTPError
		if sr.fault != nil {
			return sr.fault
		}
		if errors.As(err, &se) {
			if se.Code == 552 {
				return errTooBig
			}
			return se
		}
		if errors.Is(err, smtp.ErrTooLongLine) {
			return errLineTooLong
		}
		if g := guardOf(s.conn.Conn()); g != nil && g.timedOut() {
			return errDataTimeout
		}
		return reply(451, smtp.EnhancedCode{4, 4, 2}, "Connection lost during DATA; nothing was accepted")
	}
	if sr.fault != nil {
		return sr.fault
	}
	if boxErr != nil {
		return s.mailboxFailure(boxErr)
	}
	if len(verps) == 0 {
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: message kept"}
	}
	if err := s.b.opts.Intake.Receive(ctx, s.addr, s.mailFrom, verps, buf.Bytes()); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		s.b.log.Error("bounce: intake failed", "client", s.addr, "err", err)
		return errLocal
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: report received"}
}

var (
	errMailboxDone = errors.New("smtpd: mailbox stopped reading")
	errAborted     = errors.New("smtpd: DATA aborted")
)

// mailboxFailure answers a message the mailbox did not store.
func (s *bounceSession) mailboxFailure(err error) error {
	s.b.log.Warn("bounce: mail for a person not kept", "client", s.addr, "from", s.mailFrom, "err", err)
	switch {
	case errors.Is(err, mailbox.ErrTooBig):
		return errTooBig
	case errors.Is(err, mailbox.ErrQuota):
		return reply(452, smtp.EnhancedCode{4, 2, 2}, "Mailbox full; try again later")
	case errors.Is(err, mailbox.ErrRate):
		return reply(451, smtp.EnhancedCode{4, 7, 1}, "Too much mail from your address; try again later")
	case errors.Is(err, mailbox.ErrReserve):
		return reply(452, smtp.EnhancedCode{4, 3, 1}, "Insufficient system storage; try again later")
	}
	return errLocal
}

func (s *bounceSession) Reset()        { s.mailFrom, s.rcpts = "", nil }
func (s *bounceSession) Logout() error { return nil }
