package domain

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// newDNS starts the fake DNS server of the domain tests. Records are served
// with TTL 0 and negative answers without SOA, so that the resolver caches
// nothing.
func newDNS(t *testing.T) *testnet.DNS {
	t.Helper()
	d := testnet.NewDNS(t)
	d.SetNegativeTTL(0)
	return d
}

// setTXT replaces the TXT records at name; each record is its strings.
func setTXT(d *testnet.DNS, name string, records ...[]string) {
	rrs := make([]dns.RR, 0, len(records))
	for _, rec := range records {
		rrs = append(rrs, &dns.TXT{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: rec})
	}
	d.Set(name, dns.TypeTXT, rrs...)
}

// setCNAME sets (target "" removes) the CNAME at name; target is served
// as given, so case and trailing dot can be tested.
func setCNAME(d *testnet.DNS, name, target string) {
	if target == "" {
		d.Set(name, dns.TypeCNAME)
		return
	}
	d.Set(name, dns.TypeCNAME, &dns.CNAME{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeCNAME, Class: dns.ClassINET}, Target: dns.Fqdn(target)})
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
