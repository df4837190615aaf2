// Package dkim creates DKIM keys and signs outgoing mail with them
// (RFC 6376, RFC 8463 for Ed25519). It is the only package of hermod that
// imports go-msgauth's dkim package.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/hermod-mta/hermod/internal/atomicfile"
)

// Algorithm is a DKIM key algorithm.
type Algorithm string

const (
	// AlgorithmRSA is a 2048-bit RSA key (rsa-sha256), understood by every
	// verifier.
	AlgorithmRSA Algorithm = "rsa"
	// AlgorithmEd25519 is an Ed25519 key (ed25519-sha256, RFC 8463).
	AlgorithmEd25519 Algorithm = "ed25519"
)

// rsaBits is the size of generated RSA keys: RFC 8301 3.2 says signers
// SHOULD use at least 2048 bits.
const rsaBits = 2048

// minRSABits is the smallest RSA key accepted from a file: RFC 8301 3.2 says
// verifiers MUST NOT accept signatures made with smaller keys.
const minRSABits = 1024

// ParseAlgorithm parses a configured algorithm name. The empty string means
// AlgorithmRSA. It returns an error for any other unknown name.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return AlgorithmRSA, nil
	case AlgorithmRSA, AlgorithmEd25519:
		return a, nil
	}
	return "", fmt.Errorf("dkim: unknown key algorithm %q (want %q or %q)", s, AlgorithmRSA, AlgorithmEd25519)
}

// GenerateKey returns a new private key for alg. It returns an error for an
// unknown algorithm or when the system's random source fails.
func GenerateKey(alg Algorithm) (crypto.Signer, error) {
	switch alg {
	case AlgorithmRSA:
		k, err := rsa.GenerateKey(rand.Reader, rsaBits)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate RSA key: %w", err)
		}
		return k, nil
	case AlgorithmEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dkim: generate Ed25519 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("dkim: unknown key algorithm %q", alg)
}

// MarshalKey encodes k as a PEM "PRIVATE KEY" block (PKCS #8). It returns
// an error for keys other than *rsa.PrivateKey and ed25519.PrivateKey.
func MarshalKey(k crypto.Signer) ([]byte, error) {
	if _, err := algorithmOf(k.Public()); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("dkim: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes the first PEM block of pemBytes: a PKCS #8 "PRIVATE KEY"
// (as written by MarshalKey) or, for keys made by other tools, a PKCS #1
// "RSA PRIVATE KEY". It returns an error when there is no such block, when
// the key is neither RSA nor Ed25519, or when an RSA key is shorter than
// 1024 bits.
func ParseKey(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("dkim: no PEM block in key data")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("dkim: unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: parse key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("dkim: RSA key has %d bits, need at least %d", bits, minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("dkim: unsupported key type %T", key)
}

// LoadOrCreateKey reads the key stored at path, or, when there is no file
// there, generates one for alg and stores it. created reports which
// happened. An existing key is returned as it is, whatever its algorithm.
//
// A new key is written with mode 0600 to a temporary file in the same
// directory (created with mode 0700 if missing) and then linked into place,
// so that a reader never sees a partial file and two concurrent creators
// end up sharing one key. It returns an error when the file cannot be read
// or parsed, or the new key cannot be stored.
func LoadOrCreateKey(path string, alg Algorithm) (key crypto.Signer, created bool, err error) {
	key, err = loadKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}

	key, err = GenerateKey(alg)
	if err != nil {
		return nil, false, err
	}
	data, err := MarshalKey(key)
	if err != nil {
		return nil, false, err
	}
	created, err = atomicfile.Create(path, data)
	if err != nil {
		return nil, false, fmt.Errorf("dkim: store key: %w", err)
	}
	if !created { // stored meanwhile by another process: use that one
		key, err := loadKey(path)
		return key, false, err
	}
	return key, true, nil
}

// loadKey reads and parses the key file at path. Errors wrap the
// fs.ErrNotExist of a missing file.
func loadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dkim: read key: %w", err)
	}
	key, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// TXTRecord returns the DNS TXT record that publishes pub under
// "<selector>._domainkey.<domain>" (RFC 6376 3.6.1): "v=DKIM1; k=rsa;
// p=<SubjectPublicKeyInfo>" or "v=DKIM1; k=ed25519; p=<raw key>" (RFC 8463),
// base64-encoded. An RSA-2048 record is longer than 255 bytes, so whoever
// publishes it must split it into several strings of one record: ZoneText
// writes it so. It returns an error for keys other than *rsa.PublicKey and
// ed25519.PublicKey.
func TXTRecord(pub crypto.PublicKey) (string, error) {
	alg, err := algorithmOf(pub)
	if err != nil {
		return "", err
	}
	var raw []byte
	switch alg {
	case AlgorithmRSA:
		raw, err = x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("dkim: marshal public key: %w", err)
		}
	case AlgorithmEd25519:
		raw = pub.(ed25519.PublicKey)
	}
	return "v=DKIM1; k=" + string(alg) + "; p=" + base64.StdEncoding.EncodeToString(raw), nil
}

// maxTXTString is the longest character-string of a TXT record, in octets
// (RFC 1035 3.3: a length octet, then the data).
const maxTXTString = 255

// ZoneText returns txt as the RDATA of a TXT record in zone-file
// presentation form (RFC 1035 5.1), as BIND's named-checkzone and DNS
// consoles that take zone text accept it: one or more quoted strings of at
// most 255 octets each, separated by a space, with '"' and '\' escaped and
// octets outside printable ASCII written as \DDD. A DKIM verifier joins the
// strings without separators (RFC 6376 3.6.2.2), so the record means txt.
// The empty string is one empty quoted string.
func ZoneText(txt string) string {
	var b strings.Builder
	for first := true; first || txt != ""; first = false {
		n := min(len(txt), maxTXTString)
		if !first {
			b.WriteByte(' ')
		}
		b.WriteByte('"')
		for i := 0; i < n; i++ {
			switch c := txt[i]; {
			case c == '"' || c == '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case c < 0x20 || c > 0x7e:
				fmt.Fprintf(&b, "\\%03d", c)
			default:
				b.WriteByte(c)
			}
		}
		b.WriteByte('"')
		txt = txt[n:]
	}
	return b.String()
}

// ZoneRecord returns the zone-file line that publishes txt at the DNS name
// owner (absolute; a trailing dot is added when missing): owner, a tab,
// "TXT", a tab and ZoneText(txt), without a line end.
func ZoneRecord(owner, txt string) string {
	return strings.TrimSuffix(owner, ".") + ".\tTXT\t" + ZoneText(txt)
}

// algorithmOf returns the Algorithm of a public key.
func algorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch pub.(type) {
	case *rsa.PublicKey:
		return AlgorithmRSA, nil
	case ed25519.PublicKey:
		return AlgorithmEd25519, nil
	}
	return "", fmt.Errorf("dkim: unsupported key type %T", pub)
}
