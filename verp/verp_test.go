package verp

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var lowerHex = base32.HexEncoding.WithPadding(base32.NoPadding)

func testCodec(t testing.TB, secret string) *Codec {
	t.Helper()
	c, err := New([]byte(secret))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// randomID returns a message id built the way the queue builds them.
func randomID(r *rand.Rand) string {
	var b [10]byte
	for i := range b {
		b[i] = byte(r.IntN(256))
	}
	return strings.ToLower(lowerHex.EncodeToString(b[:]))
}

func TestNewRejectsShortSecret(t *testing.T) {
	if _, err := New([]byte("0123456789abcde")); err == nil {
		t.Fatal("New accepted a 15-byte secret")
	}
	if _, err := New([]byte("0123456789abcdef")); err != nil {
		t.Fatalf("New rejected a 16-byte secret: %v", err)
	}
}

func TestNewCopiesSecret(t *testing.T) {
	secret := []byte("0123456789abcdef")
	c, err := New(secret)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Encode("0123456789abcdef", 1)
	secret[0] = 'X'
	if got := c.Encode("0123456789abcdef", 1); got != tok {
		t.Fatalf("changing the caller's slice changed the codec: %q then %q", tok, got)
	}
}

// TestFormat pins the documented token format against an independent
// computation, so that a change of format cannot slip in unnoticed.
func TestFormat(t *testing.T) {
	secret := "a secret of at least sixteen bytes"
	c := testCodec(t, secret)
	msgID := "0123456789abcdev"
	for _, rcpt := range []int{0, 1, 31, 32, 1023, 1024, 9999} {
		tok := c.Encode(msgID, rcpt)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte("hermod-verp-v2|" + msgID + "|" + strconv.Itoa(rcpt)))
		mac := strings.ToLower(lowerHex.EncodeToString(m.Sum(nil)[:10]))
		r := strconv.FormatInt(int64(rcpt), 32)
		r = strings.Repeat("0", 3-len(r)) + r
		if want := msgID + r + mac; tok != want {
			t.Errorf("Encode(%q, %d) = %q, want %q", msgID, rcpt, tok, want)
		}
		if len(tok) != TokenLen {
			t.Errorf("len(%q) = %d, want %d", tok, len(tok), TokenLen)
		}
		lp := c.LocalPart(msgID, rcpt)
		if lp != Prefix+tok || len(lp) != 45 {
			t.Errorf("LocalPart(%q, %d) = %q (%d octets)", msgID, rcpt, lp, len(lp))
		}
	}
}

// TestVersion1StillAccepted: tokens issued before the MAC was lengthened
// (40-bit MAC, context v1), computed here independently, still decode; a v1
// token with a v2 MAC prefix does not.
func TestVersion1StillAccepted(t *testing.T) {
	secret := "a secret of at least sixteen bytes"
	c := testCodec(t, secret)
	msgID := "0123456789abcdev"
	for _, rcpt := range []int{0, 7, 9999} {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte("hermod-verp-v1|" + msgID + "|" + strconv.Itoa(rcpt)))
		r := strconv.FormatInt(int64(rcpt), 32)
		old := msgID + strings.Repeat("0", 3-len(r)) + r + strings.ToLower(lowerHex.EncodeToString(m.Sum(nil)[:5]))
		if len(old) != TokenLenV1 {
			t.Fatalf("v1 token %q has %d chars", old, len(old))
		}
		id, got, err := c.Decode(old)
		if err != nil || id != msgID || got != rcpt {
			t.Errorf("Decode(v1 %q) = %q, %d, %v; want %q, %d", old, id, got, err, msgID, rcpt)
		}
		if _, _, err := c.ParseAddress(Prefix + strings.ToUpper(old) + "@m.example.com"); err != nil {
			t.Errorf("ParseAddress(v1, upper case): %v", err)
		}
		v2 := c.Encode(msgID, rcpt)
		if trunc := v2[:TokenLenV1]; trunc != old {
			if _, _, err := c.Decode(trunc); !errors.Is(err, ErrInvalid) {
				t.Errorf("v2 token cut to v1 length %q accepted", trunc)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	c := testCodec(t, "round trip secret 0123456789")
	r := rand.New(rand.NewPCG(1, 2))
	ids := []string{"0000000000000000", "vvvvvvvvvvvvvvvv"}
	for range 200 {
		ids = append(ids, randomID(r))
	}
	for _, id := range ids {
		for _, rcpt := range []int{0, 1, 2, 31, 32, 999, 1000, 9998, 9999, r.IntN(MaxRecipients)} {
			tok := c.Encode(id, rcpt)
			if tok != strings.ToLower(tok) {
				t.Fatalf("Encode(%q, %d) = %q has upper case", id, rcpt, tok)
			}
			gotID, gotRcpt, err := c.Decode(tok)
			if err != nil || gotID != id || gotRcpt != rcpt {
				t.Fatalf("Decode(Encode(%q, %d) = %q) = %q, %d, %v", id, rcpt, tok, gotID, gotRcpt, err)
			}
		}
	}
}

func TestDistinctTokens(t *testing.T) {
	c := testCodec(t, "distinct secret 0123456789")
	seen := map[string]string{}
	for _, id := range []string{"0000000000000000", "0000000000000001"} {
		for rcpt := range MaxRecipients {
			tok := c.Encode(id, rcpt)
			key := id + "/" + strconv.Itoa(rcpt)
			if prev, ok := seen[tok]; ok {
				t.Fatalf("%s and %s share token %q", prev, key, tok)
			}
			seen[tok] = key
		}
	}
}

func TestUpperCaseAccepted(t *testing.T) {
	c := testCodec(t, "upper case secret 0123456789")
	id := "abcdefghijklmnop"
	tok := c.Encode(id, 42)
	for _, v := range []string{strings.ToUpper(tok), tok[:5] + strings.ToUpper(tok[5:20]) + tok[20:]} {
		gotID, gotRcpt, err := c.Decode(v)
		if err != nil || gotID != id || gotRcpt != 42 {
			t.Errorf("Decode(%q) = %q, %d, %v; want %q, 42", v, gotID, gotRcpt, err, id)
		}
	}
}

func TestEverySingleCharacterChangeRejected(t *testing.T) {
	c := testCodec(t, "mutation secret 0123456789")
	// Every byte value except the original and its upper-case form, at every offset.
	for _, in := range []struct {
		id   string
		rcpt int
	}{{"0123456789abcdef", 0}, {"ghijklmnopqrstuv", 9999}, {"v0v0v0v0v0v0v0v0", 1234}} {
		tok := c.Encode(in.id, in.rcpt)
		for i := range len(tok) {
			for ch := range 256 {
				b := byte(ch)
				if b == tok[i] || (tok[i] >= 'a' && tok[i] <= 'z' && b == tok[i]-'a'+'A') {
					continue
				}
				mut := tok[:i] + string([]byte{b}) + tok[i+1:]
				if id, rcpt, err := c.Decode(mut); !errors.Is(err, ErrInvalid) {
					t.Fatalf("Decode(%q) (offset %d changed from %q) = %q, %d, %v; want ErrInvalid", mut, i, tok[i], id, rcpt, err)
				}
			}
		}
	}
}

func TestLengthRejected(t *testing.T) {
	c := testCodec(t, "length secret 0123456789")
	tok := c.Encode("0123456789abcdef", 7)
	for n := range len(tok) {
		if _, _, err := c.Decode(tok[:n]); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) truncated to %d: err = %v, want ErrInvalid", tok[:n], n, err)
		}
		if _, _, err := c.Decode(tok[n+1:]); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) with head cut: err = %v, want ErrInvalid", tok[n+1:], err)
		}
	}
	for _, extra := range []string{"0", "a", " ", "\n", "é"} {
		if _, _, err := c.Decode(tok + extra); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q): err = %v, want ErrInvalid", tok+extra, err)
		}
	}
}

func TestRecipientOutOfRangeRejected(t *testing.T) {
	// A token whose MAC is right for rcpt 10000 must still be rejected.
	secret := "range secret 0123456789"
	c := testCodec(t, secret)
	id := "0123456789abcdef"
	var mac [macLen]byte
	c.putMAC(mac[:], macContext, id, 10000)
	tok := id + strconv.FormatInt(10000, 32) + string(mac[:])
	if _, _, err := c.Decode(tok); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Decode(%q) (rcpt 10000): err = %v, want ErrInvalid", tok, err)
	}
}

func TestOtherSecretRejected(t *testing.T) {
	a := testCodec(t, "first secret 0123456789")
	b := testCodec(t, "second secret 0123456789")
	r := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		id, rcpt := randomID(r), r.IntN(MaxRecipients)
		tok := a.Encode(id, rcpt)
		if _, _, err := b.Decode(tok); !errors.Is(err, ErrInvalid) {
			t.Fatalf("codec b accepted codec a's token %q: %v", tok, err)
		}
	}
}

func TestEncodePanicsOnBadInput(t *testing.T) {
	c := testCodec(t, "panic secret 0123456789")
	for _, tc := range []struct {
		id   string
		rcpt int
	}{
		{"0123456789abcdeF", 0},  // upper case
		{"0123456789abcdew", 0},  // outside base32hex
		{"0123456789abcde", 0},   // short
		{"0123456789abcdef0", 0}, // long
		{"0123456789abcdef", -1},
		{"0123456789abcdef", MaxRecipients},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Encode(%q, %d) did not panic", tc.id, tc.rcpt)
				}
			}()
			c.Encode(tc.id, tc.rcpt)
		}()
	}
}

func TestParseAddress(t *testing.T) {
	c := testCodec(t, "address secret 0123456789")
	id := "ghijklmnopqrstuv"
	lp := c.LocalPart(id, 12)
	good := []string{
		lp + "@m.example.com",
		"<" + lp + "@m.example.com>",
		"  <" + lp + "@M.EXAMPLE.COM>  ",
		strings.ToUpper(lp) + "@m.example.com",
		"Bounce-MD_" + lp[len(Prefix):] + "@x",
	}
	for _, a := range good {
		gotID, gotRcpt, err := c.ParseAddress(a)
		if err != nil || gotID != id || gotRcpt != 12 {
			t.Errorf("ParseAddress(%q) = %q, %d, %v; want %q, 12", a, gotID, gotRcpt, err, id)
		}
	}
	bad := []string{
		"",
		lp,                                     // no host
		lp + "@",                               // empty host
		"postmaster@example",                   // not VERP
		"bouncemd_" + lp[len(Prefix):] + "@x",  // prefix mangled
		"bounce-md-" + lp[len(Prefix):] + "@x", // wrong separator
		"x" + lp + "@x",                        // junk before
		lp + "x@x",                             // junk after
		"bounce-md_" + c.Encode(id, 13)[:26] + "a@x", // tampered MAC
	}
	for _, a := range bad {
		if _, _, err := c.ParseAddress(a); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseAddress(%q): err = %v, want ErrInvalid", a, err)
		}
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "dir", "verp.key")
	s1, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if len(s1) != 32 {
		t.Fatalf("secret is %d bytes, want 32", len(s1))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("secret file mode %o, want 600", perm)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("secret directory mode %o, want no group/other access", perm)
	}
	s2, err := LoadOrCreateSecret(path)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !bytes.Equal(s1, s2) {
		t.Fatalf("reload returned a different secret")
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("secret directory holds %d entries, want only the secret (temporary file left behind?)", len(entries))
	}
	if _, err := New(s2); err != nil {
		t.Errorf("New(loaded secret): %v", err)
	}
}

func TestLoadOrCreateSecretConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "verp.key")
	const n = 16
	var wg sync.WaitGroup
	results := make([][]byte, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = LoadOrCreateSecret(path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !bytes.Equal(results[i], results[0]) {
			t.Fatalf("callers 0 and %d got different secrets", i)
		}
	}
}

func TestLoadOrCreateSecretBadFile(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"nothex": "not hex at all\n",
		"short":  "00112233445566778899aabbccddee\n", // 15 bytes
		"empty":  "",
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateSecret(path); err == nil {
			t.Errorf("%s: LoadOrCreateSecret accepted %q", name, content)
		}
		if got, _ := os.ReadFile(path); string(got) != content {
			t.Errorf("%s: existing file was rewritten to %q", name, got)
		}
	}
}

func FuzzDecode(f *testing.F) {
	c := testCodec(f, "fuzz secret 0123456789abcdef")
	f.Add(c.Encode("0123456789abcdef", 0))
	f.Add(strings.ToUpper(c.Encode("vvvvvvvvvvvvvvvv", 9999)))
	f.Add(c.Encode("0123456789abcdef", 0)[:26] + "w")
	f.Add("")
	f.Add(strings.Repeat("\xff", TokenLen))
	f.Add(c.Encode("n1-0123456789abcdef", 3))
	f.Add(strings.ToUpper(c.Encode("node0001-vvvvvvvvvvvvvvvv", 9999)))
	f.Add("n2" + c.Encode("n1-0123456789abcdef", 3)[2:])
	f.Add("-" + c.Encode("0123456789abcdef", 0))
	f.Add("\u212a1-" + c.Encode("k1-0123456789abcdef", 0)[3:])
	f.Fuzz(func(t *testing.T, token string) {
		id, rcpt, err := c.Decode(token)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode(%q) error %v does not wrap ErrInvalid", token, err)
			}
			return
		}
		if got := c.Encode(id, rcpt); got != strings.ToLower(token) {
			t.Fatalf("Decode(%q) = %q, %d; re-encoded %q", token, id, rcpt, got)
		}
		gotID, gotRcpt, err := c.ParseAddress("<" + Prefix + token + "@bounce.invalid>")
		if err != nil || gotID != id || gotRcpt != rcpt {
			t.Fatalf("ParseAddress disagrees with Decode for %q: %q, %d, %v", token, gotID, gotRcpt, err)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	c := testCodec(b, "bench secret 0123456789abcdef")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = c.Encode("0123456789abcdef", i%MaxRecipients)
	}
}

func BenchmarkDecode(b *testing.B) {
	c := testCodec(b, "bench secret 0123456789abcdef")
	tok := c.Encode("0123456789abcdef", 1234)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := c.Decode(tok); err != nil {
			b.Fatal(err)
		}
	}
}
