package smtpd

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestCheckAddress(t *testing.T) {
	good := []string{"taro@example.com", "a.b+tag@sub.example.co.jp", `"quoted local"@example.com`, "x@例え.jp", "UPPER@EXAMPLE.COM"}
	bad := []string{"", "nobody", "@example.com", "taro@", "taro@[127.0.0.1]", "a%b@example.com", "a!b@example.com",
		"@relay.test:victim@dest.test", `"victim@dest.test"@example.com`, "taro@localhost", "taro@-bad.com", "taro@exa mple.com",
		"taro@" + strings.Repeat("a", 64) + ".com"}
	for _, a := range good {
		if err := checkAddress(a, "recipient"); err != nil {
			t.Errorf("checkAddress(%q) = %v, want nil", a, err)
		}
	}
	for _, a := range bad {
		err := checkAddress(a, "recipient")
		se, ok := err.(*smtp.SMTPError)
		if !ok {
			t.Errorf("checkAddress(%q) = %v, want an *smtp.SMTPError", a, err)
		} else if se.Code < 500 || se.EnhancedCode[0] != 5 {
			t.Errorf("checkAddress(%q) = %d %v, want a 5xx with enhanced code", a, se.Code, se.EnhancedCode)
		}
	}
}

// FuzzCheckAddress: any address accepted has exactly the shape the relay
// can route: one unquoted @ before a domain of valid labels, no literal.
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"taro@example.com", "a%b@c.d", `"x@y"@z.test`, "x@[1.2.3.4]", "@a:b@c.d", "x@例え.jp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if checkAddress(addr, "recipient") != nil {
			return
		}
		at := strings.LastIndexByte(addr, '@')
		if at <= 0 || !validDomain(addr[at+1:]) || strings.ContainsAny(addr[at+1:], "[]") {
			t.Fatalf("accepted %q", addr)
		}
		if local := addr[:at]; !strings.HasPrefix(local, `"`) && strings.ContainsAny(local, "%!@") {
			t.Fatalf("accepted relay syntax %q", addr)
		}
	})
}

func TestStrictReader(t *testing.T) {
	cases := map[string]string{
		"ok\r\nlines\r\n":                 "",
		"bare\nlf\r\n":                    "bare LF",
		"bare\rcr\r\n":                    "bare CR",
		"nul\x00\r\n":                     "NUL",
		strings.Repeat("x", 998) + "\r\n": "",
		strings.Repeat("x", 999) + "\r\n": "longer than 998",
		"end\r\n.\n":                      "bare LF",
		"end\r\r\n":                       "bare CR",
		"crlf split\r":                    "",
	}
	for in, want := range cases {
		sr := &strictReader{}
		sr.scan([]byte(in))
		got := ""
		if sr.fault != nil {
			got = sr.fault.Message
		}
		if want == "" && got != "" || want != "" && !strings.Contains(got, want) {
			t.Errorf("scan(%q) fault %q, want %q", in, got, want)
		}
	}
}
