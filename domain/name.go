package domain

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"unicode"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// normalizeInput turns what a user typed into the "domain" box into the
// A-label (ASCII, lower-case, no trailing dot) and U-label forms of a bare
// domain name. It refuses with ErrNotADomain anything else: addresses,
// URLs, single labels, IP addresses, spaces and other garbage.
func normalizeInput(input string) (ascii, unicodeName string, err error) {
	s := strings.TrimFunc(input, unicode.IsSpace)
	bad := func(why string) error {
		return &Error{Code: CodeNotADomain, Status: http.StatusBadRequest, Msg: fmt.Sprintf(
			"%q is not a domain name (%s): enter only the part after \"@\" of your address, e.g. example.com", input, why)}
	}
	switch {
	case s == "":
		return "", "", bad("empty")
	case strings.ContainsAny(s, "@＠"):
		return "", "", bad("it contains @")
	case strings.Contains(s, "://") || strings.ContainsAny(s, "/:?#\\"):
		return "", "", bad("it looks like a URL")
	case strings.IndexFunc(s, unicode.IsSpace) >= 0:
		return "", "", bad("it contains spaces")
	}
	if _, perr := netip.ParseAddr(strings.Trim(s, "[]")); perr == nil {
		return "", "", bad("it is an IP address")
	}
	// UTS #46 maps full-width letters and ideographic full stops (typed
	// with a Japanese IME) to their ASCII forms, and rejects everything
	// outside letters, digits and hyphens (STD3 rules).
	a, ierr := idna.Lookup.ToASCII(s)
	if ierr != nil {
		return "", "", bad(ierr.Error())
	}
	a = strings.TrimSuffix(strings.ToLower(a), ".")
	if err := checkHostname(a); err != nil {
		return "", "", bad(err.Error())
	}
	if !strings.Contains(a, ".") {
		return "", "", bad("a single label")
	}
	u, ierr := idna.Lookup.ToUnicode(a)
	if ierr != nil {
		return "", "", bad(ierr.Error())
	}
	return a, u, nil
}

// checkHostname checks an A-label domain against RFC 1035 2.3.1 syntax
// (letters, digits, hyphens; labels of 1 to 63 octets not starting or
// ending with a hyphen; 253 octets in all) and refuses an all-numeric top
// label, which no real TLD has.
func checkHostname(a string) error {
	if len(a) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	labels := strings.Split(a, ".")
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("empty label")
		}
		if len(l) > 63 {
			return fmt.Errorf("label longer than 63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label starts or ends with a hyphen")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("numeric top-level label")
	}
	return nil
}

// normalizeName is the cheap normalisation used for look-ups (not for
// registration): lower-case, no trailing dot, U-labels converted.
func normalizeName(name string) string {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(name)
			if err != nil {
				return strings.ToLower(name)
			}
			return strings.ToLower(a)
		}
	}
	return strings.ToLower(name)
}

// isPublicSuffix reports whether the A-label domain is itself a public
// suffix (com, co.jp, github.io…) per the Public Suffix List, ICANN and
// private sections alike: nobody owns those, so nobody may register them.
func isPublicSuffix(ascii string) bool {
	ps, _ := publicsuffix.PublicSuffix(ascii)
	return ps == ascii
}

// freemail lists public mailbox providers whose addresses anyone can get:
// their domains can never be a customer's own sending domain (seed: "gmail
// and yahoo cannot be used; Google Workspace can"). An entry "name.*"
// matches name under any public suffix (gmx.de, gmx.net, gmx.co.uk…).
var freemail = []string{
	// Global.
	"gmail.com", "googlemail.com",
	"yahoo.*", "ymail.com", "rocketmail.com",
	"outlook.com", "outlook.jp", "hotmail.*", "live.com", "live.jp", "msn.com",
	"icloud.com", "me.com", "mac.com",
	"aol.com", "aim.com",
	"gmx.*", "web.de", "mail.com",
	"mail.ru", "inbox.ru", "list.ru", "bk.ru", "yandex.*",
	"proton.me", "protonmail.com", "pm.me",
	"tutanota.com", "tuta.io",
	"zoho.com", "fastmail.com",
	"qq.com", "163.com", "126.com", "yeah.net", "sina.com",
	"naver.com", "daum.net", "hanmail.net",
	// Japanese mobile carriers and portals.
	"yahoo.co.jp", "docomo.ne.jp", "ezweb.ne.jp", "au.com",
	"softbank.ne.jp", "i.softbank.jp",
}

// IsFreemail reports whether domain (A-label or U-label, any case, trailing
// dot allowed) is, or is under, a public mailbox provider: the embedded list
// plus extra, whose entries take the same forms ("example.net" or the
// any-public-suffix wildcard "gmx.*").
func IsFreemail(domain string, extra []string) bool {
	d := normalizeName(domain)
	if d == "" {
		return false
	}
	// The registrable domain (eTLD+1) is what the wildcard form names.
	reg, _ := publicsuffix.EffectiveTLDPlusOne(d)
	match := func(entry string) bool {
		e := normalizeName(entry)
		if name, ok := strings.CutSuffix(e, ".*"); ok {
			return reg != "" && strings.HasPrefix(reg, name+".") && isPublicSuffix(reg[len(name)+1:])
		}
		return e != "" && (d == e || strings.HasSuffix(d, "."+e))
	}
	for _, e := range freemail {
		if match(e) {
			return true
		}
	}
	for _, e := range extra {
		if match(e) {
			return true
		}
	}
	return false
}
