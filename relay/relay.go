// Package relay delivers one message to one recipient over outbound SMTP:
// it routes the recipient's domain (static routes, else MX lookup through its
// own miekg/dns Resolver with implicit and null MX), tries the MX hosts in
// order with opportunistic STARTTLS, reuses connections per destination, and
// classifies the outcome as Sent, Temporary or Permanent with the remote reply.
//
// relay imports none of hermod's packages; the queue calls Deliver once per
// (message, recipient), each with its own envelope sender.
package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hermod-mta/hermod/vocab"
)

// Defaults applied to zero Options fields.
const (
	DefaultPort           = 25
	DefaultConcurrency    = 100
	DefaultPerDestination = 10
	DefaultConnectTimeout = 30 * time.Second
	DefaultCommandTimeout = 5 * time.Minute  // RFC 5321 4.5.3.2
	DefaultDataTimeout    = 10 * time.Minute // RFC 5321 4.5.3.2.6
	DefaultIdleTimeout    = 30 * time.Second
	// DefaultMXAddressLimit is how many MX addresses one delivery attempt
	// tries at most (Postfix smtp_mx_address_limit).
	DefaultMXAddressLimit = 5
	// DefaultMXSessionLimit is how many of them may result in a TCP
	// connection (Postfix smtp_mx_session_limit): 12 MX hosts that accept
	// and never greet cost at most DefaultMXSessionLimit × ConnectTimeout.
	DefaultMXSessionLimit = 2
)

// Route sends mail for a domain to a fixed host instead of its MX hosts.
type Route struct {
	// Domain is an exact domain, "*.suffix" for any subdomain of suffix (not
	// suffix itself), or "*" for every domain. Exact beats "*.suffix", a
	// longer suffix beats a shorter one, "*" comes last.
	Domain string
	// Host is "ip-or-name:port"; without a port Options.Port is used.
	Host string
}

// Options configures a Relay. Zero values mean the documented default.
type Options struct {
	Hostname       string        // EHLO name (required)
	Resolvers      []string      // DNS servers "ip:port" ("ip" means port 53); empty: read /etc/resolv.conf
	DNSTimeout     time.Duration // one DNS exchange with one server, default 3s
	Port           int           // port used on MX hosts, default 25
	Routes         []Route       // override MX lookup
	Concurrency    int           // max deliveries in progress overall (default 100)
	PerDestination int           // max connections (in use + idle) per destination ip:port (default 10)
	ConnectTimeout time.Duration // dial + greeting, default 30s
	CommandTimeout time.Duration // per SMTP command reply, default 5m (RFC 5321 4.5.3.2)
	DataTimeout    time.Duration // DATA transfer + final reply, default 10m
	IdleTimeout    time.Duration // how long an idle pooled connection is kept for reuse, default 30s
	TLSConfig      *tls.Config   // base config for STARTTLS (ServerName set per host); nil = default
	// MXAddressLimit is the most MX addresses tried per delivery attempt;
	// an MX host whose address lookup fails counts as one (default
	// DefaultMXAddressLimit).
	MXAddressLimit int
	// MXSessionLimit is the most addresses per attempt that may result in a
	// connection (TCP connected, or a pooled connection used); default
	// DefaultMXSessionLimit.
	MXSessionLimit int
	// AttemptTimeout bounds one Deliver call from the moment it holds a
	// Concurrency slot: DNS, waiting for a connection slot, every host tried
	// and the whole transaction. Default: MXSessionLimit × ConnectTimeout +
	// DataTimeout (finding a host that greets, then one full transfer).
	AttemptTimeout time.Duration
	// OwnNames are more names of this host besides Hostname (the names its
	// listeners greet with). A remote greeting or EHLO reply naming Hostname
	// or one of these is a mail loop: the delivery fails permanently with
	// Result.Loop set.
	OwnNames []string
	// Dialer opens TCP connections; nil means a net.Dialer.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger *slog.Logger     // nil = discard
	Now    func() time.Time // nil = time.Now (DNS cache and idle connection ages)
}

// Outcome classifies a delivery attempt. The zero value is not a valid
// outcome, so an unset Result never reads as Sent.
type Outcome int

// Outcomes of Deliver.
const (
	Sent      Outcome = iota + 1 // the MX accepted the message (2xx after DATA)
	Temporary                    // retry later: 4xx, network, TLS, SERVFAIL, timeouts
	Permanent                    // bounce: 5xx, NXDOMAIN, null MX, no address
)

// String returns "sent", "temporary" or "permanent".
func (o Outcome) String() string {
	switch o {
	case Sent:
		return "sent"
	case Temporary:
		return "temporary"
	case Permanent:
		return "permanent"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Stages reported in Result.Stage.
const (
	StageDNS       = "dns"
	StageConnect   = "connect"
	StageGreeting  = "greeting"
	StageEHLO      = "ehlo"
	StageSTARTTLS  = "starttls"
	StageMail      = "mail"
	StageRcpt      = "rcpt"
	StageData      = "data"        // the DATA command
	StageEndOfData = "end-of-data" // sending the message and the reply after the final dot
)

// Result is the outcome of one Deliver call.
type Result struct {
	Outcome Outcome
	// Phase is the SMTP step the reply (or failure) answered: connect for
	// DNS, connection and greeting failures; end-of-data for the reply after
	// the message and for failures while sending it. Always set.
	Phase        vocab.Phase
	Host         string // the MX host (name) that gave the final answer, "" if none reached
	Addr         string // its ip:port
	Code         int    // SMTP reply code (0 if none, e.g. DNS or network failure)
	EnhancedCode string // "5.1.1" if the server gave one, else ""
	// Text is the remote reply text after the code and enhanced code
	// (multi-line joined with "\n"), or a description of the local, DNS or
	// network failure.
	Text string
	// Stage refines Phase for logs: "dns", "connect", "greeting" (all
	// PhaseConnect), "ehlo", "starttls", "mail", "rcpt", "data",
	// "end-of-data".
	Stage string
	DNS   string // for DNS failures: "nxdomain", "nullmx", "noaddress", "servfail", "timeout"; else ""
	TLS   bool   // the session that gave the answer used STARTTLS
	// TLSVersion and TLSCipher name the negotiated protocol and cipher suite
	// of that session ("TLS 1.3", "TLS_AES_128_GCM_SHA256"); "" in plain text.
	TLSVersion string
	TLSCipher  string
	// Loop is set when the remote host greeted or answered EHLO with one of
	// this host's own names (Options.Hostname, OwnNames): the mail would
	// loop back to ourselves. Outcome is Permanent, EnhancedCode 5.4.6,
	// Code 0; classify it as a network failure, not as the recipient's.
	Loop bool
}

// String formats the result for logs: "temporary mx.example.test[192.0.2.1:25] rcpt 451 4.7.1 text".
func (r Result) String() string {
	var b strings.Builder
	b.WriteString(r.Outcome.String())
	if r.Host != "" || r.Addr != "" {
		fmt.Fprintf(&b, " %s[%s]", r.Host, r.Addr)
	}
	if r.Stage != "" {
		b.WriteString(" " + r.Stage)
	}
	if r.Code != 0 {
		fmt.Fprintf(&b, " %d", r.Code)
	}
	if r.EnhancedCode != "" {
		b.WriteString(" " + r.EnhancedCode)
	}
	if r.Text != "" {
		b.WriteString(" " + r.Text)
	}
	return b.String()
}

// Stats are counters for metrics and benchmarks.
type Stats struct {
	ConnectionsOpened uint64         // SMTP connections established (TCP connect succeeded)
	ConnectionsReused uint64         // deliveries that used a pooled connection
	Open              map[string]int // per destination ip:port: connections in use, idle or being dialled
	Idle              int            // pooled idle connections in total
	InProgress        int            // deliveries in progress
}

// Relay delivers messages. It is safe for concurrent use.
type Relay struct {
	opts   Options
	res    *Resolver
	log    *slog.Logger
	now    func() time.Time
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	routes atomic.Pointer[routeTable]
	sem    chan struct{}
	own    map[string]bool // normName of Hostname and OwnNames; read-only

	mu     sync.Mutex
	dests  map[string]*destination
	closed bool

	opened atomic.Uint64
	reused atomic.Uint64
}

// New returns a Relay for opts. It returns an error when Hostname is
// missing, a route or resolver address is malformed, or resolv.conf cannot
// be read.
func New(opts Options) (*Relay, error) {
	if opts.Hostname == "" {
		return nil, errors.New("relay: Hostname is required")
	}
	if strings.ContainsAny(opts.Hostname, " \r\n") {
		return nil, fmt.Errorf("relay: invalid Hostname %q", opts.Hostname)
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("relay: invalid Port %d", opts.Port)
	}
	opts.Concurrency = defInt(opts.Concurrency, DefaultConcurrency)
	opts.PerDestination = defInt(opts.PerDestination, DefaultPerDestination)
	opts.ConnectTimeout = defDur(opts.ConnectTimeout, DefaultConnectTimeout)
	opts.CommandTimeout = defDur(opts.CommandTimeout, DefaultCommandTimeout)
	opts.DataTimeout = defDur(opts.DataTimeout, DefaultDataTimeout)
	opts.IdleTimeout = defDur(opts.IdleTimeout, DefaultIdleTimeout)
	opts.MXAddressLimit = defInt(opts.MXAddressLimit, DefaultMXAddressLimit)
	opts.MXSessionLimit = defInt(opts.MXSessionLimit, DefaultMXSessionLimit)
	opts.AttemptTimeout = defDur(opts.AttemptTimeout, time.Duration(opts.MXSessionLimit)*opts.ConnectTimeout+opts.DataTimeout)
	own := make(map[string]bool)
	for _, n := range append([]string{opts.Hostname}, opts.OwnNames...) {
		if n = normName(n); n != "" {
			own[n] = true
		}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Dialer == nil {
		var d net.Dialer
		opts.Dialer = d.DialContext
	}
	rt, err := newRouteTable(opts.Routes, opts.Port)
	if err != nil {
		return nil, err
	}
	res, err := NewResolver(opts.Resolvers, opts.Now)
	if err != nil {
		return nil, err
	}
	if opts.DNSTimeout > 0 {
		res.SetTimeout(opts.DNSTimeout)
	}
	r := &Relay{
		opts:  opts,
		res:   res,
		log:   opts.Logger,
		now:   opts.Now,
		dial:  opts.Dialer,
		sem:   make(chan struct{}, opts.Concurrency),
		dests: make(map[string]*destination),
		own:   own,
	}
	r.routes.Store(rt)
	return r, nil
}

func defInt(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

func defDur(v, d time.Duration) time.Duration {
	if v <= 0 {
		return d
	}
	return v
}

// Resolver returns the Relay's resolver, for other lookups sharing its cache.
func (r *Relay) Resolver() *Resolver { return r.res }

// CheckRoutes returns an error describing the first malformed route, so a
// configuration can be validated before SetRoutes.
func CheckRoutes(routes []Route) error {
	_, err := newRouteTable(routes, DefaultPort)
	return err
}

// SetRoutes replaces the static routes (configuration reload). It is safe
// concurrently with Deliver; deliveries already routed keep their route.
// Malformed routes are skipped and logged; validate with CheckRoutes first.
func (r *Relay) SetRoutes(routes []Route) {
	good := make([]Route, 0, len(routes))
	for _, rt := range routes {
		if _, err := newRouteTable([]Route{rt}, r.opts.Port); err != nil {
			r.log.Warn("relay: route skipped", "err", err)
			continue
		}
		good = append(good, rt)
	}
	rt, _ := newRouteTable(good, r.opts.Port)
	r.routes.Store(rt)
}

// Stats returns a snapshot of the connection counters.
func (r *Relay) Stats() Stats {
	s := Stats{
		ConnectionsOpened: r.opened.Load(),
		ConnectionsReused: r.reused.Load(),
		Open:              make(map[string]int),
		InProgress:        len(r.sem),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, d := range r.dests {
		if d.open > 0 {
			s.Open[addr] = d.open
		}
		s.Idle += len(d.idle)
	}
	return s
}

// target is one host to try: an MX host, the implicit MX or a route.
type target struct {
	name string
	port int
}

// Message is the message a delivery sends: a complete RFC 5322 message with
// CRLF line endings, read where it is stored rather than copied per attempt.
type Message interface {
	io.ReaderAt
	Size() int64
}

// Bytes is a Message held in memory.
type Bytes []byte

// ReadAt implements io.ReaderAt.
func (b Bytes) ReadAt(p []byte, off int64) (int, error) { return bytes.NewReader(b).ReadAt(p, off) }

// Size is the length of b.
func (b Bytes) Size() int64 { return int64(len(b)) }

// Deliver sends body (a complete RFC 5322 message with CRLF line endings)
// from mailFrom to the single recipient rcptTo and reports the outcome; it
// never returns a zero Result. It blocks while Concurrency deliveries are in
// progress, or while the destination has PerDestination connections busy,
// honouring ctx (a cancelled ctx gives a Temporary result).
//
// The recipient's domain is converted to A-labels (IDNA) for routing and in
// RCPT TO. SMTPUTF8 is requested when the envelope or the header has non-
// ASCII bytes and the server offers it; a non-ASCII envelope to a server
// without SMTPUTF8 is a Permanent 5.6.7 (RFC 6531 3.4). 8-bit content is
// sent as is to servers without 8BITMIME (converting it would break the DKIM
// signature); go-smtp adds BODY=8BITMIME whenever the server offers it.
func (r *Relay) Deliver(ctx context.Context, mailFrom, rcptTo string, body Message) Result {
	res := r.deliver(ctx, mailFrom, rcptTo, body)
	if res.Phase == vocab.PhaseUnknown {
		res.Phase = phaseOf(res.Stage)
	}
	res.Text = truncateText(res.Text, MaxResultText)
	return res
}

// MaxResultText bounds Result.Text: a reply may be up to MaxReplyBytes,
// and the queue keeps the text of every attempt.
const MaxResultText = 4096

// truncateText cuts s to at most n bytes on a UTF-8 boundary, marking the cut.
func truncateText(s string, n int) string {
	const mark = " [...]"
	if len(s) <= n {
		return s
	}
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// phaseOf maps a Stage to its Phase; end-of-data is set where it happens.
func phaseOf(stage string) vocab.Phase {
	switch stage {
	case StageEHLO:
		return vocab.PhaseEHLO
	case StageSTARTTLS:
		return vocab.PhaseTLS
	case StageMail:
		return vocab.PhaseMail
	case StageRcpt:
		return vocab.PhaseRcpt
	case StageData:
		return vocab.PhaseData
	case StageEndOfData:
		return vocab.PhaseEndOfData
	}
	return vocab.PhaseConnect // dns, connect, greeting
}

func (r *Relay) deliver(ctx context.Context, mailFrom, rcptTo string, body Message) Result {
	local, domain, ok := splitAddress(rcptTo)
	if !ok || strings.ContainsAny(mailFrom, "\r\n<>") {
		return Result{Outcome: Permanent, Stage: StageRcpt, EnhancedCode: "5.1.3", Text: fmt.Sprintf("invalid envelope address: from <%s> to <%s>", mailFrom, rcptTo)}
	}
	if strings.HasPrefix(domain, "[") {
		return Result{Outcome: Permanent, Stage: StageDNS, DNS: KindNXDomain, Text: "address literals are not supported: " + domain}
	}
	asciiDomain, err := toASCII(domain)
	if err != nil || asciiDomain == "" {
		return Result{Outcome: Permanent, Stage: StageDNS, DNS: KindNXDomain, Text: fmt.Sprintf("invalid recipient domain %q", domain)}
	}
	rcptTo = local + "@" + asciiDomain
	if l, d, ok := splitAddress(mailFrom); ok {
		if a, err := toASCII(d); err == nil && !isASCII(d) {
			mailFrom = l + "@" + a
		}
	}

	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		return Result{Outcome: Temporary, Stage: StageConnect, Text: "delivery not started: " + ctx.Err().Error()}
	}
	parent := ctx
	ctx, cancel := context.WithTimeoutCause(ctx, r.opts.AttemptTimeout, errAttemptTimeout)
	defer cancel()

	env := envelope{
		from:     mailFrom,
		to:       rcptTo,
		domain:   asciiDomain,
		body:     body,
		needUTF8: !isASCII(mailFrom) || !isASCII(rcptTo),
		wantUTF8: !isASCII(mailFrom) || !isASCII(rcptTo) || !isASCII(string(headerOf(body))),
	}

	res := r.tryTargets(ctx, asciiDomain, env)
	if parent.Err() == nil && errors.Is(context.Cause(ctx), errAttemptTimeout) && res.Outcome != Sent && res.Code == 0 {
		// The attempt's own deadline ended it: say so rather than "use of
		// closed network connection".
		res.Outcome = Temporary
		res.Text = fmt.Sprintf("delivery attempt exceeded its time limit (%s): %s", r.opts.AttemptTimeout, res.Text)
	}
	return res
}

// errAttemptTimeout is the cause of an attempt context that hit
// Options.AttemptTimeout.
var errAttemptTimeout = errors.New("delivery attempt time limit reached")

// tryTargets tries the hosts for domain in order, within the address and
// session limits, until one gives an answer about the message.
func (r *Relay) tryTargets(ctx context.Context, domain string, env envelope) Result {
	targets, res, ok := r.targets(ctx, domain)
	if !ok {
		return res
	}
	var (
		last     Result
		tried    int     // addresses tried
		sessions int     // of which connected
		dnsErrs  []error // failed host lookups, each counted as an address
	)
	for _, t := range targets {
		addrs, err := r.res.LookupHost(ctx, t.name)
		if err != nil {
			dnsErrs = append(dnsErrs, err)
			// A host whose lookup fails uses up an address: 12 MX names
			// whose name servers never answer cost MXAddressLimit DNS
			// timeouts, not 12.
			if ctx.Err() != nil || tried+len(dnsErrs) >= r.opts.MXAddressLimit {
				break
			}
			continue
		}
		for _, a := range addrs {
			if a.IsUnspecified() || a.IsMulticast() {
				continue
			}
			addr := netip.AddrPortFrom(a, uint16(t.port)).String()
			res, next, connected := r.attempt(ctx, t.name, addr, env)
			last = res
			tried++
			if connected {
				sessions++
			}
			if !next || ctx.Err() != nil {
				return res
			}
			if tried+len(dnsErrs) >= r.opts.MXAddressLimit || sessions >= r.opts.MXSessionLimit {
				r.log.Debug("relay: MX limit reached", "domain", domain, "addresses", tried, "sessions", sessions)
				return last
			}
		}
	}
	if tried > 0 {
		return last
	}
	if ctx.Err() != nil && len(dnsErrs) == 0 {
		return Result{Outcome: Temporary, Stage: StageDNS, DNS: KindTimeout, Text: "no mail host tried: " + context.Cause(ctx).Error()}
	}
	return noAddressResult(domain, dnsErrs)
}

// targets returns the hosts to try for domain: the route, or the MX hosts,
// or the domain itself (implicit MX). ok false means res is final.
func (r *Relay) targets(ctx context.Context, domain string) (ts []target, res Result, ok bool) {
	if rt, found := r.routes.Load().lookup(domain); found {
		return []target{rt}, Result{}, true
	}
	mxs, err := r.res.LookupMX(ctx, domain)
	var de *DNSError
	switch {
	case err == nil:
	case errors.As(err, &de) && de.Kind == KindNoData:
		// RFC 5321 5.1: no MX, the domain itself is the implicit MX.
		return []target{{name: domain, port: r.opts.Port}}, Result{}, true
	case errors.As(err, &de) && de.Kind == KindNXDomain:
		return nil, Result{Outcome: Permanent, Stage: StageDNS, DNS: KindNXDomain, Text: err.Error()}, false
	case errors.As(err, &de):
		return nil, Result{Outcome: Temporary, Stage: StageDNS, DNS: de.Kind, Text: err.Error()}, false
	default:
		return nil, Result{Outcome: Temporary, Stage: StageDNS, DNS: KindServFail, Text: err.Error()}, false
	}
	if len(mxs) == 1 && mxs[0].Host == "." {
		// RFC 7505 3: the domain accepts no mail.
		return nil, Result{Outcome: Permanent, Stage: StageDNS, DNS: KindNullMX, Text: fmt.Sprintf("domain %s accepts no mail (null MX)", domain)}, false
	}
	for _, m := range mxs {
		ts = append(ts, target{name: m.Host, port: r.opts.Port})
	}
	return ts, Result{}, true
}

// noAddressResult builds the result when no host had an address: Permanent
// only if every lookup said authoritatively that there is none.
func noAddressResult(domain string, errs []error) Result {
	text := fmt.Sprintf("no address for any mail host of %s", domain)
	for _, err := range errs {
		if IsNotFound(err) {
			continue
		}
		kind := KindServFail
		var de *DNSError
		if errors.As(err, &de) {
			kind = de.Kind
		}
		return Result{Outcome: Temporary, Stage: StageDNS, DNS: kind, Text: text + ": " + err.Error()}
	}
	if len(errs) > 0 {
		text += ": " + errs[len(errs)-1].Error()
	}
	return Result{Outcome: Permanent, Stage: StageDNS, DNS: KindNoAddress, Text: text}
}

// splitAddress splits at the last "@". The local part may be empty only
// for nothing; the domain must not be empty.
func splitAddress(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 || strings.ContainsAny(addr, "\r\n<> ") {
		return "", "", false
	}
	return addr[:i], addr[i+1:], true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// headerOf returns the header section of msg (up to the first empty line),
// without copying the message.
// maxHeaderScan bounds how much of a message headerOf reads.
const maxHeaderScan = 1 << 20

// headerOf returns the header section of msg (at most its first MiB), read
// in small steps so that a large message is not copied to look at its head.
func headerOf(body Message) []byte {
	var head []byte
	buf := make([]byte, 8<<10)
	for off := int64(0); off < min(body.Size(), maxHeaderScan); {
		n, err := body.ReadAt(buf, off)
		head = append(head, buf[:n]...)
		// Look again from a little before the new bytes: the blank line may
		// straddle two reads.
		from := max(0, len(head)-n-3)
		if i := bytes.Index(head[from:], []byte("\r\n\r\n")); i >= 0 {
			return head[:from+i]
		}
		if i := bytes.Index(head[from:], []byte("\n\n")); i >= 0 {
			return head[:from+i]
		}
		off += int64(n)
		if err != nil || n == 0 {
			break
		}
	}
	return head
}

// routeTable is an immutable set of routes.
type routeTable struct {
	exact map[string]target
	wild  []wildRoute // longest suffix first
	any   *target
}

type wildRoute struct {
	suffix string // ".example.com"
	t      target
}

func newRouteTable(routes []Route, defPort int) (*routeTable, error) {
	rt := &routeTable{exact: make(map[string]target)}
	for _, ro := range routes {
		t, err := parseRouteHost(ro.Host, defPort)
		if err != nil {
			return nil, fmt.Errorf("relay: route %q: %w", ro.Domain, err)
		}
		d := strings.TrimSpace(ro.Domain)
		switch {
		case d == "*":
			rt.any = &t
		case strings.HasPrefix(d, "*."):
			s, err := toASCII(d[2:])
			if err != nil || s == "" {
				return nil, fmt.Errorf("relay: route %q: invalid domain", ro.Domain)
			}
			rt.wild = append(rt.wild, wildRoute{suffix: "." + s, t: t})
		default:
			s, err := toASCII(d)
			if err != nil || s == "" || strings.Contains(s, "*") {
				return nil, fmt.Errorf("relay: route %q: invalid domain", ro.Domain)
			}
			rt.exact[s] = t
		}
	}
	// Longest suffix first; stable so the first of equal suffixes wins.
	for i := 1; i < len(rt.wild); i++ {
		for j := i; j > 0 && len(rt.wild[j].suffix) > len(rt.wild[j-1].suffix); j-- {
			rt.wild[j], rt.wild[j-1] = rt.wild[j-1], rt.wild[j]
		}
	}
	return rt, nil
}

func parseRouteHost(h string, defPort int) (target, error) {
	host, portStr, err := net.SplitHostPort(h)
	port := defPort
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	} else {
		p, err := strconv.Atoi(portStr)
		if err != nil || p <= 0 || p > 65535 {
			return target{}, fmt.Errorf("invalid port in host %q", h)
		}
		port = p
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return target{name: a.String(), port: port}, nil
	}
	name, err := toASCII(host)
	if err != nil || name == "" || strings.ContainsAny(name, "/: ") {
		return target{}, fmt.Errorf("invalid host %q", h)
	}
	return target{name: name, port: port}, nil
}

func (rt *routeTable) lookup(domain string) (target, bool) {
	if t, ok := rt.exact[domain]; ok {
		return t, true
	}
	for _, w := range rt.wild {
		if strings.HasSuffix(domain, w.suffix) {
			return w.t, true
		}
	}
	if rt.any != nil {
		return *rt.any, true
	}
	return target{}, false
}
