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
	VERP                      VERPDecoder
	Intake                    BounceIntake
	Logger                    *slog.Logger
	Now                       func() time.Time
}

// BounceServer is the inbound MX for VERP addresses. It has no AUTH and
// relays nothing: RCPT is accepted only for a VERP address that verifies and
// names a known message, or for postmaster/abuse of the bounce domain.
type BounceServer struct {
	opts BounceOptions
	log  *slog.Logger

	srvs servers

	mu   sync.Mutex // guards rate
	rate map[netip.Addr]*window
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
	return &BounceServer{opts: opts, log: opts.Logger, rate: map[netip.Addr]*window{}}
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
		return &bounceSession{b: b, addr: remoteAddr(c.Conn())}, nil
	}))
	srv.Domain = b.opts.Hostname
	srv.MaxMessageBytes = b.opts.MaxMessageBytes
	srv.MaxRecipients = 50
	srv.ReadTimeout = b.opts.IdleTimeout
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = slogLogger{b.log}
	lim, err := b.srvs.register(srv, l, b.opts.MaxConnections, b.opts.MaxConnectionsPerIP, b.opts.Hostname)
	if err != nil {
		return nil // stopping already
	}
	return serve(srv, lim)
}

// Shutdown drains the listener like Server.Shutdown.
func (b *BounceServer) Shutdown(ctx context.Context) error { return b.srvs.shutdown(ctx) }

type bounceSession struct {
	b        *BounceServer
	addr     netip.Addr
	mailFrom string
	rcpts    []BounceRcpt
}

var errNoSuchVERP = reply(550, smtp.EnhancedCode{5, 1, 1}, "No such recipient here: this host only accepts bounces for addresses it issued")

func (s *bounceSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.b.srvs.isClosing() {
		return errShutdown
	}
	if !s.b.allow(s.addr) {
		s.b.log.Warn("bounce: rate limited", "client", s.addr)
		return reply(450, smtp.EnhancedCode{4, 7, 1}, "Too much mail from your address; try again later")
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

func (s *bounceSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	at := strings.LastIndexByte(to, '@')
	local, host := to, ""
	if at >= 0 {
		local, host = to[:at], to[at+1:]
	}
	lower := strings.ToLower(local)
	if (lower == "postmaster" || lower == "abuse") && (at < 0 && lower == "postmaster" || strings.EqualFold(host, s.b.opts.BounceDomain)) {
		s.rcpts = append(s.rcpts, BounceRcpt{Address: to, Mailbox: lower})
		return nil
	}
	if at < 0 || !s.ourHost(host) {
		s.b.log.Info("bounce: refused recipient", "client", s.addr, "rcpt", to, "why", "not our host")
		return reply(550, smtp.EnhancedCode{5, 7, 1}, "Relaying denied: this host accepts mail only for its own bounce addresses")
	}
	id, idx, err := s.b.opts.VERP.ParseAddress(to)
	if err != nil || !s.b.opts.Intake.Known(id, idx) {
		s.b.log.Info("bounce: refused recipient", "client", s.addr, "rcpt", to, "why", "invalid or unknown VERP")
		return errNoSuchVERP
	}
	s.rcpts = append(s.rcpts, BounceRcpt{Address: to, MessageID: id, Index: idx})
	return nil
}

func (s *bounceSession) Data(r io.Reader) error {
	sr := &strictReader{r: r}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, sr); err != nil {
		var se *smtp.SMTPError
		if sr.fault != nil {
			return sr.fault
		}
		if errors.As(err, &se) {
			return se
		}
		if errors.Is(err, smtp.ErrTooLongLine) {
			return errLineTooLong
		}
		return reply(451, smtp.EnhancedCode{4, 4, 2}, "Connection lost during DATA; nothing was accepted")
	}
	if sr.fault != nil {
		return sr.fault
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.b.opts.Intake.Receive(ctx, s.addr, s.mailFrom, s.rcpts, buf.Bytes()); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		s.b.log.Error("bounce: intake failed", "client", s.addr, "err", err)
		return errLocal
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: report received"}
}

func (s *bounceSession) Reset()        { s.mailFrom, s.rcpts = "", nil }
func (s *bounceSession) Logout() error { return nil }
