package suppress

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeAddress(t *testing.T) {
	good := func(in, want string) {
		t.Helper()
		got, err := NormalizeAddress(in)
		if err != nil || got != want {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	good("Taro@Example.COM", "Taro@example.com")
	good("taro@example.com", "taro@example.com")
	good("  <Taro@Example.COM.>  ", "Taro@example.com")
	good("first.last+tag@sub.example.org", "first.last+tag@sub.example.org")
	good("!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~@example.com")
	good("user@_dmarc.example.com", "user@_dmarc.example.com")
	good("user@localhost", "user@localhost")
	good("taro@Bücher.Example", "taro@xn--bcher-kva.example")
	good("taro@XN--BCHER-KVA.example", "taro@xn--bcher-kva.example")
	good("taro@ＥＸＡＭＰＬＥ.com", "taro@example.com") // full-width, mapped by UTS #46
	good("太郎@例え.jp", "太郎@xn--r8jz45g.jp")
	good(`"taro"@example.com`, "taro@example.com")
	good(`"ta\ro"@example.com`, "taro@example.com")
	good(`"a b"@example.com`, `"a b"@example.com`)
	good(`"a\ b"@example.com`, `"a b"@example.com`)
	good(`"a@b"@example.com`, `"a@b"@example.com`)
	good(`"a\"b"@example.com`, `"a\"b"@example.com`)
	good(`".taro"@example.com`, `".taro"@example.com`)
	good("u@[192.0.2.1]", "u@[192.0.2.1]")
	good("u@[ipv6:2001:DB8::0:1]", "u@[IPv6:2001:db8::1]")
	good(strings.Repeat("a", 64)+"@example.com", strings.Repeat("a", 64)+"@example.com")

	bad := []string{
		"",
		"   ",
		"<>",
		"taro",
		"taro.example.com",
		"@example.com",
		"taro@",
		"taro@.",
		"taro@example..com",
		"taro@-example.com",
		"taro@exa mple.com",
		"taro@exa!mple.com",
		"taro@" + strings.Repeat("a", 64) + ".com",
		"ta ro@example.com",
		"ta\x00ro@example.com",
		"taro.@example.com",
		".taro@example.com",
		"ta..ro@example.com",
		"ta(ro@example.com",
		`"taro@example.com`,
		`"ta"ro"@example.com`,
		"\"ta\x01ro\"@example.com",
		"taro@example.com\xff",
		strings.Repeat("a", 65) + "@example.com",
		"u@[192.0.2.256]",
		"u@[2001:db8::1]",
		"u@[IPv6:192.0.2.1]",
		"u@[192.0.2.1",
		"taro@xn--a\u200d.example",
	}
	for _, in := range bad {
		got, err := NormalizeAddress(in)
		if !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want ErrInvalidAddress", in, got, err)
			continue
		}
		// The message must name the problem, not just the sentinel.
		if len(err.Error()) <= len(ErrInvalidAddress.Error())+2 {
			t.Errorf("NormalizeAddress(%q): unhelpful error %q", in, err)
		}
	}
}

func TestNormalizeAddressIdempotent(t *testing.T) {
	for _, in := range []string{"Taro@Example.COM", `"a\ b"@x.example`, "太郎@例え.jp", "u@[IPv6:2001:DB8::1]", `"taro"@x.example`} {
		once, err := NormalizeAddress(in)
		if err != nil {
			t.Fatalf("NormalizeAddress(%q): %v", in, err)
		}
		twice, err := NormalizeAddress(once)
		if err != nil || twice != once {
			t.Errorf("NormalizeAddress(%q) = %q, but NormalizeAddress(%q) = %q, %v", in, once, once, twice, err)
		}
	}
}

func FuzzNormalizeAddress(f *testing.F) {
	for _, s := range []string{"Taro@Example.COM", `"a b"@x`, "太郎@例え.jp", "u@[IPv6:::1]", "<x@y>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		once, err := NormalizeAddress(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("NormalizeAddress(%q): error %v does not wrap ErrInvalidAddress", in, err)
			}
			return
		}
		if strings.IndexByte(once, 0) >= 0 {
			t.Fatalf("NormalizeAddress(%q) = %q holds NUL", in, once)
		}
		twice, err := NormalizeAddress(once)
		if err != nil || twice != once {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", in, once, twice, err)
		}
	})
}
