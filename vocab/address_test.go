package vocab

import (
	"errors"
	"testing"
)

func TestParseAddress(t *testing.T) {
	for in, want := range map[string]Address{
		"太郎@例え.JP":            "太郎@xn--r8jz45g.jp",
		"<Taro@Example.COM.>": "Taro@example.com",
		`"a b"@example.com`:   `"a b"@example.com`,
	} {
		got, err := ParseAddress(in)
		if err != nil || got != want {
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	a, _ := ParseAddress("太郎@例え.jp")
	if a.Local() != "太郎" || a.Domain() != "xn--r8jz45g.jp" || !a.NeedsSMTPUTF8() {
		t.Errorf("%q: local %q domain %q needs SMTPUTF8 %v", a, a.Local(), a.Domain(), a.NeedsSMTPUTF8())
	}
	if b, _ := ParseAddress("taro@例え.jp"); b.NeedsSMTPUTF8() {
		t.Errorf("%q needs no SMTPUTF8 once the domain is an A-label", b)
	}
	for _, bad := range []string{"t\xff\xfe@example.jp", "a\x01b@example.com", "nobody", "x@-bad.example"} {
		if _, err := ParseAddress(bad); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("ParseAddress(%q): %v, want ErrInvalidAddress", bad, err)
		}
	}
}
