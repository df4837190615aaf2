package daemon

import (
	"context"
	"crypto"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/relay"
)

// TestPlatformKeyRollover: the configured key signs until the new record is
// seen through hermod's resolver (a miekg/dns server), then the new one,
// also for a daemon started later (PlatformKey); a second rollover keeps
// the first one's key signing while it is pending.
func TestPlatformKeyRollover(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "127.0.0.1:1")
	srv := testnet.NewDNS(t)
	srv.SetNegativeTTL(0)
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	res, err := relay.NewResolver([]string{srv.Addr()}, clock)
	if err != nil {
		t.Fatal(err)
	}
	key0, _, err := dkim.LoadOrCreateKey(cfg.DataPath(cfg.Sender.DKIMKeyFile), dkim.AlgorithmEd25519)
	if err != nil {
		t.Fatal(err)
	}
	signer := dkim.NewSigner(cfg.Sender.DKIMDomain, cfg.Sender.DKIMSelector, key0)
	p := &platformKeys{cfg: cfg, signer: signer, resolver: res, grace: 25 * time.Hour, now: clock, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	publish := func(name, txt string) {
		srv.Set(name, dns.TypeTXT, &dns.TXT{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0}, Txt: []string{txt}})
	}

	v, err := p.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := v.Rotation
	if r == nil || r.Selector == cfg.Sender.DKIMSelector || r.OldSelector != cfg.Sender.DKIMSelector || r.Record.Zone == "" {
		t.Fatalf("rotation: %+v", r)
	}
	if _, err := p.Rotate(ctx); !errors.Is(err, &domain.Error{Code: domain.CodeRotationPending}) {
		t.Fatalf("second rotate while pending: %v", err)
	}
	now = now.Add(time.Minute)
	if v, err = p.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if sel, key := signer.Current(); sel != cfg.Sender.DKIMSelector || !sameKey(key, key0) || v.Rotation.Record.OK {
		t.Fatalf("before the record is published: selector %s, record %+v", sel, v.Rotation.Record)
	}
	publish(r.Record.Name, "v=DKIM1; k=ed25519; p=AAAAwrongkeyAAAA")
	if v, _ = p.Check(ctx); v.Selector != cfg.Sender.DKIMSelector {
		t.Fatalf("a wrong record switched the key to %s", v.Selector)
	}
	publish(r.Record.Name, r.PublicTXT)
	if v, err = p.Check(ctx); err != nil {
		t.Fatal(err)
	}
	sel1, key1 := signer.Current()
	if sel1 != r.Selector || sameKey(key1, key0) || v.Rotation.Switched.IsZero() || !v.Rotation.RemoveOldAfter.Equal(now.Add(25*time.Hour)) {
		t.Fatalf("after the record was seen: selector %s, rotation %+v", sel1, v.Rotation)
	}
	if sel, file, _, err := PlatformKey(cfg); err != nil || sel != r.Selector || file != filepath.Join(dir, r.KeyFile) {
		t.Fatalf("PlatformKey after the switch: %s %s %v", sel, file, err)
	}
	// A second rollover: while pending, the first rollover's key signs, after a restart too.
	now = now.Add(time.Hour)
	if _, err := p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if sel, file, _, err := PlatformKey(cfg); err != nil || sel != r.Selector || file != filepath.Join(dir, r.KeyFile) {
		t.Fatalf("PlatformKey while the second rollover is pending: %s %s %v", sel, file, err)
	}
}

func sameKey(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}
