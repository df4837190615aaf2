// Package verp encodes and verifies the per-recipient envelope senders hermod
// delivers with (VERP, variable envelope return path).
//
// Every recipient of every message is delivered with its own envelope sender
//
//	bounce-md_<token>@<bounce host>
//
// so that a bounce arriving at the bounce listener names the message and the
// recipient it is about without parsing the bounce body. The token carries a
// truncated HMAC so that a forged bounce cannot put an arbitrary address on the
// suppression list.
//
// # Token format (version 2)
//
// The token is exactly TokenLen (35) characters of lower-case base32hex
// (RFC 4648 section 7, alphabet "0123456789abcdefghijklmnopqrstuv", no padding):
//
//	offset  0..15  message id, verbatim (16 chars = 10 bytes)
//	offset 16..18  recipient index, 3 base32hex digits, big-endian, zero-padded (0..9999)
//	offset 19..34  MAC: the first 80 bits (10 bytes) of
//	               HMAC-SHA256(secret, "hermod-verp-v2|" + msgID + "|" + decimal(rcpt)),
//	               base32hex-encoded (16 chars)
//
// The local part Prefix+token is 45 octets, under the 64 of RFC 5321
// 4.5.3.1.1. Only lower-case letters and digits are used because some MTAs fold
// the case of local parts; Decode folds ASCII upper case before verifying.
//
// # Tokens of a node's message ids (version 3)
//
// On a cluster a message id names the node that owns it: "<node>-<16
// chars>", node being the `[cluster] node_id` (1 to 8 of [a-z0-9], starting
// with a letter). Its token names the node too, so that any node's bounce
// listener can tell the owner from the address alone:
//
//	<node>-<35 chars>
//
// The 35 characters are laid out as in version 2 over the 16-character core
// of the id (the part after "<node>-"), but the MAC is
//
//	HMAC-SHA256(secret, "hermod-verp-v3|" + msgID + "|" + decimal(rcpt))
//
// over the whole id, node included. A token moved to another node (its node
// part edited), a version 2 token given a node part, and a version 3 token
// stripped of it all fail the MAC. The local part is at most
// len(Prefix)+MaxTokenLen = 54 octets; "-" is the only character beyond
// lower-case letters and digits, and it never occurs in base32hex, so it
// separates the node unambiguously. Decode folds upper case in the node part
// too.
//
// # Version 1 (still accepted)
//
// Version 1 tokens, which hermod issued before, are TokenLenV1 (27)
// characters: the same id and index, then a MAC of 40 bits (8 chars) over
// "hermod-verp-v1|" + msgID + "|" + decimal(rcpt). Decode still verifies
// them, so bounces for messages queued before the change keep working.
// 40 bits could be guessed online in days at line speed; 80 bits cannot,
// and the bounce listener also limits refused recipients per client.
package verp

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/hermod-mta/hermod/internal/atomicfile"
	"github.com/hermod-mta/hermod/vocab"
)

// Prefix starts the local part of every VERP envelope sender.
const Prefix = "bounce-md_"

const (
	// MsgIDLen is the length of a single-node hermod message id (10 bytes in
	// base32hex), and of the core of a node's id after "<node>-".
	MsgIDLen = 16
	// MaxMsgIDLen is the length of the longest message id: a node id of
	// vocab.MaxNodeIDLen characters, "-" and MsgIDLen characters.
	MaxMsgIDLen = vocab.MaxNodeIDLen + 1 + MsgIDLen
	// MaxRecipients bounds the recipient index: valid indices are 0..MaxRecipients-1.
	MaxRecipients = 10000
	rcptLen       = 3  // 32^3 = 32768 > MaxRecipients
	macLen        = 16 // 80 bits
	macLenV1      = 8  // 40 bits
	// TokenLen is the exact length of a token returned by Encode.
	TokenLen = MsgIDLen + rcptLen + macLen
	// TokenLenV1 is the length of a version 1 token, which Decode accepts.
	TokenLenV1 = MsgIDLen + rcptLen + macLenV1
	// MaxTokenLen is the length of the longest token: version 3 for a node id
	// of vocab.MaxNodeIDLen characters.
	MaxTokenLen = vocab.MaxNodeIDLen + 1 + TokenLen
	// MinSecretLen is the shortest secret New accepts.
	MinSecretLen = 16
	// secretLen is the size LoadOrCreateSecret generates.
	secretLen = 32

	alphabet     = "0123456789abcdefghijklmnopqrstuv"
	macContext   = "hermod-verp-v2|"
	macContextV1 = "hermod-verp-v1|"
	macContextV3 = "hermod-verp-v3|"
)

// ErrInvalid is wrapped by every error Decode and ParseAddress return.
var ErrInvalid = errors.New("verp: invalid address")

// Codec encodes and verifies tokens with one secret. It is safe for
// concurrent use.
type Codec struct {
	secret []byte
}

// New returns a Codec using secret, which is copied. It returns an error if
// the secret is shorter than MinSecretLen bytes.
func New(secret []byte) (*Codec, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("verp: secret is %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	return &Codec{secret: append([]byte(nil), secret...)}, nil
}

// ValidMessageID reports whether id is a hermod message id: exactly MsgIDLen
// characters of lower-case base32hex, optionally after a node id (see
// vocab.ParseNodeID) and "-". It agrees with queue.ValidID.
func ValidMessageID(id string) bool {
	node, core, ok := strings.Cut(id, "-")
	if !ok {
		core = id
	} else if !vocab.NodeID(node).Valid() {
		return false
	}
	return validCore(core)
}

// validCore reports whether core is MsgIDLen lower-case base32hex digits.
func validCore(core string) bool {
	if len(core) != MsgIDLen {
		return false
	}
	for i := 0; i < len(core); i++ {
		if digit(core[i]) < 0 {
			return false
		}
	}
	return true
}

// Encode returns the token (without Prefix) for recipient rcpt of message
// msgID, in the format described in the package documentation: version 2
// for a single-node id, version 3 ("<node>-" and 35 characters) for a
// node's id.
//
// Encode panics if msgID is not a valid message id (see ValidMessageID) or rcpt
// is outside 0..MaxRecipients-1: both come from the queue, never from the
// network, so either is a programming error, and an envelope sender that could
// never be decoded would silently lose every bounce for it.
func (c *Codec) Encode(msgID string, rcpt int) string {
	if !ValidMessageID(msgID) {
		panic(fmt.Sprintf("verp: Encode: invalid message id %q", msgID))
	}
	if rcpt < 0 || rcpt >= MaxRecipients {
		panic(fmt.Sprintf("verp: Encode: recipient index %d out of range", rcpt))
	}
	ctx := macContext
	node, core, clustered := strings.Cut(msgID, "-")
	if !clustered {
		node, core = "", msgID
	} else {
		ctx = macContextV3
		node += "-"
	}
	var buf [MaxTokenLen]byte
	b := append(buf[:0], node...)
	t := b[len(b) : len(b)+TokenLen]
	copy(t, core)
	putRcpt(t[MsgIDLen:MsgIDLen+rcptLen], rcpt)
	c.putMAC(t[MsgIDLen+rcptLen:], ctx, msgID, rcpt)
	return string(b[:len(b)+TokenLen])
}

// LocalPart returns Prefix followed by Encode(msgID, rcpt); it panics as Encode does.
func (c *Codec) LocalPart(msgID string, rcpt int) string {
	return Prefix + c.Encode(msgID, rcpt)
}

// Decode verifies token (without Prefix), of version 3, 2 or 1, and returns
// the message id (with its node for version 3) and recipient index it names.
// ASCII upper case is folded to lower case first. Every error wraps
// ErrInvalid: wrong length, a node part that is not a node id, a character
// outside base32hex, a recipient index out of range, or a MAC that does not
// match (compared in constant time).
func (c *Codec) Decode(token string) (msgID string, rcpt int, err error) {
	ctx := macContext
	node := ""
	if i := strings.IndexByte(token, '-'); i >= 0 {
		if i > vocab.MaxNodeIDLen {
			return "", 0, fmt.Errorf("%w: node part of %d characters, at most %d", ErrInvalid, i, vocab.MaxNodeIDLen)
		}
		n, err := vocab.ParseNodeID(lowerASCII(token[:i]))
		if err != nil {
			return "", 0, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		node, token, ctx = string(n)+"-", token[i+1:], macContextV3
		if len(token) != TokenLen {
			return "", 0, fmt.Errorf("%w: token length %d after the node, want %d", ErrInvalid, len(token), TokenLen)
		}
	}
	switch {
	case len(token) == TokenLen:
	case len(token) == TokenLenV1: // never after a node: checked above
		ctx = macContextV1
	default:
		return "", 0, fmt.Errorf("%w: token length %d, want %d (or %d)", ErrInvalid, len(token), TokenLen, TokenLenV1)
	}
	b := make([]byte, len(token))
	for i := 0; i < len(token); i++ {
		ch := token[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if digit(ch) < 0 {
			return "", 0, fmt.Errorf("%w: bad character at offset %d", ErrInvalid, i)
		}
		b[i] = ch
	}
	rcpt = 0
	for _, ch := range b[MsgIDLen : MsgIDLen+rcptLen] {
		rcpt = rcpt*32 + digit(ch)
	}
	if rcpt >= MaxRecipients {
		return "", 0, fmt.Errorf("%w: recipient index %d out of range", ErrInvalid, rcpt)
	}
	msgID = node + string(b[:MsgIDLen])
	want := make([]byte, len(token)-MsgIDLen-rcptLen)
	c.putMAC(want, ctx, msgID, rcpt)
	if subtle.ConstantTimeCompare(want, b[MsgIDLen+rcptLen:]) != 1 {
		return "", 0, fmt.Errorf("%w: bad MAC", ErrInvalid)
	}
	return msgID, rcpt, nil
}

// ParseAddress decodes a full VERP address such as
// "bounce-md_<token>@host", optionally in angle brackets and in any ASCII
// case. The host is not checked. Every error wraps ErrInvalid.
func (c *Codec) ParseAddress(addr string) (msgID string, rcpt int, err error) {
	a := strings.TrimSpace(addr)
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") {
		a = a[1 : len(a)-1]
	}
	at := strings.LastIndexByte(a, '@')
	if at < 0 || at == len(a)-1 {
		return "", 0, fmt.Errorf("%w: %q is not an address", ErrInvalid, addr)
	}
	local := a[:at]
	if len(local) < len(Prefix) || !strings.EqualFold(local[:len(Prefix)], Prefix) {
		return "", 0, fmt.Errorf("%w: local part of %q does not start with %q", ErrInvalid, addr, Prefix)
	}
	msgID, rcpt, err = c.Decode(local[len(Prefix):])
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	return msgID, rcpt, nil
}

// putMAC writes the MAC of (msgID, rcpt) under context ctx into dst:
// len(dst) base32hex digits (8 for 40 bits, 16 for 80 bits), most
// significant first.
func (c *Codec) putMAC(dst []byte, ctx, msgID string, rcpt int) {
	m := hmac.New(sha256.New, c.secret)
	var in [len(macContext) + MaxMsgIDLen + 1 + 4]byte
	buf := append(in[:0], ctx...)
	buf = append(buf, msgID...)
	buf = append(buf, '|')
	buf = strconv.AppendInt(buf, int64(rcpt), 10)
	m.Write(buf)
	var sum [sha256.Size]byte
	s := m.Sum(sum[:0])
	// Every 5 bytes (40 bits) are 8 base32 digits, most significant first.
	for g := 0; g*8 < len(dst); g++ {
		b := s[g*5 : g*5+5]
		v := uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
		for i := 7; i >= 0; i-- {
			dst[g*8+i] = alphabet[v&31]
			v >>= 5
		}
	}
}

// lowerASCII folds ASCII upper case in s and nothing else (strings.ToLower
// would also fold non-ASCII letters such as the Kelvin sign into "k").
func lowerASCII(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if 'A' <= ch && ch <= 'Z' {
			b[i] = ch + 'a' - 'A'
		}
	}
	return string(b)
}

func putRcpt(dst []byte, rcpt int) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = alphabet[rcpt&31]
		rcpt >>= 5
	}
}

// digit returns the value of a lower-case base32hex digit, or -1.
func digit(ch byte) int {
	switch {
	case '0' <= ch && ch <= '9':
		return int(ch - '0')
	case 'a' <= ch && ch <= 'v':
		return int(ch-'a') + 10
	}
	return -1
}

// LoadOrCreateSecret returns the VERP secret stored hex-encoded in the file at
// path. If the file does not exist, it creates it with 32 random bytes, mode
// 0600, creating missing directories with mode 0700. Creation is atomic: the
// secret is written and synced to a temporary file which is then hard-linked
// into place, so a concurrent caller or a crash never leaves a partial file,
// and a file created concurrently by another process wins and is returned.
//
// It returns an error if the file cannot be read or created, or if an existing
// file does not hold at least MinSecretLen hex-encoded bytes.
func LoadOrCreateSecret(path string) ([]byte, error) {
	secret, err := readSecret(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return secret, err
	}
	secret = make([]byte, secretLen)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("verp: generate secret: %w", err)
	}
	created, err := atomicfile.Create(path, []byte(hex.EncodeToString(secret)+"\n"))
	if err != nil {
		return nil, fmt.Errorf("verp: store secret: %w", err)
	}
	if !created { // created meanwhile by another process: use that one
		return readSecret(path)
	}
	return secret, nil
}

func readSecret(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("verp: read secret: %w", err)
	}
	secret, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("verp: secret file %s: %w", path, err)
	}
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("verp: secret file %s holds %d bytes, need at least %d", path, len(secret), MinSecretLen)
	}
	return secret, nil
}
