package dkim

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// DefaultHeaders returns the list of header fields signed when
// Signer.Headers is nil (RFC 6376 5.4.1). From, Reply-To, To, Cc and Subject
// appear twice: listing a field once more than it occurs ("oversigning",
// RFC 6376 8.15) makes the signature fail if anyone adds a second instance,
// such as a second From that a mail reader would show instead. A field
// listed but absent from the message must stay absent for the signature to
// verify. The caller may modify the returned slice.
func DefaultHeaders() []string {
	return append([]string(nil), defaultHeaders...)
}

// defaultHeaders backs DefaultHeaders; it is never modified.
var defaultHeaders = []string{
	"From", "From",
	"Reply-To", "Reply-To",
	"To", "To",
	"Cc", "Cc",
	"Subject", "Subject",
	"Date",
	"Message-ID",
	"MIME-Version",
	"Content-Type",
	"Content-Transfer-Encoding",
	"In-Reply-To",
	"References",
}

// Signer signs messages for one domain and selector. Its fields are only
// read, so one Signer may be used by many goroutines at once.
type Signer struct {
	// Domain is the signing domain, d= (ASCII; an IDN in its A-label form).
	Domain string
	// Selector is s=: the key's record is at <Selector>._domainkey.<Domain>.
	Selector string
	// Key is the private key, an *rsa.PrivateKey or ed25519.PrivateKey.
	Key crypto.Signer
	// Headers lists the header fields to sign; nil means DefaultHeaders().
	// It must contain From.
	Headers []string
}

// NewSigner returns a Signer that signs DefaultHeaders() for domain with the
// key published under selector.
func NewSigner(domain, selector string, key crypto.Signer) *Signer {
	return &Signer{Domain: domain, Selector: selector, Key: key}
}

// Sign reads a whole message (header, blank line, body; CRLF line endings)
// and returns its DKIM-Signature header field, with the field name, folded
// and ending in CRLF, ready to be prepended to the message. It signs with
// relaxed/relaxed canonicalisation and SHA-256. The message is streamed
// through the hash, not buffered.
//
// It returns an error when the Signer is misconfigured (empty or malformed
// domain or selector, no key, Headers without From), when reading the
// message fails, or when the message has no complete header.
func (s *Signer) Sign(message io.Reader) (string, error) {
	if err := checkDNSName("domain", s.Domain); err != nil {
		return "", err
	}
	if err := checkDNSName("selector", s.Selector); err != nil {
		return "", err
	}
	if s.Key == nil {
		return "", errors.New("dkim: signer has no key")
	}
	headers := s.Headers
	if headers == nil {
		headers = defaultHeaders // read-only in go-msgauth, so no copy
	}
	ms, err := msgdkim.NewSigner(&msgdkim.SignOptions{
		Domain:                 s.Domain,
		Selector:               s.Selector,
		Signer:                 s.Key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
		BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
		HeaderKeys:             headers,
	})
	if err != nil {
		return "", fmt.Errorf("dkim: %w", err)
	}
	if _, err := io.Copy(ms, message); err != nil {
		ms.Close() // releases the hashing goroutine; its result is moot
		return "", fmt.Errorf("dkim: read message: %w", err)
	}
	if err := ms.Close(); err != nil {
		return "", fmt.Errorf("dkim: sign: %w", err)
	}
	return ms.Signature(), nil
}

// checkDNSName rejects a d= or s= value that is not a plain ASCII domain
// name: the value is pasted into the tag list unescaped, so a ";" or "="
// would add tags of its own.
func checkDNSName(what, s string) error {
	if s == "" {
		return fmt.Errorf("dkim: empty %s", what)
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("dkim: malformed %s %q", what, s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("dkim: malformed %s %q", what, s)
			}
		}
	}
	return nil
}

// VerifyResult is the outcome of checking one DKIM-Signature field.
type VerifyResult struct {
	// Domain is the signature's d= domain.
	Domain string
	// Err is nil when the signature is valid.
	Err error
}

// Verify checks every DKIM-Signature of message, looking keys up with
// lookupTXT (the system resolver when nil). It exists for tests and for
// the operator's self-check, not to judge inbound mail. It returns an error
// only when the message cannot be read; a bad signature is reported in its
// VerifyResult.
func Verify(message io.Reader, lookupTXT func(domain string) ([]string, error)) ([]VerifyResult, error) {
	vs, err := msgdkim.VerifyWithOptions(message, &msgdkim.VerifyOptions{LookupTXT: lookupTXT})
	if err != nil {
		return nil, fmt.Errorf("dkim: verify: %w", err)
	}
	res := make([]VerifyResult, len(vs))
	for i, v := range vs {
		res[i] = VerifyResult{Domain: v.Domain, Err: v.Err}
	}
	return res, nil
}
