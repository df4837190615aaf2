package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
)

// TestRotationRecordsLoadInBIND loads the new TXT records that `domain
// rotate` and `dkim rotate` print with named-checkzone (RSA-2048: more than
// 255 octets) and checks BIND read the new key's record unchanged.
func TestRotationRecordsLoadInBIND(t *testing.T) {
	tool := namedCheckzone(t)
	e := startZoneDaemon(t, "rsa")

	e.ok(t, "account", "set", "acme", "--owner", "owner@acme.example", "--custom-domain=true")
	e.ok(t, "domain", "add", "acme", "acme.example")
	out := e.ok(t, "domain", "rotate", "acme", "acme.example")
	stored, err := e.d.Domains.Domain("acme", "acme.example")
	if err != nil {
		t.Fatal(err)
	}
	r := stored.Rotation
	if r == nil || len(r.PublicTXT) <= 255 {
		t.Fatalf("rotation %+v: want an RSA record over 255 octets", r)
	}
	_, block, ok := strings.Cut(out, "Key rollover:")
	if !ok {
		t.Fatalf("no rollover block in:\n%s", out)
	}
	fromValue, zoneLine := printedRecord(t, block)
	owner := r.Selector + "._domainkey.acme.example"
	for what, line := range map[string]string{"name and value": fromValue, "zone line": zoneLine} {
		if got := loadZone(t, tool, "acme.example", owner, line); got != r.PublicTXT {
			t.Errorf("domain rotate, %s: BIND loaded %q, want %q", what, got, r.PublicTXT)
		}
	}

	out = e.ok(t, "dkim", "rotate")
	m := regexp.MustCompile(`(?m)^(hm[0-9]+\._domainkey\.makeleaps\.test)\.\tTXT\t.*$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no zone line in dkim rotate output:\n%s", out)
	}
	cfg, err := config.Load(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	_, _, pr, err := daemon.PlatformKey(cfg)
	if err != nil || pr == nil || len(pr.PublicTXT) <= 255 {
		t.Fatalf("platform rollover state: %+v %v", pr, err)
	}
	if got := loadZone(t, tool, "makeleaps.test", m[1], m[0]); got != pr.PublicTXT {
		t.Fatalf("dkim rotate: BIND loaded %q, want %q", got, pr.PublicTXT)
	}
	if sel, _ := e.d.PlatformSigner.Current(); sel != "hermod" {
		t.Fatalf("the new platform key signs (selector %s) before its record is seen", sel)
	}
}
