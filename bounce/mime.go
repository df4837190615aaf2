package bounce

import (
	"bufio"
	"bytes"
	"html"
	"io"
	"regexp"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Limits that keep hostile input cheap.
const (
	maxDepth    = 8       // multipart nesting
	maxParts    = 200     // MIME parts visited
	maxPartBody = 1 << 20 // bytes read from one part
)

// envelope is what the MIME walk collects from a message.
type envelope struct {
	header    message.Header
	subject   string
	mediaType string
	params    map[string]string

	texts    []string // text/plain parts outside any returned message
	htmls    []string // text/html parts, used only when there is no text/plain
	dsn      []byte   // message/delivery-status
	feedback []byte   // message/feedback-report
	mdn      bool     // message/disposition-notification seen
	returned *textproto.Header
	parts    int
}

// parse is Parse without the recover, so that FuzzParse sees panics.
func parse(raw []byte) *Report {
	env := readEnvelope(raw)
	rep := &Report{Kind: KindUnknown, Subject: env.subject}
	if env.returned != nil {
		rep.OriginalMessageID = msgID(env.returned.Get("Message-Id"))
		rep.OriginalEnvelopeFrom = normAddr(env.returned.Get("Return-Path"))
	}
	switch {
	case env.dsn != nil:
		parseDSN(env, rep)
		if len(rep.Recipients) > 0 {
			return rep
		}
		// A report that names no recipient: fall back to its human text.
		parsePlain(env, rep, true)
		return rep
	case env.feedback != nil:
		parseARF(env, rep)
		return rep
	case env.mdn:
		rep.Kind = KindAutoReply
		rep.Recipients = replyingAddr(env)
		return rep
	case env.returned != nil && env.returned.Get("X-HmXmrOriginalRecipient") != "":
		// Microsoft's complaint (JMRP) format: the original message
		// with the complaining recipient in its own header.
		env.feedback = []byte("Feedback-Type: abuse\n")
		parseARF(env, rep)
		return rep
	}
	if parseSES(env.bodyText(), rep) {
		return rep
	}
	classifyPlain(env, rep)
	return rep
}

// readEnvelope walks the MIME tree of raw. A message whose header cannot be
// read is treated as plain text, so heuristics still get a chance.
func readEnvelope(raw []byte) *envelope {
	env := &envelope{}
	if bytes.HasPrefix(raw, []byte("From ")) {
		// A saved mbox message: "From MAILER-DAEMON  Thu Apr 29 …".
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[i+1:]
		}
	}
	// A boundary parameter on an unindented continuation line would end
	// the header there and stop the walk: indent it.
	raw = reBareBoundary.ReplaceAll(raw, []byte("$1\t$2"))
	e, err := message.Read(bytes.NewReader(raw))
	if e == nil || (err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
		env.texts = []string{string(raw)}
		return env
	}
	env.header = e.Header
	h := mail.Header{Header: e.Header}
	subj, err := h.Subject()
	if err != nil {
		subj = e.Header.Get("Subject")
	}
	env.subject = decodeJIS(subj)
	env.mediaType, env.params, _ = e.Header.ContentType()
	env.walk(e, 0)
	if strings.HasPrefix(env.mediaType, "multipart/") && env.dsn == nil && env.feedback == nil && !env.mdn &&
		len(env.texts) == 0 && len(env.htmls) == 0 {
		// The declared boundary never appears (or another one does):
		// read the raw body rather than give up.
		rawBodyFallback(env, raw)
	}
	return env
}

var (
	reBareBoundary = regexp.MustCompile(`(?i)(;[ \t]*\r?\n)(boundary=)`)
	reDSNStart     = regexp.MustCompile(`(?im)^(?:reporting-mta|final-recipient|original-recipient|action)[ \t]*:`)
)

// rawBodyFallback makes the raw body the report's text and, when it holds
// delivery-status fields, its delivery-status part.
func rawBodyFallback(env *envelope, raw []byte) {
	body := raw
	if i := bytes.Index(raw, []byte("\n\r\n")); i >= 0 {
		body = raw[i+3:]
	} else if i := bytes.Index(raw, []byte("\n\n")); i >= 0 {
		body = raw[i+2:]
	}
	if len(body) > maxPartBody {
		body = body[:maxPartBody]
	}
	env.texts = []string{decodeJIS(string(body))}
	if loc := reDSNStart.FindIndex(body); loc != nil && bytes.Contains(bytes.ToLower(body), []byte("final-recipient")) {
		env.dsn = body[loc[0]:]
	}
}

func (env *envelope) walk(e *message.Entity, depth int) {
	env.parts++
	if env.parts > maxParts || depth > maxDepth {
		return
	}
	mt, params, err := e.Header.ContentType()
	if err != nil || mt == "" {
		mt = "text/plain"
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		mr := e.MultipartReader()
		if mr == nil {
			return
		}
		for {
			p, err := mr.NextPart()
			if p == nil || (err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
				return
			}
			env.walk(p, depth+1)
			if env.parts > maxParts {
				return
			}
		}
	case mt == "message/delivery-status" || mt == "message/global-delivery-status":
		if env.dsn == nil {
			env.dsn = readPart(e.Body)
		}
	case mt == "message/feedback-report":
		if env.feedback == nil {
			env.feedback = readPart(e.Body)
		}
	case mt == "message/disposition-notification":
		env.mdn = true
	case mt == "message/rfc822" || mt == "message/global" || mt == "text/rfc822-headers" ||
		mt == "message/rfc822-headers" || mt == "message/global-headers":
		if env.returned == nil {
			h, err := textproto.ReadHeader(bufio.NewReader(io.LimitReader(e.Body, maxPartBody)))
			if err == nil || h.Len() > 0 {
				env.returned = &h
			}
		}
	case mt == "text/plain":
		b := readPart(e.Body)
		cs := strings.ToLower(params["charset"])
		if cs != "iso-2022-jp" {
			b = []byte(decodeJIS(string(b)))
		}
		env.texts = append(env.texts, string(b))
	case mt == "text/html":
		env.htmls = append(env.htmls, htmlText(string(readPart(e.Body))))
	}
}

func readPart(r io.Reader) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, maxPartBody))
	return b
}

// decodeJIS decodes ISO-2022-JP text that arrived without a charset label,
// as some Japanese carriers send it (escape sequences in raw 7-bit text).
func decodeJIS(s string) string {
	if !strings.Contains(s, "\x1b$B") && !strings.Contains(s, "\x1b$@") {
		return s
	}
	r, err := charset.Reader("iso-2022-jp", strings.NewReader(s))
	if err != nil {
		return s
	}
	b, err := io.ReadAll(r)
	if err != nil && len(b) == 0 {
		return s
	}
	return string(b)
}

var (
	reHTMLDrop  = regexp.MustCompile(`(?is)<(style|script|head)\b.*?</(style|script|head)\s*>`)
	reHTMLBreak = regexp.MustCompile(`(?i)<(br|/p|/div|/tr|/li|/h\d|/table)\b[^>]*>`)
	reHTMLTag   = regexp.MustCompile(`<[^>]*>`)
)

// htmlText reduces an HTML bounce to text lines good enough for heuristics.
func htmlText(s string) string {
	s = reHTMLDrop.ReplaceAllString(s, "")
	s = reHTMLBreak.ReplaceAllString(s, "\n")
	s = reHTMLTag.ReplaceAllString(s, "")
	return html.UnescapeString(s)
}

// bodyText is the human-readable text of the report.
func (env *envelope) bodyText() string {
	if len(env.texts) > 0 {
		return strings.Join(env.texts, "\n")
	}
	return strings.Join(env.htmls, "\n")
}
