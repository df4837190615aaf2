// Package sender implements hermod's sender rule (docs/design.md "Sender rule"):
// given the header of a submitted message and what the account is allowed
// to use, it decides whether the mail goes out under the member's own
// verified domain or under the platform identity, and rewrites From and
// Reply-To accordingly. It does no storage and no DNS; the caller supplies
// the verified-domain lookup.
//
// The rule grants one identity, the From it writes, and nothing else in the
// header may claim another one, whichever identity was chosen:
//
//   - Sender and every Resent-* field are removed. hermod's From is always
//     a single mailbox, so Sender is never needed (RFC 5322 3.6.2), and a
//     client's Sender or Resent-From would be shown by readers as "sent by"
//     or "on behalf of" a person the rule never checked.
//   - DKIM-Signature, ARC-Seal, ARC-Message-Signature,
//     ARC-Authentication-Results and Authentication-Results supplied by the
//     client are removed before hermod signs: they would vouch for the
//     message in someone else's name (a replayed signature of another
//     domain, a forged "dkim=pass"). Return-Path is removed too: the
//     receiving MTA writes it from the envelope.
//   - A From whose local part contains "@" (a quoted string such as
//     "victim@bank.example"@customer.example) is refused with a *FromError
//     (550 5.6.0): readers show it, and the "(via …)" display name built
//     from it, as another address.
package sender

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
	"golang.org/x/net/idna"
	"golang.org/x/text/encoding/htmlindex"
)

// Kind is the kind of a submitted message, from its X-Hermod-Kind header.
type Kind string

const (
	// KindSecureSend is a document sent by a member; it may use the
	// member's verified domain. It is the default.
	KindSecureSend Kind = "secure-send"
	// KindInboxNotice notifies a partner of a document posted to their
	// in-product inbox; it always uses the platform identity.
	KindInboxNotice Kind = "inbox-notice"
)

// ParseKind parses an X-Hermod-Kind value, ignoring case and surrounding
// space. The empty string means KindSecureSend. It returns an error for any
// other value.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(strings.ToLower(strings.TrimSpace(s))); k {
	case "":
		return KindSecureSend, nil
	case KindSecureSend, KindInboxNotice:
		return k, nil
	}
	return "", fmt.Errorf("sender: unknown kind %q (want %q or %q)", s, KindSecureSend, KindInboxNotice)
}

// Rule is the platform side of the sender rule, from the configuration.
type Rule struct {
	// DefaultFrom is the platform's Header-From address, such as
	// "bounce@makeleaps.com" (an addr-spec, no display name).
	DefaultFrom string
	// DisplayTemplate is the display name put on DefaultFrom, such as
	// "{name} (via MakeLeaps)". {name} is replaced by the member's display
	// name, or by their address when they have none. Empty means no
	// display name.
	DisplayTemplate string
	// BounceDomain is the platform's envelope (Return-Path) host, such as
	// "m.makeleaps.com".
	BounceDomain string
	// ReturnPathLabel is the label of a customer domain's Return-Path
	// CNAME: the envelope host of mail under example.com is
	// "<ReturnPathLabel>.example.com".
	ReturnPathLabel string
}

// Input is the account side of the sender rule for one message.
type Input struct {
	// CustomDomainOption reports whether the account has the paid
	// custom-domain option.
	CustomDomainOption bool
	// IsVerified reports whether domain (IDNA ASCII, lower case) is a
	// verified domain of the account. Anything else (pending, verifying,
	// failed, unknown) is false. Nil means no domain is verified. It is
	// only called when the other conditions of rule 1 hold.
	IsVerified func(domain string) bool
	// Kind is the message's kind; empty means KindSecureSend.
	Kind Kind
}

// Decision is the outcome of the sender rule.
type Decision struct {
	// From is the submitted Header-From address, local@domain, with the
	// domain in IDNA ASCII lower case.
	From string
	// CustomDomain is the member's verified domain (IDNA ASCII, lower case)
	// when rule 1 applies: it is the DKIM d= and the envelope host's
	// parent. It is empty when the platform identity is used (rule 2).
	CustomDomain string
	// EnvelopeHost is the domain of the envelope sender: the customer
	// domain's Return-Path host under rule 1, Rule.BounceDomain under
	// rule 2.
	EnvelopeHost string
}

// ErrFrom is matched, with errors.Is, by every *FromError.
var ErrFrom = errors.New("sender: invalid From")

// FromError reports a submitted From that the rule cannot accept: none or
// several From fields, a group, several mailboxes, or an unparsable one.
// The SMTP layer answers it with 550 5.6.0.
type FromError struct {
	// Msg is a short explanation that may be shown to the client.
	Msg string
	// Err is the underlying parse error, if any; it is not meant for the
	// client.
	Err error
}

// Error returns the message, with the parse error if any.
func (e *FromError) Error() string {
	if e.Err != nil {
		return "sender: " + e.Msg + ": " + e.Err.Error()
	}
	return "sender: " + e.Msg
}

// Unwrap returns the underlying parse error.
func (e *FromError) Unwrap() error { return e.Err }

// Is reports whether target is ErrFrom.
func (e *FromError) Is(target error) bool { return target == ErrFrom }

// maxNameRunes bounds a display name; longer ones are cut. It keeps header
// lines foldable and far below the 998-octet limit of RFC 5322 2.1.1.
const maxNameRunes = 256

// Validate checks the rule's configuration. It returns an error naming the
// first bad field.
func (r *Rule) Validate() error {
	_, _, err := r.defaultFrom()
	if err != nil {
		return err
	}
	if _, err := NormalizeDomain(r.BounceDomain); err != nil {
		return fmt.Errorf("sender: BounceDomain: %w", err)
	}
	if !isLDHLabel(r.ReturnPathLabel) {
		return fmt.Errorf("sender: ReturnPathLabel %q is not a single ASCII DNS label", r.ReturnPathLabel)
	}
	return nil
}

// defaultFrom returns DefaultFrom split into local part and ASCII domain.
func (r *Rule) defaultFrom() (local, domain string, err error) {
	a, err := mail.ParseAddress(r.DefaultFrom)
	if err != nil || a.Name != "" {
		return "", "", fmt.Errorf("sender: DefaultFrom %q is not a bare address", r.DefaultFrom)
	}
	local, domain = splitAddress(a.Address)
	if domain, err = NormalizeDomain(domain); err != nil {
		return "", "", fmt.Errorf("sender: DefaultFrom: %w", err)
	}
	return local, domain, nil
}

// Apply decides the sender identity of a message and rewrites h in place.
//
// Rule 1 (the account has the option, the From domain is verified, and the
// kind is not inbox-notice) keeps the member's From; rule 2 replaces it
// with the platform's DefaultFrom, named after DisplayTemplate. Under both,
// Reply-To is set to the member's mailbox unless the application set one,
// and the fields of IdentityFields (and every Resent-* field) are removed,
// so that no field claims an identity the rule did not grant. Other fields
// and the body are not touched.
//
// From is always rewritten, not copied: its display name is decoded
// (RFC 2047, any WHATWG charset), stripped of control and bidi-override
// characters, and encoded again, so that no input can add a header field or
// a line break, and so that the From domain is written in IDNA ASCII.
//
// It returns a *FromError when h does not have exactly one From field with
// exactly one mailbox on a valid domain, or when that mailbox's local part
// contains "@", and another error when r is
// misconfigured or in.Kind is unknown; h is unchanged then.
func (r *Rule) Apply(h *textproto.Header, in Input) (Decision, error) {
	kind := in.Kind
	if kind == "" {
		kind = KindSecureSend
	}
	if _, err := ParseKind(string(kind)); err != nil {
		return Decision{}, err
	}
	if err := r.Validate(); err != nil {
		return Decision{}, err
	}

	name, local, domain, err := parseFrom(h)
	if err != nil {
		return Decision{}, err
	}
	member := local + "@" + domain
	memberMailbox := formatMailbox(name, local, domain)

	var d Decision
	d.From = member
	if in.CustomDomainOption && kind != KindInboxNotice && in.IsVerified != nil && in.IsVerified(domain) {
		d.CustomDomain = domain
		d.EnvelopeHost = strings.ToLower(r.ReturnPathLabel) + "." + domain
		h.Set("From", memberMailbox)
	} else {
		d.EnvelopeHost, _ = NormalizeDomain(r.BounceDomain) // checked by Validate
		pLocal, pDomain, _ := r.defaultFrom()               // checked by Validate
		display := name
		if display == "" {
			display = member
		}
		// name is already cut to size; the template's own text is kept.
		display = sanitize(strings.ReplaceAll(r.DisplayTemplate, "{name}", display), maxNameRunes+utf8.RuneCountInString(r.DisplayTemplate))
		h.Set("From", formatMailbox(display, pLocal, pDomain))
	}
	if strings.TrimSpace(h.Get("Reply-To")) == "" {
		h.Set("Reply-To", memberMailbox)
	}
	removeIdentityFields(h)
	return d, nil
}

// IdentityFields returns the names of the fields Apply removes from every
// message, besides every field whose name starts with "Resent-": fields
// that name a sender or vouch for one (see the package documentation). The
// caller may modify the returned slice.
func IdentityFields() []string { return append([]string(nil), identityFields...) }

// identityFields backs IdentityFields; it is never modified.
var identityFields = []string{
	"Sender",
	"DKIM-Signature",
	"ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
	"Authentication-Results",
	"Return-Path",
}

// removeIdentityFields deletes the fields of identityFields and every
// Resent-* field from h.
func removeIdentityFields(h *textproto.Header) {
	for _, k := range identityFields {
		h.Del(k)
	}
	for f := h.Fields(); f.Next(); {
		if len(f.Key()) >= len("resent-") && strings.EqualFold(f.Key()[:len("resent-")], "resent-") {
			f.Del()
		}
	}
}

// newWordDecoder returns a decoder of RFC 2047 encoded words in any charset
// of the WHATWG encoding standard (ISO-2022-JP, Shift_JIS, EUC-JP…). Bytes
// of an unknown charset are passed through, to be replaced later where they
// are not UTF-8, rather than refusing the mail.
func newWordDecoder() *mime.WordDecoder {
	return &mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
		enc, err := htmlindex.Get(charset)
		if err != nil {
			return input, nil
		}
		return enc.NewDecoder().Reader(input), nil
	}}
}

// parseFrom returns the sanitised display name, the local part and the
// IDNA ASCII domain of the single mailbox of h's single From field.
func parseFrom(h *textproto.Header) (name, local, domain string, err error) {
	switch n := h.FieldsByKey("From").Len(); {
	case n == 0:
		return "", "", "", &FromError{Msg: "message has no From header field"}
	case n > 1:
		return "", "", "", &FromError{Msg: "message has more than one From header field"}
	}
	v := h.Get("From")
	if strings.TrimSpace(v) == "" {
		return "", "", "", &FromError{Msg: "From header field is empty"}
	}
	// net/mail flattens a group into its members, so look for the group
	// syntax first (RFC 5322 3.4: group = display-name ":" [group-list] ";").
	if isGroup(v) {
		return "", "", "", &FromError{Msg: "From must be a single mailbox, not a group"}
	}
	dec := newWordDecoder()
	p := mail.AddressParser{WordDecoder: dec}
	list, err := p.ParseList(v)
	if err != nil {
		return "", "", "", &FromError{Msg: "From header field cannot be parsed", Err: err}
	}
	if len(list) != 1 {
		return "", "", "", &FromError{Msg: fmt.Sprintf("From must hold exactly one mailbox, not %d", len(list))}
	}
	a := list[0]
	local, domain = splitAddress(a.Address)
	if local == "" {
		return "", "", "", &FromError{Msg: "From address has an empty local part"}
	}
	if strings.ContainsRune(local, '@') {
		// "victim@bank.example"@customer.example: valid RFC 5322, but
		// readers show it, and the display name made from it, as the
		// address before the quotes.
		return "", "", "", &FromError{Msg: "From address has a quoted local part containing \"@\", which mail readers show as another address: use a plain address such as taro@example.com"}
	}
	if len(local) > 64 {
		// RFC 5321 4.5.3.1.1; a longer one cannot even be folded onto lines.
		return "", "", "", &FromError{Msg: "From address has a local part longer than 64 octets"}
	}
	if domain, err = NormalizeDomain(domain); err != nil {
		return "", "", "", &FromError{Msg: "From address has an invalid domain", Err: err}
	}
	// net/mail leaves encoded words inside quoted strings alone (RFC 2047
	// 5), but mail readers decode them, and many senders write them so:
	// decode them too, so that what is sanitised is what readers show.
	name = a.Name
	if decoded, err := dec.DecodeHeader(name); err == nil {
		name = decoded
	}
	return sanitize(name, maxNameRunes), local, domain, nil
}

// isGroup reports whether the address list s contains a ":" or ";" outside
// quoted strings, comments, domain literals and angle brackets, which only
// the group syntax can produce.
func isGroup(s string) bool {
	var (
		quoted  bool
		comment int
		bracket bool
		angle   bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted || comment > 0:
			switch {
			case c == '\\':
				i++
			case quoted && c == '"':
				quoted = false
			case !quoted && c == '(':
				comment++
			case !quoted && c == ')':
				comment--
			}
		case bracket:
			if c == ']' {
				bracket = false
			}
		case c == '"':
			quoted = true
		case c == '(':
			comment++
		case c == '[':
			bracket = true
		case angle:
			if c == '>' {
				angle = false
			}
		case c == '<':
			angle = true
		case c == ':' || c == ';':
			return true
		}
	}
	return false
}

// splitAddress splits an addr-spec at its last "@".
func splitAddress(addr string) (local, domain string) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr, ""
	}
	return addr[:at], addr[at+1:]
}

// NormalizeDomain returns s in IDNA ASCII form (the Lookup profile of UTS
// #46), lower case, without a trailing dot. It returns an error for an
// empty name, an empty or over-long label, or a name IDNA refuses (such as
// one with "_", "@" or spaces).
func NormalizeDomain(s string) (string, error) {
	d := strings.TrimSuffix(s, ".")
	if d == "" {
		return "", errors.New("sender: empty domain")
	}
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("sender: domain %q: %w", s, err)
	}
	a = strings.ToLower(a)
	if len(a) > 253 {
		return "", fmt.Errorf("sender: domain %q is too long", s)
	}
	for _, label := range strings.Split(a, ".") {
		if !isLDHLabel(label) {
			return "", fmt.Errorf("sender: domain %q has a malformed label %q", s, label)
		}
	}
	return a, nil
}

// isLDHLabel reports whether s is a DNS label of 1 to 63 letters, digits
// and hyphens (RFC 5890 2.3.1), in any case.
func isLDHLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// sanitize makes display-name text safe to write: it replaces invalid
// UTF-8, turns runs of white space and control characters (CR, LF, NUL,
// C1, line and paragraph separators) into one space, drops bidi embedding,
// override and isolate characters (which could make "(via MakeLeaps)" read
// backwards), trims, and cuts the result to limit runes.
func sanitize(s string, limit int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	b.Grow(len(s))
	space, n := false, 0
	for _, r := range s {
		switch {
		case r == ' ' || r == '\t' || unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			space = true
			continue
		case r >= '\u202A' && r <= '\u202E', r >= '\u2066' && r <= '\u2069', r == '\uFEFF':
			continue
		}
		if space && n > 0 {
			if n+1 >= limit {
				break
			}
			b.WriteByte(' ')
			n++
		}
		if n == limit {
			break
		}
		space = false
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// formatMailbox renders a mailbox for a header field value. name must be
// sanitised. The result contains no CR or LF.
func formatMailbox(name, local, domain string) string {
	addr := formatLocal(local) + "@" + domain
	if name == "" {
		return addr
	}
	return formatPhrase(name) + " <" + addr + ">"
}

// formatLocal writes a local part as a dot-atom when it is one, else as a
// quoted string (RFC 5322 3.4.1).
func formatLocal(local string) string {
	for _, w := range strings.Split(local, ".") {
		if w == "" || strings.IndexFunc(w, func(r rune) bool { return !isAtext(r) }) >= 0 {
			return quoteString(local)
		}
	}
	return local
}

// formatPhrase renders a sanitised display name as an RFC 5322 phrase:
// plain atoms when possible, a quoted string when it has specials, and
// RFC 2047 B encoded words when it is not ASCII. Text that itself looks
// like an encoded word is encoded too, so that readers decode it exactly
// once, back to the text we checked.
func formatPhrase(name string) string {
	ascii := true
	atoms := true
	for _, r := range name {
		if r < ' ' || r > '~' {
			ascii = false
			break
		}
		if r != ' ' && !isAtext(r) {
			atoms = false
		}
	}
	switch {
	case !ascii || strings.Contains(name, "=?"):
		return encodeWords(name)
	case atoms:
		return name
	}
	return quoteString(name)
}

// maxWordBytes is the UTF-8 text carried by one encoded word: its base64
// form is 52 characters, so "=?utf-8?b?" + 52 + "?=" is 64, under the 75
// of RFC 2047 2, and short enough that "Reply-To: " and the first word fit
// in the 76 columns within which go-message folds; a longer first word
// would make it put the whole value on one very long line.
const maxWordBytes = 39

// encodeWords B-encodes s as space-separated encoded words, each holding
// whole characters (RFC 2047 5(3)).
func encodeWords(s string) string {
	var b strings.Builder
	for s != "" {
		n := 0
		for n < len(s) {
			_, size := utf8.DecodeRuneInString(s[n:])
			if n+size > maxWordBytes {
				break
			}
			n += size
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		// Not mime.BEncoding.Encode: it leaves ASCII text as it is, and
		// text such as "=?" must be encoded too.
		b.WriteString("=?utf-8?b?")
		b.WriteString(base64.StdEncoding.EncodeToString([]byte(s[:n])))
		b.WriteString("?=")
		s = s[n:]
	}
	return b.String()
}

// isAtext reports whether r may appear in an atom (RFC 5322 3.2.3, RFC 6532
// 3.2 for non-ASCII).
func isAtext(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case r >= utf8.RuneSelf:
		return unicode.IsGraphic(r) && !unicode.IsSpace(r)
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// quoteString renders s as an RFC 5322 quoted string. s must not contain
// CR or LF.
func quoteString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
