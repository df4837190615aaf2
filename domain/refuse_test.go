package domain

import (
	"errors"
	"github.com/hermod-mta/hermod/control"
	"strings"
	"testing"
)

// TestAddDomainPlatformAndNeighbours: the platform's own domains, their
// registrable domain and everything under it are refused for every
// account; another account's domain tree is refused above and below; an
// account's own tree and unrelated look-alikes are accepted.
func TestAddDomainPlatformAndNeighbours(t *testing.T) {
	e := newEnv(t, "ed25519")
	// As the daemon passes them: default_from's domain, the bounce domain,
	// the platform DKIM domain.
	e.opts.PlatformDomains = []string{"makeleaps.invalid", "M.MakeLeaps.invalid.", "dkim.platform-sign.invalid"}
	e.reopen()
	e.account("acme", true)
	e.account("other", true)
	e.add("other", "corp.invalid")
	e.add("other", "mail.shop.invalid")

	for _, tc := range []struct {
		acct, input string
		want        *Error
	}{
		{"acme", "makeleaps.invalid", ErrPlatformDomain},
		{"acme", "MakeLeaps.invalid.", ErrPlatformDomain},
		{"acme", "m.makeleaps.invalid", ErrPlatformDomain},
		{"acme", "hermod-bounce.m.makeleaps.invalid", ErrPlatformDomain},
		{"acme", "anything.makeleaps.invalid", ErrPlatformDomain},
		{"acme", "dkim.platform-sign.invalid", ErrPlatformDomain},
		{"acme", "platform-sign.invalid", ErrPlatformDomain}, // the registrable parent of the DKIM domain
		{"acme", "x.dkim.platform-sign.invalid", ErrPlatformDomain},
		{"other", "makeleaps.invalid", ErrPlatformDomain},
		{"acme", "sub.corp.invalid", ErrSubdomainTaken},
		{"acme", "a.b.corp.invalid", ErrSubdomainTaken},
		{"acme", "shop.invalid", ErrParentTaken},
		{"acme", "x.mail.shop.invalid", ErrSubdomainTaken},
		{"acme", "corp.invalid", ErrTaken},
	} {
		_, err := e.s.AddDomain(tc.acct, tc.input)
		var got *Error
		if !errors.As(err, &got) || !errors.Is(err, tc.want) {
			t.Errorf("AddDomain(%q, %q) = %v; want code %s", tc.acct, tc.input, err, tc.want.Code)
			continue
		}
		if got.Status != tc.want.Status || !strings.Contains(got.Msg, strings.ToLower(strings.TrimSuffix(tc.input, "."))) {
			t.Errorf("AddDomain(%q, %q): status %d msg %q; want status %d and a message naming the input", tc.acct, tc.input, got.Status, got.Msg, tc.want.Status)
		}
	}
	if ds, _ := e.s.Domains("acme"); len(ds) != 0 {
		t.Errorf("refused domains were stored: %+v", ds)
	}
	// Accepted: look-alikes that are not under the platform or a
	// neighbour, and the other account's own subdomains and parents.
	for _, tc := range []struct{ acct, input string }{
		{"acme", "notmakeleaps.invalid"},
		{"acme", "makeleaps.invalid.example"},
		{"acme", "sign.invalid"},
		{"acme", "xcorp.invalid"},
		{"acme", "corp.invalid.example"},
		{"other", "sub.corp.invalid"},
		{"other", "shop.invalid"},
	} {
		if _, err := e.s.AddDomain(tc.acct, tc.input); err != nil {
			t.Errorf("AddDomain(%q, %q) = %v", tc.acct, tc.input, err)
		}
	}
	// Once other holds shop.invalid, acme's subdomain attempt names it.
	if _, err := e.s.AddDomain("acme", "www.shop.invalid"); !errors.Is(err, ErrSubdomainTaken) || !strings.Contains(err.Error(), "under shop.invalid") {
		t.Errorf("AddDomain(acme, www.shop.invalid) = %v", err)
	}
}

func TestPlatformDomainsOption(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.opts.PlatformDomains = []string{"bad_name.invalid"}
	cs, err := control.OpenBolt(e.db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cs, e.opts); err == nil {
		t.Errorf("Open accepted a platform domain that is not a host name")
	}
	for in, want := range map[string][]string{
		"":                     nil,
		"makeleaps.com":        {"makeleaps.com"},
		"m.makeleaps.com":      {"makeleaps.com"},
		"bounce.example.co.jp": {"example.co.jp"},
		"localhost":            {"localhost"},
	} {
		got, err := platformZones([]string{in, in})
		if err != nil || strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("platformZones(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
