package vocab

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Address is a normalised mailbox address (see ParseAddress): local part as
// given (valid UTF-8, canonical quoting), domain in lower-case A-label form.
// Two Addresses are the same mailbox exactly when they are equal, so bounce
// matching, suppression and look-ups compare them with ==. Make one only
// with ParseAddress.
type Address string

// ErrInvalidAddress is wrapped by every error ParseAddress returns.
var ErrInvalidAddress = errors.New("invalid address")

// String returns the address as text.
func (a Address) String() string { return string(a) }

// Local returns the local part (before the last "@").
func (a Address) Local() string {
	if at := strings.LastIndexByte(string(a), '@'); at >= 0 {
		return string(a)[:at]
	}
	return string(a)
}

// Domain returns the domain (after the last "@"), in A-label form.
func (a Address) Domain() string {
	if at := strings.LastIndexByte(string(a), '@'); at >= 0 {
		return string(a)[at+1:]
	}
	return ""
}

// NeedsSMTPUTF8 reports whether the address cannot be sent without the
// SMTPUTF8 extension (RFC 6531): its local part is not ASCII. (The domain
// is always ASCII in normalised form.)
func (a Address) NeedsSMTPUTF8() bool { return !isASCII(string(a)) }

// domainProfile maps internationalised domains to their ASCII (A-label) form
// with the UTS #46 lookup mapping (which also folds case). A Profile is
// immutable, so sharing it is not mutable package state.
var domainProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true))

// ParseAddress returns the normalised form of a mailbox address, the one
// form hermod stores, forwards and compares (moved here from suppress, which
// keys its list by it). Surrounding spaces and angle brackets are removed.
//
// The domain is case-insensitive (RFC 5321 2.4): it is lower-cased, a trailing
// dot is dropped, and an internationalised domain is converted to its ASCII
// form ("Bücher.Example" becomes "xn--bcher-kva.example"). Address literals
// ("[192.0.2.1]", "[IPv6:2001:db8::1]") are put in canonical form.
//
// The local part is kept exactly as given, case included: RFC 5321 2.4 says
// only the destination host may interpret it, and mailboxes that differ in
// case can be different mailboxes. So "Taro@Example.COM" and
// "Taro@example.com" are the same address, but "taro@example.com" is another.
// The one rewrite is of quoting, which RFC 5321 4.1.2 makes insignificant:
// "\"taro\"@example.com" is "taro@example.com", and a local part that needs
// quotes is re-quoted with only '"' and '\' escaped.
//
// The error wraps ErrInvalidAddress and says what is wrong: no "@", an empty
// or over-long (more than 64 octets, RFC 5321 4.5.3.1.1) local part, a
// character a local part may not hold, or a domain that is not a valid host
// name or address literal.
func ParseAddress(addr string) (Address, error) {
	a := strings.TrimSpace(addr)
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") {
		a = strings.TrimSpace(a[1 : len(a)-1])
	}
	if a == "" {
		return "", fmt.Errorf("%w: empty address %q", ErrInvalidAddress, addr)
	}
	if !utf8.ValidString(a) {
		return "", fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidAddress, addr)
	}
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return "", fmt.Errorf("%w: %q has no @", ErrInvalidAddress, addr)
	}
	local, err := normalizeLocal(a[:at])
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidAddress, addr, err)
	}
	domain, err := normalizeDomain(a[at+1:])
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidAddress, addr, err)
	}
	return Address(local + "@" + domain), nil
}

// normalizeLocal validates a local part (RFC 5321 4.1.2, with UTF-8 allowed
// as in RFC 6531 3.3) and returns it with canonical quoting.
func normalizeLocal(local string) (string, error) {
	if local == "" {
		return "", errors.New("empty local part")
	}
	out := local
	if local[0] == '"' {
		content, err := unquote(local)
		if err != nil {
			return "", err
		}
		if isDotAtom(content) {
			out = content
		} else {
			out = requote(content)
		}
	} else if !isDotAtom(local) {
		return "", errors.New("local part is neither a dot-atom nor a quoted string")
	}
	if len(out) > 64 {
		return "", fmt.Errorf("local part is %d octets, more than 64", len(out))
	}
	return out, nil
}

// isAtext reports whether r may appear in an atom (RFC 5322 3.2.3, RFC 6532 3.2).
func isAtext(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	case r >= 0x80:
		return r != utf8.RuneError && r >= 0xa0 // no C1 controls
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

func isDotAtom(s string) bool {
	if s == "" {
		return false
	}
	for atom := range strings.SplitSeq(s, ".") {
		if atom == "" {
			return false
		}
		for _, r := range atom {
			if !isAtext(r) {
				return false
			}
		}
	}
	return true
}

// unquote returns the content of an RFC 5321 Quoted-string.
func unquote(q string) (string, error) {
	if len(q) < 2 || q[len(q)-1] != '"' {
		return "", errors.New("unterminated quoted local part")
	}
	var b strings.Builder
	inner := q[1 : len(q)-1]
	for i := 0; i < len(inner); {
		r, size := utf8.DecodeRuneInString(inner[i:])
		switch {
		case r == '\\':
			if i+1 >= len(inner) || inner[i+1] < 32 || inner[i+1] > 126 {
				return "", errors.New("bad quoted-pair in local part")
			}
			b.WriteByte(inner[i+1])
			i += 2
			continue
		case r == '"':
			return "", errors.New("unescaped quote in local part")
		case r < 32 || r == 127 || (r >= 0x80 && r < 0xa0):
			return "", errors.New("control character in local part")
		}
		b.WriteRune(r)
		i += size
	}
	return b.String(), nil
}

func requote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// normalizeDomain returns the lower-case ASCII form of a domain or the
// canonical form of an address literal (RFC 5321 4.1.3).
func normalizeDomain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		return normalizeLiteral(d)
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	a := d
	if !isASCII(d) {
		var err error
		a, err = domainProfile.ToASCII(d)
		if err != nil {
			return "", fmt.Errorf("domain %q: %w", d, err)
		}
	}
	// ASCII domains are only lower-cased and checked, not put through IDNA:
	// its STD3 rules would refuse the underscores some real host names carry.
	a = strings.ToLower(a)
	if err := checkHostname(a); err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return a, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// checkHostname checks a lower-case ASCII domain: at most 255 octets
// (RFC 5321 4.5.3.1.2), labels of 1 to 63 letters, digits, hyphens and
// underscores that neither start nor end with a hyphen.
func checkHostname(d string) error {
	if len(d) > 255 {
		return fmt.Errorf("%d octets, more than 255", len(d))
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("label of %d octets, more than 63", len(label))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("character %q not allowed in a host name", c)
			}
		}
	}
	return nil
}

func normalizeLiteral(d string) (string, error) {
	if len(d) < 3 || d[len(d)-1] != ']' {
		return "", fmt.Errorf("bad address literal %q", d)
	}
	inner := d[1 : len(d)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "ipv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", fmt.Errorf("bad IPv6 address literal %q", d)
		}
		return "[IPv6:" + ip.String() + "]", nil
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || !ip.Is4() {
		return "", fmt.Errorf("bad address literal %q", d)
	}
	return "[" + ip.String() + "]", nil
}
