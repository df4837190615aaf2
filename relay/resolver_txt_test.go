package relay

import "testing"

func TestUnescapeTXT(t *testing.T) {
	for in, want := range map[string]string{
		`v=DKIM1; p=abc`:  "v=DKIM1; p=abc",
		`a\"b`:            `a"b`,
		`a\\b`:            `a\b`,
		`p=AB\009CD`:      "p=AB\tCD",
		`tail\`:           `tail\`,
		`\059 semicolon`:  "; semicolon",
		`\999 not a byte`: "999 not a byte",
	} {
		if got := unescapeTXT(in); got != want {
			t.Errorf("unescapeTXT(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestToASCIIKeepsUnderscores(t *testing.T) {
	got, err := toASCII("HM1._domainkey.Example.TEST.")
	if err != nil || got != "hm1._domainkey.example.test" {
		t.Fatalf("toASCII = %q, %v", got, err)
	}
	if got, err := toASCII("例え.jp"); err != nil || got != "xn--r8jz45g.jp" {
		t.Fatalf("toASCII(IDN) = %q, %v", got, err)
	}
	if _, err := toASCII("bad name.test"); err == nil {
		t.Fatal("name with a space accepted")
	}
}
