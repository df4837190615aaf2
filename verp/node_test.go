package verp

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// v3Token computes a version 3 token independently of the package: node,
// "-", the core, the recipient index and an 80-bit MAC under context ctx
// over the whole id.
func v3Token(secret, ctx, node, core string, rcpt int) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ctx + node + "-" + core + "|" + strconv.Itoa(rcpt)))
	r := strconv.FormatInt(int64(rcpt), 32)
	return node + "-" + core + strings.Repeat("0", 3-len(r)) + r + strings.ToLower(lowerHex.EncodeToString(m.Sum(nil)[:10]))
}

// TestFormatV3 pins the documented version 3 format (a node's id) against
// an independent computation.
func TestFormatV3(t *testing.T) {
	secret := "a secret of at least sixteen bytes"
	c := testCodec(t, secret)
	core := "0123456789abcdev"
	for _, node := range []string{"a", "n1", "node0001"} {
		for _, rcpt := range []int{0, 1, 32, 9999} {
			id := node + "-" + core
			tok := c.Encode(id, rcpt)
			if want := v3Token(secret, "hermod-verp-v3|", node, core, rcpt); tok != want {
				t.Errorf("Encode(%q, %d) = %q, want %q", id, rcpt, tok, want)
			}
			lp := c.LocalPart(id, rcpt)
			if len(lp) != len(Prefix)+len(node)+1+TokenLen || len(lp) > 64 || len(tok) > MaxTokenLen {
				t.Errorf("LocalPart(%q, %d) = %q: %d octets", id, rcpt, lp, len(lp))
			}
			for i := 0; i < len(lp); i++ {
				if ch := lp[i]; !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
					t.Errorf("LocalPart(%q, %d) = %q holds %q", id, rcpt, lp, ch)
				}
			}
		}
	}
	if lp := c.LocalPart("node0001-"+core, 9999); len(lp) != 54 {
		t.Errorf("longest local part is %d octets, documented 54", len(lp))
	}
}

func TestNodeRoundTrip(t *testing.T) {
	c := testCodec(t, "round trip secret 0123456789")
	r := rand.New(rand.NewPCG(5, 6))
	for _, node := range []string{"a", "z9", "n1", "node0001", "abcdefgh"} {
		for range 50 {
			id, rcpt := node+"-"+randomID(r), r.IntN(MaxRecipients)
			tok := c.Encode(id, rcpt)
			gotID, gotRcpt, err := c.Decode(tok)
			if err != nil || gotID != id || gotRcpt != rcpt {
				t.Fatalf("Decode(Encode(%q, %d) = %q) = %q, %d, %v", id, rcpt, tok, gotID, gotRcpt, err)
			}
			addr := "<" + c.LocalPart(id, rcpt) + "@bounce.example.com>"
			for _, a := range []string{addr, strings.ToUpper(addr)} {
				gotID, gotRcpt, err = c.ParseAddress(a)
				if err != nil || gotID != id || gotRcpt != rcpt {
					t.Fatalf("ParseAddress(%q) = %q, %d, %v; want %q, %d", a, gotID, gotRcpt, err, id, rcpt)
				}
			}
		}
	}
}

// TestTokenMovedToAnotherNodeRejected: the MAC covers the node, so a token
// cannot be moved to another node, lose its node or gain one; nor does a
// MAC of the right id under the version 2 context pass as version 3.
func TestTokenMovedToAnotherNodeRejected(t *testing.T) {
	secret := "moving secret 0123456789"
	c := testCodec(t, secret)
	core := "ghijklmnopqrstuv"
	tok := c.Encode("n1-"+core, 77)
	body := tok[len("n1-"):]
	for _, moved := range []string{
		"n2-" + body, "n-" + body, "n12-" + body, "m1-" + body, "a-" + body, "node0001-" + body,
		body, // node stripped: read as version 2 over the core
	} {
		if id, rcpt, err := c.Decode(moved); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) (moved from n1) = %q, %d, %v; want ErrInvalid", moved, id, rcpt, err)
		}
	}
	v2 := c.Encode(core, 77)
	if id, _, err := c.Decode("n1-" + v2); !errors.Is(err, ErrInvalid) {
		t.Errorf("version 2 token given a node part decoded as %q, %v", id, err)
	}
	if crossed := v3Token(secret, "hermod-verp-v2|", "n1", core, 77); crossed != tok {
		if id, _, err := c.Decode(crossed); !errors.Is(err, ErrInvalid) {
			t.Errorf("token with a version 2 MAC over the node id decoded as %q, %v", id, err)
		}
	}
	if _, _, err := testCodec(t, "another secret 0123456789").Decode(tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("another secret accepted %q: %v", tok, err)
	}
}

func TestNodeTokenUpperCaseAccepted(t *testing.T) {
	c := testCodec(t, "upper case secret 0123456789")
	id := "node0001-abcdefghijklmnop"
	tok := c.Encode(id, 42)
	for _, v := range []string{strings.ToUpper(tok), "NoDe0001" + tok[8:], tok[:12] + strings.ToUpper(tok[12:30]) + tok[30:]} {
		gotID, gotRcpt, err := c.Decode(v)
		if err != nil || gotID != id || gotRcpt != 42 {
			t.Errorf("Decode(%q) = %q, %d, %v; want %q, 42", v, gotID, gotRcpt, err, id)
		}
	}
}

// TestNodeTokenEdges: every length and character edge of the node part and
// of what follows it.
func TestNodeTokenEdges(t *testing.T) {
	c := testCodec(t, "edge secret 0123456789")
	core := "0123456789abcdef"
	tok := c.Encode("n1-"+core, 5)
	body := tok[3:]
	v1 := c.Encode(core, 5)[:TokenLenV1] // the length of a version 1 token
	// A 40-bit MAC is never accepted for a node's id, whatever its context.
	v1Node := v3Token("edge secret 0123456789", "hermod-verp-v1|", "n1", core, 5)[:3+TokenLenV1]
	v3Short := v3Token("edge secret 0123456789", "hermod-verp-v3|", "n1", core, 5)[:3+TokenLenV1]
	bad := map[string]string{
		"empty node":                "-" + body,
		"node of 9":                 "abcdefghi-" + c.Encode("abcdefgh-"+core, 5)[9:],
		"node starting with digit":  "1n-" + body,
		"node with underscore":      "n_-" + body,
		"node with dot":             "n.-" + body,
		"node with a space":         "n -" + body,
		"Kelvin sign for k":         "\u212a1-" + c.Encode("k1-"+core, 5)[3:],
		"non-ASCII node":            "né-" + body,
		"version 1 length":          "n1-" + v1,
		"version 1 over node id":    v1Node,
		"version 3 cut to 40 bits":  v3Short,
		"one short":                 tok[:len(tok)-1],
		"one long":                  tok + "0",
		"two dashes":                "n1--" + body,
		"dash inside":               "n1-" + body[:10] + "-" + body[10:],
		"dash at the end":           tok + "-",
		"only the node":             "n1-",
		"only a dash":               "-",
		"underscore separator":      "n1_" + body,
		"no separator":              "n1" + body,
		"node of 8, body of 34":     "node0001-" + c.Encode("node0001-"+core, 5)[9:][:TokenLen-1],
		"body outside base32hex":    "n1-" + body[:20] + "w" + body[21:],
		"upper-case non-hex letter": "n1-" + body[:20] + "W" + body[21:],
	}
	for name, in := range bad {
		if id, rcpt, err := c.Decode(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Decode(%q) = %q, %d, %v; want ErrInvalid", name, in, id, rcpt, err)
		}
		if _, _, err := c.ParseAddress(Prefix + in + "@b.example"); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: ParseAddress accepted %q", name, in)
		}
	}
	for n := range len(tok) {
		if _, _, err := c.Decode(tok[:n]); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) truncated to %d: %v, want ErrInvalid", tok[:n], n, err)
		}
		if _, _, err := c.Decode(tok[n+1:]); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) with head cut: %v, want ErrInvalid", tok[n+1:], err)
		}
	}
	// Every byte value at every offset, except the original and its upper case.
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

func TestEncodePanicsOnBadNodeID(t *testing.T) {
	c := testCodec(t, "panic secret 0123456789")
	core := "0123456789abcdef"
	for _, id := range []string{"N1-" + core, "1a-" + core, "-" + core, "abcdefghi-" + core, "n1-" + core[:15], "n1-" + core + "0", "n1--" + core, "n_1-" + core} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Encode(%q, 0) did not panic", id)
				}
			}()
			c.Encode(id, 0)
		}()
	}
}

func BenchmarkEncodeNode(b *testing.B) {
	c := testCodec(b, "bench secret 0123456789abcdef")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = c.Encode("node0001-0123456789abcdef", i%MaxRecipients)
	}
}

func BenchmarkDecodeNode(b *testing.B) {
	c := testCodec(b, "bench secret 0123456789abcdef")
	tok := c.Encode("node0001-0123456789abcdef", 1234)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := c.Decode(tok); err != nil {
			b.Fatal(err)
		}
	}
}
