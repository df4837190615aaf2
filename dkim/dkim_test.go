package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

const testMessage = "From: Taro Seikyu <taro@example.invalid>\r\n" +
	"To: partner@example.invalid\r\n" +
	"Subject:  Invoice   #42\r\n" +
	"Date: Mon, 02 Jan 2006 15:04:05 +0900\r\n" +
	"Message-ID: <42@example.invalid>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"\r\n" +
	"Hello,\r\n" +
	"please find the invoice attached.  \r\n" +
	"\r\n"

// fakeDNS serves TXT records from a map, as go-msgauth's LookupTXT wants.
type fakeDNS map[string]string

func (d fakeDNS) lookupTXT(name string) ([]string, error) {
	if v, ok := d[name]; ok {
		return []string{v}, nil
	}
	return nil, fmt.Errorf("no TXT record for %s", name)
}

func newKey(t testing.TB, alg Algorithm) crypto.Signer {
	t.Helper()
	k, err := GenerateKey(alg)
	if err != nil {
		t.Fatalf("GenerateKey(%q): %v", alg, err)
	}
	return k
}

// setup returns a Signer for example.invalid and the DNS publishing its key.
func setup(t testing.TB, alg Algorithm) (*Signer, fakeDNS) {
	t.Helper()
	key := newKey(t, alg)
	rec, err := TXTRecord(key.Public())
	if err != nil {
		t.Fatalf("TXTRecord: %v", err)
	}
	return NewSigner("example.invalid", "hermod1", key), fakeDNS{"hermod1._domainkey.example.invalid": rec}
}

func sign(t *testing.T, s *Signer, msg string) string {
	t.Helper()
	sig, err := s.Sign(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return sig
}

// verifyOne verifies msg and returns the error of its only signature.
func verifyOne(t *testing.T, msg string, dns fakeDNS) error {
	t.Helper()
	res, err := Verify(strings.NewReader(msg), dns.lookupTXT)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(res) != 1 {
		t.Fatalf("Verify returned %d results, want 1", len(res))
	}
	if res[0].Domain != "example.invalid" {
		t.Errorf("Domain = %q, want example.invalid", res[0].Domain)
	}
	return res[0].Err
}

func TestSignVerify(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmRSA, AlgorithmEd25519} {
		t.Run(string(alg), func(t *testing.T) {
			s, dns := setup(t, alg)
			sig := sign(t, s, testMessage)

			if !strings.HasPrefix(sig, "DKIM-Signature: ") || !strings.HasSuffix(sig, "\r\n") {
				t.Errorf("signature field not complete: %q", sig)
			}
			lines := strings.Split(strings.TrimSuffix(sig, "\r\n"), "\r\n")
			for i, l := range lines {
				if strings.ContainsAny(l, "\r\n") || len(l) > 998 {
					t.Errorf("line %d of signature malformed: %q", i, l)
				}
				if i > 0 && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
					t.Errorf("line %d of signature is not a continuation: %q", i, l)
				}
			}
			// testMessage has From, To, Subject, Date, Message-ID,
			// MIME-Version and Content-Type once: those are listed twice,
			// every other default field once.
			compact := strings.Join(strings.Fields(sig), "")
			for _, tag := range []string{"a=" + string(alg) + "-sha256;", "c=relaxed/relaxed;", "d=example.invalid;", "s=hermod1;",
				"h=From:From:Sender:Reply-To:To:To:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:In-Reply-To:References:" +
					"Comments:Keywords:Organization:MIME-Version:MIME-Version:Content-Type:Content-Type:Content-Transfer-Encoding:" +
					"Content-Disposition:Content-ID:Content-Description:Content-Language:" +
					"Resent-Date:Resent-From:Resent-Sender:Resent-To:Resent-Cc:Resent-Message-ID:" +
					"List-Id:List-Help:List-Unsubscribe:List-Unsubscribe-Post:List-Subscribe:List-Post:List-Owner:List-Archive:" +
					"Auto-Submitted:Disposition-Notification-To:TLS-Required:Feedback-ID;"} {
				if !strings.Contains(compact, tag) {
					t.Errorf("signature lacks %q:\n%s", tag, sig)
				}
			}

			signed := sig + testMessage
			if err := verifyOne(t, signed, dns); err != nil {
				t.Errorf("valid signature rejected: %v", err)
			}
			// Relays prepend trace fields; relaxed canonicalisation also
			// tolerates re-spaced header values.
			moved := "Received: from x by y; Mon, 02 Jan 2006 15:04:06 +0900\r\n" +
				strings.Replace(signed, "Subject:  Invoice   #42", "Subject: Invoice #42", 1)
			if err := verifyOne(t, moved, dns); err != nil {
				t.Errorf("signature broken by prepending a field: %v", err)
			}
		})
	}
}

func TestSignTamper(t *testing.T) {
	s, dns := setup(t, AlgorithmEd25519)
	signed := sign(t, s, testMessage) + testMessage
	for _, tc := range []struct{ name, old, new string }{
		{"body", "invoice attached", "invoice attacked"},
		{"body appended", "attached.  \r\n\r\n", "attached.  \r\n\r\nP.S. pay me instead\r\n"},
		{"From changed", "From: Taro Seikyu <taro@", "From: Taro Seikyu <jiro@"},
		{"second From", "From: Taro", "From: Evil <evil@example.invalid>\r\nFrom: Taro"},
		{"second Subject", "\r\nSubject:  Invoice", "\r\nSubject: urgent\r\nSubject:  Invoice"},
		{"Reply-To added", "To: partner", "Reply-To: evil@example.invalid\r\nTo: partner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(signed, tc.old) {
				t.Fatalf("test message lacks %q", tc.old)
			}
			tampered := strings.Replace(signed, tc.old, tc.new, 1)
			if err := verifyOne(t, tampered, dns); err == nil {
				t.Errorf("tampered message verified")
			}
		})
	}
}

func TestVerifyWrongKey(t *testing.T) {
	s, _ := setup(t, AlgorithmEd25519)
	_, other := setup(t, AlgorithmEd25519)
	if err := verifyOne(t, sign(t, s, testMessage)+testMessage, other); err == nil {
		t.Errorf("signature verified against another key")
	}
}

func TestSignErrors(t *testing.T) {
	key := newKey(t, AlgorithmEd25519)
	for _, tc := range []struct {
		name string
		s    *Signer
		msg  string
	}{
		{"empty domain", NewSigner("", "s", key), testMessage},
		{"tag injection in domain", NewSigner("example.invalid; l=0", "s", key), testMessage},
		{"non-ASCII domain", NewSigner("例え.jp", "s", key), testMessage},
		{"empty label", NewSigner("example..invalid", "s", key), testMessage},
		{"empty selector", NewSigner("example.invalid", "", key), testMessage},
		{"selector with =", NewSigner("example.invalid", "a=b", key), testMessage},
		{"no key", NewSigner("example.invalid", "s", nil), testMessage},
		{"From not signed", &Signer{Domain: "example.invalid", Selector: "s", Key: key, Headers: []string{"Subject"}}, testMessage},
		{"no end of header", NewSigner("example.invalid", "s", key), "From: a@example.invalid\r\nSubject: x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sig, err := tc.s.Sign(strings.NewReader(tc.msg)); err == nil {
				t.Errorf("Sign succeeded: %q", sig)
			}
		})
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestSignReadError(t *testing.T) {
	s := NewSigner("example.invalid", "s", newKey(t, AlgorithmEd25519))
	boom := errors.New("boom")
	if _, err := s.Sign(failingReader{boom}); !errors.Is(err, boom) {
		t.Errorf("Sign error = %v, want it to wrap %v", err, boom)
	}
}

func TestDefaultHeadersIsCopy(t *testing.T) {
	h := DefaultHeaders()
	h[0] = "X-Changed"
	if DefaultHeaders()[0] != "From" {
		t.Errorf("DefaultHeaders shares its backing array")
	}
}

func TestParseAlgorithm(t *testing.T) {
	for in, want := range map[string]Algorithm{"": AlgorithmRSA, "rsa": AlgorithmRSA, " RSA ": AlgorithmRSA, "ed25519": AlgorithmEd25519} {
		if got, err := ParseAlgorithm(in); err != nil || got != want {
			t.Errorf("ParseAlgorithm(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"dsa", "rsa-sha256", "ed448"} {
		if got, err := ParseAlgorithm(in); err == nil {
			t.Errorf("ParseAlgorithm(%q) = %q, want error", in, got)
		}
	}
	if _, err := GenerateKey("dsa"); err == nil {
		t.Errorf("GenerateKey(dsa) succeeded")
	}
}

func TestTXTRecord(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmRSA, AlgorithmEd25519} {
		t.Run(string(alg), func(t *testing.T) {
			key := newKey(t, alg)
			rec, err := TXTRecord(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			prefix := "v=DKIM1; k=" + string(alg) + "; p="
			if !strings.HasPrefix(rec, prefix) {
				t.Fatalf("record %q does not start with %q", rec, prefix)
			}
			raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(rec, prefix))
			if err != nil {
				t.Fatalf("p= is not base64: %v", err)
			}
			var pub crypto.PublicKey
			switch alg {
			case AlgorithmRSA:
				pub, err = x509.ParsePKIXPublicKey(raw)
				if err != nil {
					t.Fatalf("p= is not SubjectPublicKeyInfo: %v", err)
				}
			case AlgorithmEd25519:
				if len(raw) != ed25519.PublicKeySize {
					t.Fatalf("p= has %d bytes, want %d", len(raw), ed25519.PublicKeySize)
				}
				pub = ed25519.PublicKey(raw)
			}
			if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Errorf("record does not hold the key's public key")
			}
		})
	}
	if _, err := TXTRecord("not a key"); err == nil {
		t.Errorf("TXTRecord accepted a string")
	}
}

func equalKeys(a, b crypto.Signer) bool {
	return a.(interface{ Equal(crypto.PrivateKey) bool }).Equal(b)
}

func TestMarshalParseKey(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmRSA, AlgorithmEd25519} {
		key := newKey(t, alg)
		pemBytes, err := MarshalKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PRIVATE KEY-----\n")) {
			t.Errorf("%s: not a PKCS #8 PEM block: %.40q", alg, pemBytes)
		}
		back, err := ParseKey(pemBytes)
		if err != nil {
			t.Fatalf("%s: ParseKey: %v", alg, err)
		}
		if !equalKeys(key, back) {
			t.Errorf("%s: key changed by marshal/parse", alg)
		}
	}

	rsaKey := newKey(t, AlgorithmRSA).(*rsa.PrivateKey)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	if back, err := ParseKey(pkcs1); err != nil || !equalKeys(rsaKey, back) {
		t.Errorf("PKCS #1 key not parsed: %v", err)
	}

	for name, in := range map[string][]byte{
		"empty":       nil,
		"not PEM":     []byte("hello"),
		"certificate": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}),
		"garbage DER": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2}}),
	} {
		if _, err := ParseKey(in); err == nil {
			t.Errorf("ParseKey(%s) succeeded", name)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmRSA, AlgorithmEd25519} {
		t.Run(string(alg), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys", "example.invalid")
			path := filepath.Join(dir, "hermod1.pem")
			key, created, err := LoadOrCreateKey(path, alg)
			if err != nil || !created {
				t.Fatalf("first LoadOrCreateKey = created %v, err %v", created, err)
			}
			if got, _ := algorithmOf(key.Public()); got != alg {
				t.Errorf("created %s key, want %s", got, alg)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}
			di, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != 0o700 {
				t.Errorf("key directory mode %v, want 0700", di.Mode().Perm())
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries, want only the key", len(entries))
			}

			// The other algorithm is ignored: an existing key is loaded as is.
			again, created, err := LoadOrCreateKey(path, AlgorithmEd25519)
			if err != nil || created {
				t.Fatalf("second LoadOrCreateKey = created %v, err %v", created, err)
			}
			if !equalKeys(key, again) {
				t.Errorf("reloaded key differs from created key")
			}
		})
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.pem")
	const n = 8
	keys := make([]crypto.Signer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], _, errs[i] = LoadOrCreateKey(path, AlgorithmEd25519) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if !equalKeys(keys[0], keys[i]) {
			t.Errorf("creator %d got a different key than creator 0", i)
		}
	}
	stored, _, err := LoadOrCreateKey(path, AlgorithmEd25519)
	if err != nil || !equalKeys(keys[0], stored) {
		t.Errorf("stored key differs from the returned ones (err %v)", err)
	}
}

func TestLoadOrCreateKeyErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(bad, AlgorithmRSA); err == nil {
		t.Errorf("corrupt key file accepted")
	}
	if data, _ := os.ReadFile(bad); string(data) != "not a key" {
		t.Errorf("corrupt key file was overwritten")
	}
	missing := filepath.Join(dir, "missing.pem")
	if _, _, err := LoadOrCreateKey(missing, "dsa"); err == nil {
		t.Errorf("unknown algorithm accepted")
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file was left behind for an unknown algorithm: %v", err)
	}
}

// benchMessage is a 4 KiB message.
func benchMessage() string {
	var b strings.Builder
	b.WriteString(testMessage)
	line := strings.Repeat("lorem ipsum dolor sit amet ", 2) + "\r\n"
	for b.Len()+len(line) <= 4096 {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("x", 4096-b.Len()-2) + "\r\n")
	return b.String()
}

func benchmarkSign(b *testing.B, alg Algorithm) {
	s, _ := setup(b, alg)
	msg := benchMessage()
	if len(msg) != 4096 {
		b.Fatalf("message is %d bytes", len(msg))
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(strings.NewReader(msg)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignRSA2048(b *testing.B) { benchmarkSign(b, AlgorithmRSA) }
func BenchmarkSignEd25519(b *testing.B) { benchmarkSign(b, AlgorithmEd25519) }

// TestOversignMatters shows what oversigning buys: with From listed once
// (go-msgauth used directly, as hermod's Signer always oversigns), a From
// added above the signed one goes unnoticed by the verifier.
func TestOversignMatters(t *testing.T) {
	key := newKey(t, AlgorithmEd25519)
	rec, _ := TXTRecord(key.Public())
	dns := fakeDNS{"hermod1._domainkey.example.invalid": rec}
	ms, err := msgdkim.NewSigner(&msgdkim.SignOptions{Domain: "example.invalid", Selector: "hermod1", Signer: key,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "Subject"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(ms, testMessage); err != nil {
		t.Fatal(err)
	}
	if err := ms.Close(); err != nil {
		t.Fatal(err)
	}
	signed := ms.Signature() + testMessage
	added := strings.Replace(signed, "From: Taro", "From: Evil <evil@example.invalid>\r\nFrom: Taro", 1)
	if err := verifyOne(t, added, dns); err != nil {
		t.Errorf("without oversigning, an added From should still verify: %v", err)
	}
}

func TestZoneText(t *testing.T) {
	a255, a256 := strings.Repeat("a", 255), strings.Repeat("a", 256)
	for in, want := range map[string]string{
		"":                       `""`,
		"v=DKIM1; k=ed25519; p=": `"v=DKIM1; k=ed25519; p="`,
		`a"b\c`:                  `"a\"b\\c"`,
		"tab\there\x7f":          `"tab\009here\127"`,
		a255:                     `"` + a255 + `"`,
		a256:                     `"` + a255 + `" "a"`,
		a255 + a255 + "bc":       `"` + a255 + `" "` + a255 + `" "bc"`,
		// The limit counts octets on the wire, not escaped characters.
		strings.Repeat(`"`, 256): `"` + strings.Repeat(`\"`, 255) + `" "\""`,
	} {
		if got := ZoneText(in); got != want {
			t.Errorf("ZoneText(%.20q…) = %.80q…, want %.80q…", in, got, want)
		}
	}
	if got, want := ZoneRecord("s._domainkey.example.invalid.", "x"), "s._domainkey.example.invalid.\tTXT\t\"x\""; got != want {
		t.Errorf("ZoneRecord = %q, want %q", got, want)
	}
	if got, want := ZoneRecord("s._domainkey.example.invalid", "x"), "s._domainkey.example.invalid.\tTXT\t\"x\""; got != want {
		t.Errorf("ZoneRecord without the dot = %q, want %q", got, want)
	}
}
