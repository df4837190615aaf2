package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"
)

// DNS error kinds carried by DNSError.Kind and Result.DNS.
const (
	KindNXDomain  = "nxdomain"  // the name does not exist (authoritative)
	KindNoData    = "nodata"    // the name exists but has no record of the asked type
	KindServFail  = "servfail"  // every server failed or refused to answer
	KindTimeout   = "timeout"   // no server answered in time
	KindNullMX    = "nullmx"    // Result.DNS only: the domain publishes a null MX (RFC 7505)
	KindNoAddress = "noaddress" // Result.DNS only: no MX host has an address (authoritative)
)

const (
	defaultDNSTimeout = 3 * time.Second
	defaultAttempts   = 2
	maxNegativeTTL    = 5 * time.Minute
	maxPositiveTTL    = 24 * time.Hour
	ednsUDPSize       = 1232 // DNS flag day 2020 recommendation
	cacheSweepEvery   = 1024
)

// DNSError is the error every Resolver lookup returns when it gets no usable
// answer. Use errors.As to inspect it; IsNotFound tells an authoritative
// "does not exist" from a failure worth retrying.
type DNSError struct {
	Name string // the name that was looked up, as asked
	Kind string // KindNXDomain, KindNoData, KindServFail or KindTimeout
	Err  error  // the underlying cause, if any
}

// Error returns "dns: lookup NAME: KIND[: cause]".
func (e *DNSError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("dns: lookup %s: %s: %v", e.Name, e.Kind, e.Err)
	}
	return fmt.Sprintf("dns: lookup %s: %s", e.Name, e.Kind)
}

// Unwrap returns the underlying cause.
func (e *DNSError) Unwrap() error { return e.Err }

// Temporary reports whether retrying later may give another answer
// (SERVFAIL, timeouts).
func (e *DNSError) Temporary() bool { return e.Kind == KindServFail || e.Kind == KindTimeout }

// IsNotFound reports whether err is a *DNSError saying authoritatively that
// the name or the record does not exist (NXDOMAIN or no data).
func IsNotFound(err error) bool {
	var de *DNSError
	return errors.As(err, &de) && (de.Kind == KindNXDomain || de.Kind == KindNoData)
}

// MX is one mail exchanger record.
type MX struct {
	Host string // lower-case, without the trailing dot; "." for a null MX
	Pref uint16
}

// Resolver is a stub resolver over github.com/miekg/dns: UDP with TCP
// fallback on truncation, servers tried in order, answers (positive and
// negative) cached by TTL against an injectable clock. It is safe for
// concurrent use; identical concurrent queries share one exchange.
type Resolver struct {
	servers  []string
	now      func() time.Time
	timeout  time.Duration
	attempts int

	// observe, when set, is told each exchange with the servers (not
	// cache hits): the query type, how long it took and its error.
	observe func(qtype string, took time.Duration, err error)

	mu       sync.Mutex
	cache    map[cacheKey]cacheEntry
	inflight map[cacheKey]*call
	inserts  int
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	rrs     []dns.RR
	kind    string // "" for a positive answer, KindNXDomain or KindNoData
	expires time.Time
}

type call struct {
	done chan struct{}
	rrs  []dns.RR
	err  error
}

// NewResolver returns a Resolver asking servers ("ip:port", or "ip" for
// port 53) in order. With no servers it reads /etc/resolv.conf. now is the
// clock used for cache expiry (nil means time.Now). It returns an error when
// a server address is malformed or resolv.conf cannot be read.
func NewResolver(servers []string, now func() time.Time) (*Resolver, error) {
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("relay: reading resolv.conf: %w", err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
		if len(servers) == 0 {
			return nil, errors.New("relay: no nameserver in /etc/resolv.conf")
		}
	}
	norm := make([]string, 0, len(servers))
	for _, s := range servers {
		a, err := normaliseServer(s)
		if err != nil {
			return nil, err
		}
		norm = append(norm, a)
	}
	if now == nil {
		now = time.Now
	}
	return &Resolver{
		servers:  norm,
		now:      now,
		timeout:  defaultDNSTimeout,
		attempts: defaultAttempts,
		cache:    make(map[cacheKey]cacheEntry),
		inflight: make(map[cacheKey]*call),
	}, nil
}

// SetObserver registers f to be told every DNS exchange (metrics): the
// query type, its duration and its error (nil, or a *DNSError). Call it
// before the first lookup.
func (r *Resolver) SetObserver(f func(qtype string, took time.Duration, err error)) {
	r.observe = f
}

// SetTimeout sets how long one exchange with one server may take (default
// 3s); each server is tried twice in turn. Call it before the first lookup.
func (r *Resolver) SetTimeout(d time.Duration) {
	if d > 0 {
		r.timeout = d
	}
}

func normaliseServer(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("relay: DNS server %q: want ip or ip:port", s)
}

// toASCII converts a domain name with U-labels to its A-label form,
// lower-cased, without the trailing dot.
// ASCII names pass as they are (lower-cased): DNS names such as
// "sel._domainkey.example.com" carry underscores, which IDNA refuses.
func toASCII(name string) (string, error) {
	name = strings.TrimSuffix(name, ".")
	if isASCII(name) {
		if name == "" || strings.ContainsAny(name, " \t\r\n\\\"") {
			return "", fmt.Errorf("relay: invalid domain name %q", name)
		}
		return strings.ToLower(name), nil
	}
	a, err := idna.Lookup.ToASCII(name)
	if err != nil {
		return "", fmt.Errorf("relay: invalid domain name %q: %w", name, err)
	}
	return strings.ToLower(a), nil
}

// LookupMX returns the MX records of domain sorted by preference, records
// of equal preference in random order. A null MX (RFC 7505, a single
// record with host ".") is returned as one MX with Host "."; a "." among
// other records is dropped. When the domain exists but has no MX record the
// error is a *DNSError of kind KindNoData: the implicit MX (RFC 5321 5.1,
// the domain itself) is the caller's business, and Relay.Deliver applies it.
func (r *Resolver) LookupMX(ctx context.Context, domain string) ([]MX, error) {
	rrs, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]MX, 0, len(rrs))
	for _, rr := range rrs {
		m := rr.(*dns.MX)
		host := strings.ToLower(m.Mx)
		if host != "." {
			host = strings.TrimSuffix(host, ".")
		}
		mxs = append(mxs, MX{Host: host, Pref: m.Preference})
	}
	if len(mxs) == 1 && mxs[0].Host == "." {
		return mxs, nil
	}
	mxs = slices.DeleteFunc(mxs, func(m MX) bool { return m.Host == "." || m.Host == "" })
	if len(mxs) == 0 {
		return nil, &DNSError{Name: domain, Kind: KindNoData}
	}
	rand.Shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b MX) int { return cmp.Compare(a.Pref, b.Pref) })
	return mxs, nil
}

// LookupHost returns the IPv4 then the IPv6 addresses of host (A and AAAA
// are asked in parallel). An IP literal is returned as is. When neither
// family has an address the error is a *DNSError: KindNXDomain or
// KindNoData when both answers say so authoritatively, otherwise the
// failure (servfail, timeout). One family failing while the other has
// addresses is not an error.
func (r *Resolver) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	type res struct {
		rrs []dns.RR
		err error
	}
	ch := make(chan res, 1)
	go func() {
		rrs, err := r.query(ctx, host, dns.TypeAAAA)
		ch <- res{rrs, err}
	}()
	rrs4, err4 := r.query(ctx, host, dns.TypeA)
	v6 := <-ch
	var addrs []netip.Addr
	for _, rr := range rrs4 {
		if a, ok := netip.AddrFromSlice(rr.(*dns.A).A.To4()); ok {
			addrs = append(addrs, a)
		}
	}
	for _, rr := range v6.rrs {
		if a, ok := netip.AddrFromSlice(rr.(*dns.AAAA).AAAA.To16()); ok {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	switch {
	case err4 != nil && !IsNotFound(err4):
		return nil, err4
	case v6.err != nil && !IsNotFound(v6.err):
		return nil, v6.err
	case err4 != nil:
		var de *DNSError
		errors.As(err4, &de)
		kind := de.Kind
		if !errors.As(v6.err, &de) || de.Kind != KindNXDomain {
			kind = KindNoData // at least one family says the name exists
		}
		return nil, &DNSError{Name: host, Kind: kind}
	}
	return nil, &DNSError{Name: host, Kind: KindNoData}
}

// LookupTXT returns the TXT records of name, each record's character
// strings joined without separator (as DKIM and SPF require). The error is a
// *DNSError.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		var b strings.Builder
		for _, t := range rr.(*dns.TXT).Txt {
			b.WriteString(unescapeTXT(t))
		}
		out = append(out, b.String())
	}
	return out, nil
}

// LookupCNAME returns the target of the CNAME record at name, lower-case,
// without the trailing dot. A name without a CNAME record gives a *DNSError
// of kind KindNoData (or KindNXDomain).
func (r *Resolver) LookupCNAME(ctx context.Context, name string) (string, error) {
	rrs, err := r.query(ctx, name, dns.TypeCNAME)
	if err != nil {
		return "", err
	}
	// With a chain the resolver returns every link; the first is ours.
	asked, _ := toASCII(name)
	for _, rr := range rrs {
		if strings.EqualFold(strings.TrimSuffix(rr.Header().Name, "."), asked) {
			return strings.TrimSuffix(strings.ToLower(rr.(*dns.CNAME).Target), "."), nil
		}
	}
	return strings.TrimSuffix(strings.ToLower(rrs[0].(*dns.CNAME).Target), "."), nil
}

// query returns the answer records of type qtype for name, from the cache
// or from the servers. A successful result has at least one record.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	ascii, err := toASCII(name)
	if err != nil || ascii == "" {
		return nil, &DNSError{Name: name, Kind: KindNXDomain, Err: err}
	}
	key := cacheKey{dns.Fqdn(ascii), qtype}

	r.mu.Lock()
	if e, ok := r.cache[key]; ok {
		if r.now().Before(e.expires) {
			r.mu.Unlock()
			if e.kind != "" {
				return nil, &DNSError{Name: name, Kind: e.kind}
			}
			return e.rrs, nil
		}
		delete(r.cache, key)
	}
	if c, ok := r.inflight[key]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, &DNSError{Name: name, Kind: KindTimeout, Err: ctx.Err()}
		}
		if c.err != nil {
			var de *DNSError
			if errors.As(c.err, &de) {
				return nil, &DNSError{Name: name, Kind: de.Kind, Err: de.Err}
			}
			return nil, c.err
		}
		return c.rrs, nil
	}
	c := &call{done: make(chan struct{})}
	r.inflight[key] = c
	r.mu.Unlock()

	start := time.Now()
	rrs, entry, err := r.exchange(ctx, key)
	if r.observe != nil {
		r.observe(dns.TypeToString[key.qtype], time.Since(start), err)
	}
	if err != nil {
		var de *DNSError
		if errors.As(err, &de) {
			de.Name = name
		}
	}
	c.rrs, c.err = rrs, err

	r.mu.Lock()
	delete(r.inflight, key)
	if !entry.expires.IsZero() {
		r.cache[key] = entry
		r.inserts++
		if r.inserts%cacheSweepEvery == 0 {
			now := r.now()
			for k, e := range r.cache {
				if !now.Before(e.expires) {
					delete(r.cache, k)
				}
			}
		}
	}
	r.mu.Unlock()
	close(c.done)
	return rrs, err
}

// exchange asks the servers in turn. It returns the records, the cache
// entry to store (zero expires: do not cache) and the error.
func (r *Resolver) exchange(ctx context.Context, key cacheKey) ([]dns.RR, cacheEntry, error) {
	m := new(dns.Msg)
	m.SetQuestion(key.name, key.qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsUDPSize, false)

	udp := &dns.Client{Net: "udp", Timeout: r.timeout, UDPSize: ednsUDPSize}
	tcp := &dns.Client{Net: "tcp", Timeout: r.timeout}

	last := &DNSError{Kind: KindServFail}
	for range r.attempts {
		for _, server := range r.servers {
			if err := ctx.Err(); err != nil {
				return nil, cacheEntry{}, &DNSError{Kind: KindTimeout, Err: err}
			}
			resp, _, err := udp.ExchangeContext(ctx, m, server)
			if err == nil && resp.Truncated {
				resp, _, err = tcp.ExchangeContext(ctx, m, server)
			}
			if err != nil {
				kind := KindServFail
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
					kind = KindTimeout
				}
				last = &DNSError{Kind: kind, Err: fmt.Errorf("%s: %w", server, err)}
				continue
			}
			switch resp.Rcode {
			case dns.RcodeSuccess:
				return r.classify(key, resp)
			case dns.RcodeNameError:
				return nil, r.negative(KindNXDomain, resp), &DNSError{Kind: KindNXDomain}
			default:
				last = &DNSError{Kind: KindServFail, Err: fmt.Errorf("%s answered %s", server, dns.RcodeToString[resp.Rcode])}
			}
		}
	}
	return nil, cacheEntry{}, last
}

func (r *Resolver) classify(key cacheKey, resp *dns.Msg) ([]dns.RR, cacheEntry, error) {
	var rrs []dns.RR
	ttl := maxPositiveTTL
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Rrtype != key.qtype && h.Rrtype != dns.TypeCNAME {
			continue
		}
		// The chain's TTLs all bound the answer's lifetime.
		ttl = min(ttl, time.Duration(h.Ttl)*time.Second)
		if h.Rrtype == key.qtype {
			rrs = append(rrs, rr)
		}
	}
	if len(rrs) == 0 {
		return nil, r.negative(KindNoData, resp), &DNSError{Kind: KindNoData}
	}
	e := cacheEntry{rrs: rrs}
	if ttl > 0 {
		e.expires = r.now().Add(ttl)
	}
	return rrs, e, nil
}

// negative builds the cache entry of a negative answer: its lifetime is
// the SOA's TTL bounded by its MINIMUM field (RFC 2308 5), at most 5
// minutes; without SOA it is not cached.
func (r *Resolver) negative(kind string, resp *dns.Msg) cacheEntry {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl := min(time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second, maxNegativeTTL)
			if ttl <= 0 {
				return cacheEntry{}
			}
			return cacheEntry{kind: kind, expires: r.now().Add(ttl)}
		}
	}
	return cacheEntry{}
}

// unescapeTXT undoes the presentation-format escapes miekg/dns leaves in
// TXT strings (\" \\ and \DDD), giving the record's real bytes.
func unescapeTXT(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if n < 256 {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
