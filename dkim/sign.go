package dkim

import (
	"bufio"
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// DefaultHeaders returns the names of the header fields signed when
// Signer.Headers is nil: every field a mail reader shows or acts on, and
// every field that claims an identity (RFC 6376 5.4.1, plus Sender,
// List-Unsubscribe-Post, Resent-*, the MIME fields and the others below).
// Sign lists each of them in h= once more than it occurs in the message
// ("oversigning", RFC 6376 8.15), so the signature fails if anyone adds
// another instance: a second From or Subject that a reader would show
// instead, a prepended Content-Type that turns the body into HTML, a
// List-Unsubscribe pointing elsewhere. A field absent from the message is
// listed once and must stay absent. The caller may modify the returned
// slice.
func DefaultHeaders() []string {
	return append([]string(nil), defaultHeaders...)
}

// defaultHeaders backs DefaultHeaders; it is never modified.
var defaultHeaders = []string{
	// Originator, destination and identification fields (RFC 5322 3.6).
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date",
	"Message-ID", "In-Reply-To", "References",
	// Informational fields some readers show (RFC 5322 3.6.5), and common
	// display fields.
	"Comments", "Keywords", "Organization",
	// MIME (RFC 2045, 2183, 3282): they decide how the body is shown.
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"Content-Disposition", "Content-ID", "Content-Description", "Content-Language",
	// Resent fields (RFC 5322 3.6.6): readers may show them as the sender.
	"Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc",
	"Resent-Message-ID",
	// Mailing-list and one-click unsubscribe fields (RFC 2369, 2919, 8058).
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
	// Fields that change how receivers treat the message: auto-replies
	// (RFC 3834), read receipts (RFC 8098), TLS policy (RFC 8689),
	// feedback loops.
	"Auto-Submitted", "Disposition-Notification-To", "TLS-Required", "Feedback-ID",
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
	// Headers names the header fields to sign; nil means
	// DefaultHeaders(). Each name is listed in h= once more than the field
	// occurs in the message (a name given twice counts once). It must
	// contain From.
	Headers []string

	// mu guards Selector and Key against SetKey (a key rollover) while
	// Sign runs.
	mu sync.RWMutex
}

// SetKey replaces the selector and key (a key rollover); Sign calls that
// started before keep the old pair.
func (s *Signer) SetKey(selector string, key crypto.Signer) {
	s.mu.Lock()
	s.Selector, s.Key = selector, key
	s.mu.Unlock()
}

// Current returns the selector and key Sign uses now.
func (s *Signer) Current() (selector string, key crypto.Signer) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.Selector, s.Key
}

// NewSigner returns a Signer that signs DefaultHeaders() for domain with the
// key published under selector.
func NewSigner(domain, selector string, key crypto.Signer) *Signer {
	return &Signer{Domain: domain, Selector: selector, Key: key}
}

// Sign reads a whole message (header, blank line, body; CRLF line endings)
// and returns its DKIM-Signature header field, with the field name, folded
// and ending in CRLF, ready to be prepended to the message. It signs with
// relaxed/relaxed canonicalisation and SHA-256, and oversigns every field of
// Headers (see DefaultHeaders). The header section is read into memory to
// count its fields; the body is streamed through the hash, not buffered.
//
// It returns an error when the Signer is misconfigured (empty or malformed
// domain or selector, no key, Headers without From), when reading the
// message fails, or when the message has no complete header.
func (s *Signer) Sign(message io.Reader) (string, error) {
	if err := checkDNSName("domain", s.Domain); err != nil {
		return "", err
	}
	selector, key := s.Current()
	if err := checkDNSName("selector", selector); err != nil {
		return "", err
	}
	if key == nil {
		return "", errors.New("dkim: signer has no key")
	}
	names := s.Headers
	if names == nil {
		names = defaultHeaders
	}
	br := bufio.NewReader(message)
	header, counts, err := readHeader(br)
	if err != nil {
		return "", err
	}
	headers := oversign(names, counts)
	ms, err := msgdkim.NewSigner(&msgdkim.SignOptions{
		Domain:                 s.Domain,
		Selector:               selector,
		Signer:                 key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
		BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
		HeaderKeys:             headers,
	})
	if err != nil {
		return "", fmt.Errorf("dkim: %w", err)
	}
	if _, err := io.Copy(ms, io.MultiReader(bytes.NewReader(header), br)); err != nil {
		ms.Close() // releases the hashing goroutine; its result is moot
		return "", fmt.Errorf("dkim: read message: %w", err)
	}
	if err := ms.Close(); err != nil {
		return "", fmt.Errorf("dkim: sign: %w", err)
	}
	return ms.Signature(), nil
}

// oversign returns the h= list: each distinct name of names (compared
// without regard to case) repeated once more than counts says the field
// occurs, in the order of names.
func oversign(names []string, counts map[string]int) []string {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, 2*len(names))
	for _, n := range names {
		k := strings.ToLower(strings.TrimSpace(n))
		if k == "" || seen[k] {
			continue
		}
		seen[k] = true
		for range counts[k] + 1 {
			out = append(out, n)
		}
	}
	return out
}

// readHeader reads the header section of a message up to and including the
// empty line that ends it, and counts its fields by lower-case name. A
// message without that empty line is an error: there is no header to sign.
func readHeader(r *bufio.Reader) (header []byte, counts map[string]int, err error) {
	counts = make(map[string]int)
	var buf bytes.Buffer
	lineStart := true // the next chunk read starts a line
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			if err == io.EOF {
				return nil, nil, errors.New("dkim: message has no complete header (no empty line before the body)")
			}
			return nil, nil, fmt.Errorf("dkim: read message: %w", err)
		}
		buf.Write(chunk)
		first := lineStart
		lineStart = err == nil // a full buffer means the line goes on
		if !first {
			continue
		}
		if string(chunk) == "\r\n" || string(chunk) == "\n" {
			return buf.Bytes(), counts, nil
		}
		if chunk[0] == ' ' || chunk[0] == '\t' {
			continue // folded continuation of the previous field
		}
		// The name is at the start of a line, well within the first chunk
		// (bufio's buffer holds 4096 bytes; RFC 5322 names are short).
		if i := bytes.IndexByte(chunk, ':'); i > 0 {
			counts[strings.ToLower(string(bytes.TrimSpace(chunk[:i])))]++
		}
	}
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
