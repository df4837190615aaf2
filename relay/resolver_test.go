package relay

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/hermod-mta/hermod/internal/testnet"
)

func newTestResolver(t testing.TB, d *testnet.DNS, clock *fakeClock) *Resolver {
	t.Helper()
	r, err := NewResolver([]string{d.Addr()}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	r.SetTimeout(200 * time.Millisecond)
	return r
}

func TestResolverMXSortedAndCached(t *testing.T) {
	d := testnet.NewDNS(t)
	d.Add(
		"example.test. 300 IN MX 30 c.example.test.",
		"example.test. 300 IN MX 10 A.Example.Test.",
		"example.test. 300 IN MX 20 b.example.test.",
	)
	clock := newFakeClock()
	r := newTestResolver(t, d, clock)
	want := []MX{{"a.example.test", 10}, {"b.example.test", 20}, {"c.example.test", 30}}
	for i := range 3 {
		got, err := r.LookupMX(t.Context(), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("lookup %d: LookupMX = %v, want %v", i, got, want)
		}
	}
	if n := d.Queries("example.test", dns.TypeMX); n != 1 {
		t.Errorf("%d MX queries for 3 lookups within the TTL, want 1", n)
	}
	clock.Advance(299 * time.Second)
	if _, err := r.LookupMX(t.Context(), "EXAMPLE.test."); err != nil {
		t.Fatal(err)
	}
	if n := d.Queries("example.test", dns.TypeMX); n != 1 {
		t.Errorf("%d MX queries before the TTL passed, want 1", n)
	}
	clock.Advance(2 * time.Second)
	if _, err := r.LookupMX(t.Context(), "example.test"); err != nil {
		t.Fatal(err)
	}
	if n := d.Queries("example.test", dns.TypeMX); n != 2 {
		t.Errorf("%d MX queries after the TTL passed, want 2", n)
	}
}

func TestResolverNegativeCache(t *testing.T) {
	d := testnet.NewDNS(t)
	d.SetNegativeTTL(30)
	d.Add("exists.test. 300 IN A 192.0.2.1")
	clock := newFakeClock()
	r := newTestResolver(t, d, clock)
	for _, tc := range []struct {
		name string
		kind string
	}{{"missing.test", KindNXDomain}, {"exists.test", KindNoData}} {
		for range 2 {
			_, err := r.LookupMX(t.Context(), tc.name)
			var de *DNSError
			if !errors.As(err, &de) || de.Kind != tc.kind || !IsNotFound(err) || de.Temporary() {
				t.Fatalf("LookupMX(%s) error = %v, want a not-found *DNSError of kind %s", tc.name, err, tc.kind)
			}
		}
		if n := d.Queries(tc.name, dns.TypeMX); n != 1 {
			t.Errorf("%s: %d queries, want 1 (negative answer cached)", tc.name, n)
		}
	}
	clock.Advance(31 * time.Second) // the SOA minimum
	_, _ = r.LookupMX(t.Context(), "missing.test")
	if n := d.Queries("missing.test", dns.TypeMX); n != 2 {
		t.Errorf("%d queries after the SOA minimum passed, want 2", n)
	}
}

func TestResolverFailuresNotCached(t *testing.T) {
	d := testnet.NewDNS(t)
	d.ServFail("broken.test", true)
	r := newTestResolver(t, d, newFakeClock())
	for range 2 {
		_, err := r.LookupTXT(t.Context(), "broken.test")
		var de *DNSError
		if !errors.As(err, &de) || de.Kind != KindServFail || !de.Temporary() || IsNotFound(err) {
			t.Fatalf("LookupTXT error = %v, want temporary servfail", err)
		}
	}
	// Two attempts per lookup, each asked again the second time.
	if n := d.Queries("broken.test", dns.TypeTXT); n != 4 {
		t.Errorf("%d queries, want 4 (SERVFAIL is retried and not cached)", n)
	}
}

func TestResolverTimeout(t *testing.T) {
	d := testnet.NewDNS(t)
	d.Timeout("slow.test", true)
	r := newTestResolver(t, d, newFakeClock())
	_, err := r.LookupHost(t.Context(), "slow.test")
	var de *DNSError
	if !errors.As(err, &de) || de.Kind != KindTimeout || de.Name != "slow.test" {
		t.Fatalf("LookupHost error = %v, want timeout for slow.test", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := r.LookupMX(ctx, "other.test"); !errors.As(err, &de) || de.Kind != KindTimeout {
		t.Errorf("LookupMX with a cancelled context: %v, want timeout", err)
	}
}

func TestResolverTruncationFallsBackToTCP(t *testing.T) {
	d := testnet.NewDNS(t)
	d.Add("big.test. 300 IN TXT \"v=DKIM1; k=rsa; \" \"p=MIIB\"")
	d.Truncate("big.test", true)
	r := newTestResolver(t, d, newFakeClock())
	got, err := r.LookupTXT(t.Context(), "big.test")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"v=DKIM1; k=rsa; p=MIIB"}; !reflect.DeepEqual(got, want) {
		t.Errorf("LookupTXT = %q, want %q (strings joined)", got, want)
	}
	if d.TCPQueries() != 1 {
		t.Errorf("%d TCP queries, want 1", d.TCPQueries())
	}
}

func TestResolverHostCNAMEAndNullMX(t *testing.T) {
	d := testnet.NewDNS(t)
	d.Add(
		"dual.test. 300 IN A 192.0.2.1",
		"dual.test. 300 IN AAAA 2001:db8::1",
		"v6.test. 300 IN AAAA 2001:db8::2",
		"rp.customer.test. 300 IN CNAME M.Bounce.Test.",
		"nomail.test. 300 IN MX 0 .",
		"mixed.test. 300 IN MX 0 .",
		"mixed.test. 300 IN MX 10 mx.mixed.test.",
	)
	r := newTestResolver(t, d, newFakeClock())
	ctx := t.Context()

	addrs, err := r.LookupHost(ctx, "dual.test")
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	if err != nil || !reflect.DeepEqual(addrs, want) {
		t.Errorf("LookupHost(dual.test) = %v, %v; want %v", addrs, err, want)
	}
	if addrs, err := r.LookupHost(ctx, "v6.test"); err != nil || len(addrs) != 1 || !addrs[0].Is6() {
		t.Errorf("LookupHost(v6.test) = %v, %v; want the IPv6 address", addrs, err)
	}
	if addrs, err := r.LookupHost(ctx, "192.0.2.7"); err != nil || addrs[0] != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("LookupHost(literal) = %v, %v", addrs, err)
	}
	if _, err := r.LookupHost(ctx, "nowhere.test"); !IsNotFound(err) {
		t.Errorf("LookupHost(nowhere.test) error = %v, want not found", err)
	}
	if got, err := r.LookupCNAME(ctx, "rp.customer.test"); err != nil || got != "m.bounce.test" {
		t.Errorf("LookupCNAME = %q, %v; want m.bounce.test", got, err)
	}
	if _, err := r.LookupCNAME(ctx, "dual.test"); !IsNotFound(err) {
		t.Errorf("LookupCNAME(no CNAME) error = %v, want not found", err)
	}
	if got, err := r.LookupMX(ctx, "nomail.test"); err != nil || !reflect.DeepEqual(got, []MX{{".", 0}}) {
		t.Errorf("LookupMX(null MX) = %v, %v; want [{. 0}]", got, err)
	}
	if got, err := r.LookupMX(ctx, "mixed.test"); err != nil || !reflect.DeepEqual(got, []MX{{"mx.mixed.test", 10}}) {
		t.Errorf("LookupMX(. among others) = %v, %v; want the real host only", got, err)
	}
}

func TestResolverSharesConcurrentQueries(t *testing.T) {
	d := testnet.NewDNS(t)
	d.Add("example.test. 300 IN MX 10 mx.example.test.")
	r := newTestResolver(t, d, newFakeClock())
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := r.LookupMX(t.Context(), "example.test"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := d.Queries("example.test", dns.TypeMX); n != 1 {
		t.Errorf("%d queries for 50 concurrent lookups, want 1", n)
	}
}

func TestNewResolverRejectsBadServer(t *testing.T) {
	for _, s := range []string{"dns.test", "127.0.0.1:x", ""} {
		if _, err := NewResolver([]string{s}, nil); err == nil {
			t.Errorf("NewResolver(%q) succeeded, want an error", s)
		}
	}
	r, err := NewResolver([]string{"127.0.0.1"}, nil)
	if err != nil || r.servers[0] != "127.0.0.1:53" {
		t.Errorf("NewResolver(127.0.0.1) = %v, %v; want port 53", r, err)
	}
}

// BenchmarkMXCache measures the cached LookupMX path (what every delivery
// to a busy domain takes).
func BenchmarkMXCache(b *testing.B) {
	d := testnet.NewDNS(b)
	d.Add(
		"example.test. 300 IN MX 10 mx1.example.test.",
		"example.test. 300 IN MX 10 mx2.example.test.",
		"example.test. 300 IN MX 20 mx3.example.test.",
	)
	r := newTestResolver(b, d, newFakeClock())
	ctx := b.Context()
	if _, err := r.LookupMX(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.LookupMX(ctx, "example.test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if n := d.Queries("example.test", dns.TypeMX); n != 1 {
		b.Errorf("%d queries, want 1", n)
	}
}
