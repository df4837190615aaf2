package domain

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeDNS is an authoritative-looking DNS server on 127.0.0.1 serving a
// mutable zone with TTL 0, so that the resolver caches nothing.
type fakeDNS struct {
	Addr string

	mu       sync.Mutex
	txt      map[string][][]string // name → records → character strings
	cname    map[string]string
	servfail map[string]bool
}

func newFakeDNS(t *testing.T) *fakeDNS {
	t.Helper()
	f := &fakeDNS{txt: map[string][][]string{}, cname: map[string]string{}, servfail: map[string]bool{}}
	// UDP and TCP on the same port: long RSA records need TCP fallback.
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ; i++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if i == 20 {
			t.Fatal(err)
		}
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: f}, {Listener: ln, Handler: f}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	f.Addr = pc.LocalAddr().String()
	return f
}

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// SetTXT replaces the TXT records at name; each record is its strings.
func (f *fakeDNS) SetTXT(name string, records ...[]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(records) == 0 {
		delete(f.txt, fqdn(name))
		return
	}
	f.txt[fqdn(name)] = records
}

// SetCNAME sets (target "" removes) the CNAME at name; target is served
// as given, so case and trailing dot can be tested.
func (f *fakeDNS) SetCNAME(name, target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if target == "" {
		delete(f.cname, fqdn(name))
		return
	}
	f.cname[fqdn(name)] = target
}

func (f *fakeDNS) SetServFail(name string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.servfail[fqdn(name)] = on
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 0}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, hasTXT := f.txt[name]
	target, hasCNAME := f.cname[name]
	switch {
	case f.servfail[name]:
		m.Rcode = dns.RcodeServerFailure
	case hasCNAME && (q.Qtype == dns.TypeCNAME || q.Qtype == dns.TypeTXT):
		hdr.Rrtype = dns.TypeCNAME
		// Served as given, upper case and all.
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr, Target: dns.Fqdn(target)})
	case hasTXT && q.Qtype == dns.TypeTXT:
		hdr.Rrtype = dns.TypeTXT
		for _, rec := range f.txt[name] {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: rec})
		}
	case hasTXT:
		// The name exists without this type: NOERROR, no data.
	default:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// stubResolver is a plain miekg/dns client of the fake server, without
// cache, reporting errors as *net.DNSError like the standard library.
type stubResolver struct{ addr string }

func (r stubResolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	resp, _, err := (&dns.Client{Timeout: 2 * time.Second}).ExchangeContext(ctx, m, r.addr)
	if err == nil && resp.Truncated {
		resp, _, err = (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).ExchangeContext(ctx, m, r.addr)
	}
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTimeout: true}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	default:
		return nil, &net.DNSError{Err: dns.RcodeToString[resp.Rcode], Name: name, IsTemporary: true}
	}
	var out []dns.RR
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no data", Name: name, IsNotFound: true}
	}
	return out, nil
}

func (r stubResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.query(ctx, name, dns.TypeTXT)
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, err
}

func (r stubResolver) LookupCNAME(ctx context.Context, name string) (string, error) {
	rrs, err := r.query(ctx, name, dns.TypeCNAME)
	if err != nil {
		return "", err
	}
	return rrs[0].(*dns.CNAME).Target, nil
}
