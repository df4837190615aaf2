package bounce

import (
	"strings"

	"golang.org/x/net/idna"
)

// NormalizeAddress returns the form in which two addresses are compared:
// surrounding angle brackets, quotes and an "rfc822;" type removed, the
// domain lower-cased and converted to its A-label (IDNA 2008, UTS #46
// lookup profile), so that "taro@例え.jp", "Taro@XN--R8JZ45G.JP" and
// "rfc822; <taro@xn--r8jz45g.jp>" agree. The local part is kept as it is
// (SameAddress folds its case). A domain that is not a valid IDN is only
// lower-cased; "" stays "".
func NormalizeAddress(a string) string {
	a = normAddr(a)
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return a
	}
	local, domain := a[:at], strings.TrimSuffix(a[at+1:], ".")
	if ascii, err := idna.Lookup.ToASCII(domain); err == nil && ascii != "" {
		domain = ascii
	}
	return local + "@" + strings.ToLower(domain)
}

// SameAddress reports whether a and b name the same mailbox: their
// normalised forms (NormalizeAddress) are equal, the local part compared
// without regard to case, since mail systems fold it often enough that a
// report naming Taro@ for taro@ is about the same person. An empty address
// matches nothing.
func SameAddress(a, b string) bool {
	na, nb := NormalizeAddress(a), NormalizeAddress(b)
	return na != "" && nb != "" && strings.EqualFold(na, nb)
}
