package sender

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/emersion/go-message/textproto"
)

var testRule = Rule{
	DefaultFrom:     "bounce@makeleaps.com",
	DisplayTemplate: "{name} (via MakeLeaps)",
	BounceDomain:    "m.makeleaps.com",
	ReturnPathLabel: "mlbounce",
}

// readHeader parses a raw header block (fields only; the blank line is added).
func readHeader(t testing.TB, raw string) textproto.Header {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(raw + "\r\n")))
	if err != nil {
		t.Fatalf("ReadHeader(%q): %v", raw, err)
	}
	return h
}

func writeHeader(t testing.TB, h textproto.Header) string {
	t.Helper()
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil {
		t.Fatalf("WriteHeader: %v", err)
	}
	return b.String()
}

// fieldKeys returns the sorted field names of h.
func fieldKeys(h textproto.Header) []string {
	var keys []string
	for f := h.Fields(); f.Next(); {
		keys = append(keys, f.Key())
	}
	slices.Sort(keys)
	return keys
}

// checkWire checks that a written header has only CRLF line ends, that
// every line but the first of a field is a fold, and that no line is over
// 998 octets, and returns the header read back.
func checkWire(t testing.TB, wire string) textproto.Header {
	t.Helper()
	for i := 0; i < len(wire); i++ {
		switch wire[i] {
		case '\r':
			if i+1 >= len(wire) || wire[i+1] != '\n' {
				t.Fatalf("bare CR at %d in %q", i, wire)
			}
		case '\n':
			if i == 0 || wire[i-1] != '\r' {
				t.Fatalf("bare LF at %d in %q", i, wire)
			}
		case 0:
			t.Fatalf("NUL at %d in %q", i, wire)
		}
	}
	for _, l := range strings.Split(wire, "\r\n") {
		if len(l) > 998 {
			t.Fatalf("line of %d octets in %q", len(l), wire)
		}
	}
	back, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(wire)))
	if err != nil {
		t.Fatalf("written header does not parse: %v\n%q", err, wire)
	}
	return back
}

// nameCase is a submitted From and what each rule must make of it.
type nameCase struct {
	name     string
	from     string // raw From value
	addr     string // Decision.From
	member   string // member's mailbox as written (rule 1 From, Reply-To)
	platform string // rule 2 From
}

var nameCases = []nameCase{
	{"ASCII", "Taro Seikyu <taro@example.com>", "taro@example.com",
		"Taro Seikyu <taro@example.com>",
		`"Taro Seikyu (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"Japanese UTF-8", "請求 太郎 <taro@example.com>", "taro@example.com",
		"=?utf-8?b?6KuL5rGCIOWkqumDjg==?= <taro@example.com>",
		"=?utf-8?b?6KuL5rGCIOWkqumDjiAodmlhIE1ha2VMZWFwcyk=?= <bounce@makeleaps.com>"},
	{"Japanese ISO-2022-JP", "=?ISO-2022-JP?B?GyRCQEE1YRsoQiAbJEJCQE86GyhC?= <taro@example.com>", "taro@example.com",
		"=?utf-8?b?6KuL5rGCIOWkqumDjg==?= <taro@example.com>",
		"=?utf-8?b?6KuL5rGCIOWkqumDjiAodmlhIE1ha2VMZWFwcyk=?= <bounce@makeleaps.com>"},
	{"quotes and comma", `"Doe, John" <john@example.com>`, "john@example.com",
		`"Doe, John" <john@example.com>`,
		`"Doe, John (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"escaped quote", `"Taro \"T\" Seikyu" <taro@example.com>`, "taro@example.com",
		`"Taro \"T\" Seikyu" <taro@example.com>`,
		`"Taro \"T\" Seikyu (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"no name", "taro@example.com", "taro@example.com",
		"taro@example.com",
		`"taro@example.com (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"bare CR in comment name", "taro@example.com (Evil\rBcc: x@evil.example)", "taro@example.com",
		`"Evil Bcc: x@evil.example" <taro@example.com>`,
		`"Evil Bcc: x@evil.example (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"encoded CRLF, Q", "=?utf-8?q?evil=0D=0ABcc=3A_x=40evil.example?= <taro@example.com>", "taro@example.com",
		`"evil Bcc: x@evil.example" <taro@example.com>`,
		`"evil Bcc: x@evil.example (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"encoded CRLF, B", "=?UTF-8?B?ZXZpbA0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?= <taro@example.com>", "taro@example.com",
		`"evil Bcc: x@evil.example" <taro@example.com>`,
		`"evil Bcc: x@evil.example (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"encoded CRLF in quoted string", `"=?utf-8?q?evil=0D=0ABcc:_x?=" <taro@example.com>`, "taro@example.com",
		`"evil Bcc: x" <taro@example.com>`,
		`"evil Bcc: x (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"encoded NUL and tab", "=?utf-8?q?Taro=00=09Seikyu?= <taro@example.com>", "taro@example.com",
		"Taro Seikyu <taro@example.com>",
		`"Taro Seikyu (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"literal encoded-word text", `"=?" <taro@example.com>`, "taro@example.com",
		"=?utf-8?b?PT8=?= <taro@example.com>",
		"=?utf-8?b?PT8gKHZpYSBNYWtlTGVhcHMp?= <bounce@makeleaps.com>"},
	{"bidi override", "=?utf-8?q?=E2=80=AEevil?= <taro@example.com>", "taro@example.com",
		"evil <taro@example.com>",
		`"evil (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"upper-case domain", "Taro <taro@Example.COM>", "taro@example.com",
		"Taro <taro@example.com>",
		`"Taro (via MakeLeaps)" <bounce@makeleaps.com>`},
	{"quoted local part", `"taro seikyu"@example.com`, "taro seikyu@example.com",
		`"taro seikyu"@example.com`,
		`"taro seikyu@example.com (via MakeLeaps)" <bounce@makeleaps.com>`},
}

const otherFields = "To: partner@example.net\r\nSubject: Invoice\r\nMessage-ID: <1@app.example>\r\n"

func TestApplyTable(t *testing.T) {
	const appReplyTo = "Support <support@app.example>"
	for _, nc := range nameCases {
		for _, option := range []bool{false, true} {
			for _, verified := range []bool{false, true} {
				for _, kind := range []Kind{KindSecureSend, KindInboxNotice, ""} {
					for _, replyTo := range []bool{false, true} {
						name := fmt.Sprintf("%s/option=%v/verified=%v/kind=%q/replyto=%v", nc.name, option, verified, kind, replyTo)
						t.Run(name, func(t *testing.T) {
							raw := "From: " + nc.from + "\r\n" + otherFields
							if replyTo {
								raw += "Reply-To: " + appReplyTo + "\r\n"
							}
							h := readHeader(t, raw)
							wantKeys := fieldKeys(h)
							if !replyTo {
								wantKeys = append(wantKeys, "Reply-To")
								slices.Sort(wantKeys)
							}
							var asked []string
							in := Input{
								CustomDomainOption: option,
								IsVerified: func(d string) bool {
									asked = append(asked, d)
									return verified && d == "example.com"
								},
								Kind: kind,
							}

							d, err := testRule.Apply(&h, in)
							if err != nil {
								t.Fatalf("Apply(From: %s): %v", nc.from, err)
							}

							custom := option && verified && kind != KindInboxNotice
							want := Decision{From: nc.addr, EnvelopeHost: "m.makeleaps.com"}
							wantFrom := nc.platform
							if custom {
								want = Decision{From: nc.addr, CustomDomain: "example.com", EnvelopeHost: "mlbounce.example.com"}
								wantFrom = nc.member
							}
							if d != want {
								t.Errorf("Decision = %+v, want %+v", d, want)
							}
							wantReplyTo := nc.member
							if replyTo {
								wantReplyTo = appReplyTo
							}
							if option && kind != KindInboxNotice {
								if !slices.Equal(asked, []string{"example.com"}) {
									t.Errorf("IsVerified asked for %q, want [example.com]", asked)
								}
							} else if asked != nil {
								t.Errorf("IsVerified called (%q) although rule 1 cannot apply", asked)
							}

							back := checkWire(t, writeHeader(t, h))
							if got := back.Values("From"); !slices.Equal(got, []string{wantFrom}) {
								t.Errorf("From = %q, want %q", got, wantFrom)
							}
							if got := back.Values("Reply-To"); !slices.Equal(got, []string{wantReplyTo}) {
								t.Errorf("Reply-To = %q, want %q", got, wantReplyTo)
							}
							if got := fieldKeys(back); !slices.Equal(got, wantKeys) {
								t.Errorf("fields = %q, want %q", got, wantKeys)
							}
							checkMailbox(t, back.Get("From"))
							checkMailbox(t, back.Get("Reply-To"))
						})
					}
				}
			}
		}
	}
}

// checkMailbox checks that a written address field holds one mailbox whose
// decoded display name has no control characters.
func checkMailbox(t testing.TB, v string) *mail.Address {
	t.Helper()
	list, err := (&mail.AddressParser{WordDecoder: newWordDecoder()}).ParseList(v)
	if err != nil || len(list) != 1 {
		t.Fatalf("%q is not one mailbox: %v %v", v, list, err)
	}
	if strings.IndexFunc(list[0].Name, unicode.IsControl) >= 0 {
		t.Fatalf("%q has a display name with control characters: %q", v, list[0].Name)
	}
	return list[0]
}

func TestApplyDecodesNames(t *testing.T) {
	// The encoded forms in nameCases decode to what was submitted.
	dec := new(mime.WordDecoder)
	for _, tc := range []struct{ written, want string }{
		{"=?utf-8?b?6KuL5rGCIOWkqumDjg==?=", "請求 太郎"},
		{"=?utf-8?b?6KuL5rGCIOWkqumDjiAodmlhIE1ha2VMZWFwcyk=?=", "請求 太郎 (via MakeLeaps)"},
		{"=?utf-8?b?PT8=?=", "=?"},
	} {
		if got, err := dec.DecodeHeader(tc.written); err != nil || got != tc.want {
			t.Errorf("%s decodes to %q, %v; want %q", tc.written, got, err, tc.want)
		}
	}
}

func TestApplyDomains(t *testing.T) {
	verified := func(domains ...string) func(string) bool {
		return func(d string) bool { return slices.Contains(domains, d) }
	}
	for _, tc := range []struct {
		name     string
		from     string
		verified []string
		want     Decision
		wantFrom string
	}{
		{"subdomain is not the domain", "Taro <taro@sub.example.com>", []string{"example.com"},
			Decision{From: "taro@sub.example.com", EnvelopeHost: "m.makeleaps.com"},
			`"Taro (via MakeLeaps)" <bounce@makeleaps.com>`},
		{"parent is not the domain", "Taro <taro@example.com>", []string{"sub.example.com"},
			Decision{From: "taro@example.com", EnvelopeHost: "m.makeleaps.com"},
			`"Taro (via MakeLeaps)" <bounce@makeleaps.com>`},
		{"suffix is not the domain", "Taro <taro@badexample.com>", []string{"example.com"},
			Decision{From: "taro@badexample.com", EnvelopeHost: "m.makeleaps.com"},
			`"Taro (via MakeLeaps)" <bounce@makeleaps.com>`},
		{"verified subdomain", "Taro <taro@Sub.Example.com>", []string{"sub.example.com"},
			Decision{From: "taro@sub.example.com", CustomDomain: "sub.example.com", EnvelopeHost: "mlbounce.sub.example.com"},
			"Taro <taro@sub.example.com>"},
		{"IDN in Unicode", "請求 太郎 <taro@例え.jp>", []string{"xn--r8jz45g.jp"},
			Decision{From: "taro@xn--r8jz45g.jp", CustomDomain: "xn--r8jz45g.jp", EnvelopeHost: "mlbounce.xn--r8jz45g.jp"},
			"=?utf-8?b?6KuL5rGCIOWkqumDjg==?= <taro@xn--r8jz45g.jp>"},
		{"IDN in punycode, upper case", "Taro <taro@XN--R8JZ45G.JP>", []string{"xn--r8jz45g.jp"},
			Decision{From: "taro@xn--r8jz45g.jp", CustomDomain: "xn--r8jz45g.jp", EnvelopeHost: "mlbounce.xn--r8jz45g.jp"},
			"Taro <taro@xn--r8jz45g.jp>"},
		{"IDN with ideographic full stop", "Taro <taro@例え。jp>", []string{"xn--r8jz45g.jp"},
			Decision{From: "taro@xn--r8jz45g.jp", CustomDomain: "xn--r8jz45g.jp", EnvelopeHost: "mlbounce.xn--r8jz45g.jp"},
			"Taro <taro@xn--r8jz45g.jp>"},
		{"UTF-8 local part", "太郎@example.com", []string{"example.com"},
			Decision{From: "太郎@example.com", CustomDomain: "example.com", EnvelopeHost: "mlbounce.example.com"},
			"太郎@example.com"},
		{"IsVerified nil", "Taro <taro@example.com>", nil,
			Decision{From: "taro@example.com", EnvelopeHost: "m.makeleaps.com"},
			`"Taro (via MakeLeaps)" <bounce@makeleaps.com>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := readHeader(t, "From: "+tc.from+"\r\n"+otherFields)
			in := Input{CustomDomainOption: true}
			if tc.verified != nil {
				in.IsVerified = verified(tc.verified...)
			}
			d, err := testRule.Apply(&h, in)
			if err != nil {
				t.Fatal(err)
			}
			if d != tc.want {
				t.Errorf("Decision = %+v, want %+v", d, tc.want)
			}
			back := checkWire(t, writeHeader(t, h))
			if got := back.Get("From"); got != tc.wantFrom {
				t.Errorf("From = %q, want %q", got, tc.wantFrom)
			}
		})
	}
}

func TestApplyFromErrors(t *testing.T) {
	for _, tc := range []struct{ name, raw string }{
		{"no From", "Sender: taro@example.com\r\n"},
		{"two From fields", "From: taro@example.com\r\nFrom: hanako@example.com\r\n"},
		{"empty From", "From: \r\n"},
		{"two mailboxes", "From: taro@example.com, hanako@example.com\r\n"},
		{"group of one", "From: Sales: taro@example.com;\r\n"},
		{"empty group", "From: undisclosed-recipients:;\r\n"},
		{"encoded word with colon (a group to parsers)", "From: =?utf-8?q?evil=0D=0ABcc:_x?= <taro@example.com>\r\n"},
		{"bare CR in quoted string", "From: \"Evil\rBcc: x\" <taro@example.com>\r\n"},
		{"unparsable", "From: <<taro>>\r\n"},
		{"no domain", "From: Taro <taro>\r\n"},
		{"domain literal", "From: <taro@[192.0.2.1]>\r\n"},
		{"underscore domain", "From: taro@ex_ample.com\r\n"},
		{"empty label", "From: taro@example..com\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := readHeader(t, tc.raw+otherFields)
			before := writeHeader(t, h)
			_, err := testRule.Apply(&h, Input{CustomDomainOption: true, IsVerified: func(string) bool { return true }})
			var fe *FromError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFrom) {
				t.Fatalf("Apply = %v, want a *FromError", err)
			}
			if fe.Msg == "" {
				t.Errorf("FromError without a message")
			}
			if after := writeHeader(t, h); after != before {
				t.Errorf("header changed on error:\n%q\n%q", before, after)
			}
		})
	}
}

// TestApplyInjectedLineBreak covers a header built in memory, where a value
// can hold CR LF, unlike one read from the wire.
func TestApplyInjectedLineBreak(t *testing.T) {
	for _, from := range []string{
		"Evil\r\nBcc: x@evil.example <taro@example.com>",
		"taro@example.com\r\nBcc: x@evil.example",
		"taro@example.com (Evil\r\nBcc: x)",
		"taro@example.com (Evil\nBcc: x)",
		"taro@example.com (Evil\x00Bcc: x)",
	} {
		var h textproto.Header
		h.Add("Subject", "x")
		h.Add("From", from)
		d, err := testRule.Apply(&h, Input{})
		if err != nil {
			if !errors.Is(err, ErrFrom) {
				t.Errorf("Apply(%q) = %v, want a *FromError", from, err)
			}
			continue
		}
		back := checkWire(t, writeHeader(t, h))
		if got, want := fieldKeys(back), []string{"From", "Reply-To", "Subject"}; !slices.Equal(got, want) {
			t.Errorf("Apply(%q): fields %q, want %q", from, got, want)
		}
		if d.From != "taro@example.com" {
			t.Errorf("Apply(%q): From address %q", from, d.From)
		}
	}
}

func TestApplyReplyTo(t *testing.T) {
	// An empty Reply-To counts as none and is replaced, not duplicated.
	h := readHeader(t, "Reply-To: \r\nFrom: Taro <taro@example.com>\r\n")
	if _, err := testRule.Apply(&h, Input{}); err != nil {
		t.Fatal(err)
	}
	back := checkWire(t, writeHeader(t, h))
	if got := back.Values("Reply-To"); !slices.Equal(got, []string{"Taro <taro@example.com>"}) {
		t.Errorf("Reply-To = %q", got)
	}
}

func TestApplyLongName(t *testing.T) {
	for _, name := range []string{strings.Repeat("a", 2000), strings.Repeat("請求 ", 700), strings.Repeat("a,", 1000)} {
		var h textproto.Header
		h.Add("From", encodeWords(name)+" <taro@example.com>")
		if _, err := testRule.Apply(&h, Input{}); err != nil {
			t.Fatal(err)
		}
		wire := writeHeader(t, h)
		back := checkWire(t, wire)
		if !strings.HasPrefix(name, "a") {
			// Encoded words are short enough to fold at 78 columns.
			for _, l := range strings.Split(wire, "\r\n") {
				if len(l) > 78 {
					t.Errorf("line of %d octets: %q", len(l), l)
				}
			}
		}
		if from := checkMailbox(t, back.Get("From")); !strings.HasSuffix(from.Name, " (via MakeLeaps)") {
			t.Errorf("From name %q lost the template's suffix", from.Name)
		}
		a := checkMailbox(t, back.Get("Reply-To"))
		if n := len([]rune(a.Name)); n != maxNameRunes {
			t.Errorf("name cut to %d runes, want %d", n, maxNameRunes)
		}
		if !strings.HasPrefix(strings.ReplaceAll(name, " ", ""), strings.ReplaceAll(a.Name, " ", "")) {
			t.Errorf("cut name %q is not a prefix of the original", a.Name)
		}
		if a.Address != "taro@example.com" {
			t.Errorf("Reply-To address %q", a.Address)
		}
	}
}

func TestApplyConfigErrors(t *testing.T) {
	h := readHeader(t, "From: taro@example.com\r\n")
	if _, err := testRule.Apply(&h, Input{Kind: "newsletter"}); err == nil || errors.Is(err, ErrFrom) {
		t.Errorf("unknown kind: Apply = %v, want a non-From error", err)
	}
	for name, mod := range map[string]func(*Rule){
		"DefaultFrom with name":     func(r *Rule) { r.DefaultFrom = "MakeLeaps <bounce@makeleaps.com>" },
		"DefaultFrom not address":   func(r *Rule) { r.DefaultFrom = "bounce" },
		"empty BounceDomain":        func(r *Rule) { r.BounceDomain = "" },
		"bad BounceDomain":          func(r *Rule) { r.BounceDomain = "m.makeleaps.com;x" },
		"empty ReturnPathLabel":     func(r *Rule) { r.ReturnPathLabel = "" },
		"dotted ReturnPathLabel":    func(r *Rule) { r.ReturnPathLabel = "a.b" },
		"non-ASCII ReturnPathLabel": func(r *Rule) { r.ReturnPathLabel = "例" },
	} {
		r := testRule
		mod(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, r)
		}
		h := readHeader(t, "From: taro@example.com\r\n")
		if _, err := r.Apply(&h, Input{}); err == nil || errors.Is(err, ErrFrom) {
			t.Errorf("%s: Apply = %v, want a configuration error", name, err)
		}
	}
	if err := testRule.Validate(); err != nil {
		t.Errorf("Validate(testRule) = %v", err)
	}
	noName := testRule
	noName.DisplayTemplate = ""
	h = readHeader(t, "From: Taro <taro@example.com>\r\n")
	if _, err := noName.Apply(&h, Input{}); err != nil {
		t.Fatal(err)
	}
	if got := h.Get("From"); got != "bounce@makeleaps.com" {
		t.Errorf("From with empty template = %q, want the bare address", got)
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]Kind{"": KindSecureSend, "secure-send": KindSecureSend, " Inbox-Notice ": KindInboxNotice} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"newsletter", "secure_send"} {
		if got, err := ParseKind(in); err == nil {
			t.Errorf("ParseKind(%q) = %q, want error", in, got)
		}
	}
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":           "example.com",
		"Example.COM":           "example.com",
		"example.com.":          "example.com",
		"例え.jp":                 "xn--r8jz45g.jp",
		"例え。jp":                 "xn--r8jz45g.jp",
		"XN--R8JZ45G.JP":        "xn--r8jz45g.jp",
		"ＥＸＡＭＰＬＥ.com":           "example.com",
		"a-b.example.com":       "a-b.example.com",
		"bücher.example":        "xn--bcher-kva.example",
		strings.Repeat("a", 63): strings.Repeat("a", 63),
	} {
		if got, err := NormalizeDomain(in); err != nil || got != want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{
		"", ".", "example..com", ".example.com", "exa mple.com", "ex_ample.com", "taro@example.com",
		"@example.com", "[192.0.2.1]", "-example.com", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 26) + "com", "xn--zz.com",
	} {
		if got, err := NormalizeDomain(in); err == nil {
			t.Errorf("NormalizeDomain(%q) = %q, want error", in, got)
		}
	}
}

func FuzzApply(f *testing.F) {
	for _, nc := range nameCases {
		f.Add(nc.from, true, false)
	}
	f.Add("=?utf-8?q?a=0D=0AX:_y?= <a@b.example>", false, true)
	f.Add("\"a\\\"b\" <a@b.example>", true, true)
	f.Add("a@b.example (=?utf-8?b?DQpCY2M6IHg=?=)", true, false)
	f.Add("=?iso-2022-jp?b?GyRCQEE1YRsoQg==?= <a@例え.jp>", true, false)
	f.Fuzz(func(t *testing.T, from string, verified, replyTo bool) {
		if strings.ContainsAny(from, "\n") {
			return // would be read as another field; the header reader is not under test
		}
		raw := "From: " + from + "\r\n" + otherFields
		if replyTo {
			raw += "Reply-To: app@app.example\r\n"
		}
		h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil || h.FieldsByKey("From").Len() != 1 {
			return
		}
		wantKeys := fieldKeys(h)
		if !replyTo {
			wantKeys = append(wantKeys, "Reply-To")
			slices.Sort(wantKeys)
		}
		before := writeHeader(t, h)
		d, err := testRule.Apply(&h, Input{CustomDomainOption: true, IsVerified: func(string) bool { return verified }})
		if err != nil {
			if !errors.Is(err, ErrFrom) {
				t.Fatalf("Apply(%q) = %v, want nil or a *FromError", from, err)
			}
			if after := writeHeader(t, h); after != before {
				t.Fatalf("header changed on error")
			}
			return
		}
		back := checkWire(t, writeHeader(t, h))
		if got := fieldKeys(back); !slices.Equal(got, wantKeys) {
			t.Fatalf("Apply(%q): fields %q, want %q", from, got, wantKeys)
		}
		fromAddr := checkMailbox(t, back.Get("From"))
		if !replyTo {
			a := checkMailbox(t, back.Get("Reply-To"))
			if a.Address != d.From {
				t.Fatalf("Apply(%q): Reply-To address %q, Decision.From %q", from, a.Address, d.From)
			}
		}
		wantFrom := "bounce@makeleaps.com"
		if verified {
			wantFrom = d.From
		}
		if fromAddr.Address != wantFrom {
			t.Fatalf("Apply(%q): From address %q, want %q", from, fromAddr.Address, wantFrom)
		}
	})
}

func BenchmarkApply(b *testing.B) {
	raw := "From: 請求 太郎 <taro@example.com>\r\n" + otherFields +
		"Date: Mon, 02 Jan 2006 15:04:05 +0900\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
	in := Input{CustomDomainOption: true, IsVerified: func(d string) bool { return d == "example.com" }}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		h := readHeader(b, raw)
		b.StartTimer()
		if _, err := testRule.Apply(&h, in); err != nil {
			b.Fatal(err)
		}
	}
}
