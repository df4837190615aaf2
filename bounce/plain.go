package bounce

import (
	"regexp"
	"strings"

	"github.com/emersion/go-message/mail"

	"github.com/hermod-mta/hermod/vocab"
)

// Evidence for non-standard (non-RFC 3464) reports, matched lower-cased.
var (
	bounceSubjects = []string{
		"undelivered mail", "undeliverable", "delivery status notification", "mail delivery failed",
		"failure notice", "returned mail", "delivery failure", "mail system error", "non-delivery",
		"nondeliverable", "delivery failed", "could not send message", "message not delivered",
		"delivery problem", "delivery notification", "not delivered", "mail delivery system",
		"配信不能", "配信エラー", "送信エラー", "エラー", "未達", "不達", "配信できません", "届きません",
	}
	delaySubjects = []string{
		"(delay)", "delayed", "delivery delay", "warning: could not send message", "still being retried",
		"not yet been delivered", "遅延",
	}
	bounceMarkers = []string{
		"this is the qmail-send program", "could not be delivered to one or more",
		"delivery has failed to these recipients", "transcript of session follows",
		"permanent fatal errors", "the following addresses had permanent", "address not found",
		"the email account that you tried to reach does not exist", "unable to deliver your message",
		"delivery to the following recipient", "wasn't able to deliver", "was not delivered to",
		"wasn't delivered to", "message could not be delivered", "could not be delivered",
		"failed permanently", "this is the mail system at host", "permanent error",
		"smtp error from remote mail server", "i'm afraid i wasn't able to deliver",
		"配信できませんでした", "送信できませんでした", "配信に失敗", "届けることができません", "送信に失敗",
	}
	delayMarkers = []string{
		"will continue to try", "will keep trying", "still trying", "has not yet been delivered",
		"not been delivered yet", "no action is required", "has been delayed",
		"this is a warning message only", "warning only", "delivery attempts will continue",
		"will be retried", "will retry",
	}
	permanentMarkers = []string{
		"permanent error", "permanent fatal", "not going to try again", "failed permanently",
		"delivery has failed", "have been failing for a long time",
	}
	autoSubjects = []string{
		"out of office", "out of the office", "automatic reply", "auto reply", "autoreply",
		"auto-reply", "auto response", "autoresponse", "auto-response", "automatische antwort",
		"abwesenheit", "réponse automatique", "vacation", "away from the office", "away from office",
		"自動返信", "自動応答", "不在",
	}
	daemonLocals = []string{"mailer-daemon", "mailer_daemon", "mailerdaemon", "postmaster", "mail-daemon"}

	// originalMarkers start the returned copy of the original message;
	// addresses below them are not failed recipients.
	originalMarkers = []string{
		"------ this is a copy of the message", "--- below this line is a copy of the message",
		"----- original message follows", "original message follows", "----- original message -----",
		"------ original message", "original message headers:", "----- unsent message below",
		"------- returned message", "----- message header follows", "----- original header",
		"--- the header of the original message", "message headers follow", "original message:",
		"以下、元のメッセージ", "元のメッセージ", "----- 元のメッセージ",
	}
)

var (
	reAddr = regexp.MustCompile(`[A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+`)
	// reAddrLine is a line that starts with a failed address (after an
	// optional reply code: "554 <a@b>... 550 Host unknown"), with the
	// reason after it ("<a@b>... User unknown", "a@b [User unknown]",
	// "a@b Invalid Address, ERROR_CODE :550").
	reAddrLine = regexp.MustCompile(`^(?:[45]\d\d[ -]+)?(?i:(?:final-recipient|original-recipient|recipient|to|address|宛先|送信先)\s*[:：]\s*(?:rfc822;)?\s*)?["<]?([A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9.-]+[A-Za-z0-9])[">]?(?:\s*:)?(?:(?:\s*(?:\.\.\.|:)|\s)\s*(.*))?$`)
	// reLabelAddr is a reason, a colon and the address: "Unknown user:
	// a@b", "Could not be delivered to: <a@b>".
	reLabelAddr = regexp.MustCompile(`^([A-Za-z][A-Za-z '\-]{2,60}?)\s*[:：]\s*["<]?([A-Za-z0-9.!#$%&'*+/=?^_{|}~-]+@[A-Za-z0-9.-]+[A-Za-z0-9])[">]?\s*\.?$`)
	reMsgIDLine = regexp.MustCompile(`(?im)^message-id:\s*<([^>\s]+)>`)
	reRetPath   = regexp.MustCompile(`(?im)^return-path:\s*<([^>\s]*)>`)
	reRcptTo    = regexp.MustCompile(`(?i)rcpt to:\s*<([^>\s]+)>`)
	reCodeLine  = regexp.MustCompile(`(?i)(^|\s|#|<<<\s?|said:\s?|\()[45]\d\d[\s\-:]`)
)

// maxDetect bounds the body text searched for bounce and auto-reply
// markers; they sit at the top of a report.
const maxDetect = 256 << 10

// classifyPlain decides what a message without a delivery-status or
// feedback-report part is, and recovers recipients for bounces.
func classifyPlain(env *envelope, rep *Report) {
	subj := strings.ToLower(env.subject)
	body := lowerASCII(truncate(env.bodyText(), maxDetect))
	autoSubj := matchAny(subj, autoSubjects)
	daemon := fromDaemon(env)
	bounce := daemon || matchAny(body, bounceMarkers) || (matchAny(subj, bounceSubjects) && !autoSubj)
	delay := matchAny(subj, delaySubjects) || matchAny(body, delayMarkers)
	if !bounce && !delay && (autoHeaders(env, autoSubj) || autoSubj) {
		rep.Kind = KindAutoReply
		rep.Recipients = replyingAddr(env)
		return
	}
	if !bounce && !delay {
		return // KindUnknown
	}
	parsePlain(env, rep, !delay || matchAny(body, permanentMarkers))
}

// replyingAddr is the address an auto-reply comes from (Reply-To is often
// someone else: an assistant, a shared desk), as the report's recipient.
func replyingAddr(env *envelope) []Recipient {
	for _, k := range []string{"From", "Sender", "Return-Path"} {
		if a := mailAddr(firstAddr(env.header.Get(k))); a != "" {
			return []Recipient{{Recipient: a}}
		}
	}
	return nil
}

// fromDaemon reports whether the report comes from a mail system rather
// than a person.
func fromDaemon(env *envelope) bool {
	h := mail.Header{Header: env.header}
	from := strings.ToLower(h.Get("From"))
	if strings.Contains(from, "mail delivery") || strings.Contains(from, "mail administrator") {
		return true
	}
	for _, l := range daemonLocals {
		if strings.Contains(from, l+"@") || strings.HasPrefix(strings.TrimSpace(from), l) {
			return true
		}
	}
	return false
}

// autoHeaders reports RFC 3834 Auto-Submitted and the de-facto auto-reply
// headers; Precedence bulk or junk counts only with an auto-reply subject.
func autoHeaders(env *envelope, autoSubj bool) bool {
	h := env.header
	if v := strings.ToLower(strings.TrimSpace(h.Get("Auto-Submitted"))); v != "" && v != "no" {
		return true
	}
	if h.Has("X-Autoreply") || h.Has("X-Autorespond") || h.Has("X-Autoresponder") || h.Has("X-Auto-Reply") {
		return true
	}
	switch strings.ToLower(strings.TrimSpace(h.Get("Precedence"))) {
	case "auto_reply", "auto-reply":
		return true
	case "bulk", "junk":
		return autoSubj
	}
	return false
}

// parsePlain recovers recipients, codes and diagnostics from the text of a
// non-standard bounce. failed selects KindBounce over KindDelay.
func parsePlain(env *envelope, rep *Report, failed bool) {
	rep.Kind = KindDelay
	if failed {
		rep.Kind = KindBounce
	}
	text := strings.ReplaceAll(env.bodyText(), "\r\n", "\n")
	head, tail := splitOriginal(text)
	if rep.OriginalMessageID == "" {
		if m := reMsgIDLine.FindStringSubmatch(tail); m != nil {
			rep.OriginalMessageID = m[1]
		}
	}
	if rep.OriginalEnvelopeFrom == "" {
		if m := reRetPath.FindStringSubmatch(tail); m != nil {
			rep.OriginalEnvelopeFrom = normAddr(m[1])
		}
	}
	exclude := excludedAddrs(env)
	lines := strings.Split(head, "\n")
	blocks := addrBlocks(lines, exclude)
	if len(blocks) == 0 {
		blocks = mentionedAddrs(env, head, exclude)
	}
	if len(blocks) == 0 {
		blocks = []*block{{}}
	}
	for _, b := range blocks {
		if !hasCode(b.lines) && len(blocks) == 1 {
			b.lines = append(b.lines, codeLines(lines, b.addr)...)
		}
		rep.Recipients = append(rep.Recipients, plainRecipient(b, rep.Kind, head, len(blocks) == 1))
	}
}

// block is a failed address and the text lines that explain it.
type block struct {
	addr  string
	lines []string
}

// addrBlocks finds lines that consist of a recipient address (qmail
// "<a@b>:", Exim "  a@b", Sendmail "<a@b>... User unknown", Exchange "a@b")
// and the lines that follow each up to a blank line. Blocks for the same
// address are merged.
func addrBlocks(lines []string, exclude map[string]bool) []*block {
	var out []*block
	byAddr := map[string]*block{}
	var cur *block
	open := func(a, reason string) {
		b := byAddr[strings.ToLower(a)]
		if b == nil {
			b = &block{addr: a}
			byAddr[strings.ToLower(a)] = b
			out = append(out, b)
		}
		if reason != "" {
			b.lines = append(b.lines, reason)
		}
		cur = b
	}
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" {
			// A blank line ends the block once it has a line that
			// says something; "because:" and "Reason:" wait for
			// the next paragraph (Lotus Domino).
			if cur != nil && substantive(cur.lines) {
				cur = nil
			}
			continue
		}
		if m := reAddrLine.FindStringSubmatch(t); m != nil {
			a := normAddr(m[1])
			if !exclude[strings.ToLower(a)] && !isDaemonAddr(a) {
				open(a, m[2])
				continue
			}
		} else if m := reLabelAddr.FindStringSubmatch(t); m != nil {
			a := normAddr(m[2])
			if !exclude[strings.ToLower(a)] && !isDaemonAddr(a) {
				open(a, m[1])
				continue
			}
		}
		if cur != nil {
			cur.lines = append(cur.lines, t)
		}
	}
	if len(out) > 20 {
		out = out[:20]
	}
	return out
}

// substantive reports whether lines hold more than labels ending in ':'.
func substantive(lines []string) bool {
	for _, l := range lines {
		if !strings.HasSuffix(strings.TrimSpace(l), ":") {
			return true
		}
	}
	return false
}

// mentionedAddrs is the fallback when no address stands on its own line:
// X-Failed-Recipients (Exim), "RCPT TO:<…>" in a transcript, then any
// address the text mentions.
func mentionedAddrs(env *envelope, head string, exclude map[string]bool) []*block {
	var cands []string
	for _, v := range env.header.Values("X-Failed-Recipients") {
		cands = append(cands, strings.Split(v, ",")...)
	}
	if len(cands) == 0 {
		// A family of bounces names the failed address only in its
		// own X-Original-To (excludedAddrs keeps it when it is not
		// the report's own To).
		for _, v := range env.header.Values("X-Original-To") {
			cands = append(cands, reAddr.FindAllString(v, 5)...)
		}
	}
	if len(cands) == 0 {
		for _, m := range reRcptTo.FindAllStringSubmatch(head, 20) {
			cands = append(cands, m[1])
		}
	}
	if len(cands) == 0 {
		cands = reAddr.FindAllString(head, 50)
	}
	var out []*block
	seen := map[string]bool{}
	for _, c := range cands {
		a := normAddr(c)
		k := strings.ToLower(a)
		if a == "" || seen[k] || exclude[k] || isDaemonAddr(a) || !strings.Contains(a, "@") {
			continue
		}
		seen[k] = true
		out = append(out, &block{addr: a})
		if len(out) == 20 {
			break
		}
	}
	return out
}

// codeLines returns the lines of the text that carry an SMTP reply code,
// preferring those that name addr.
func codeLines(lines []string, addr string) []string {
	var named, any []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if !reCodeLine.MatchString(t) {
			continue
		}
		if addr != "" && strings.Contains(strings.ToLower(t), strings.ToLower(addr)) {
			named = append(named, t)
		} else {
			any = append(any, t)
		}
	}
	if len(named) > 0 {
		return named
	}
	if len(any) > 5 {
		any = any[:5]
	}
	return any
}

func hasCode(lines []string) bool {
	for _, l := range lines {
		if reCodeLine.MatchString(l) {
			return true
		}
	}
	return false
}

// plainRecipient classifies one recovered block. Without any recovered line
// the result is ReasonOther with the start of the text as diagnostic: a
// guess is never hard.
func plainRecipient(b *block, kind Kind, head string, single bool) Recipient {
	rc := Recipient{Recipient: b.addr}
	joined := strings.Join(b.lines, "\n")
	rc.Code, rc.Status = severestCodes(joined)
	rc.Diagnostic = cleanDiag(joined)
	if rc.Diagnostic == "" {
		rc.Diagnostic = rawDiagnostic(head)
		rc.Reason, rc.Action, rc.Status = ReasonOther, "failed", "5.0.0"
		if kind == KindDelay {
			rc.Action, rc.Status = "delayed", "4.0.0"
		}
		// Text not tied to the address is weak evidence: its reason
		// may be told, but it never suppresses.
		if r := Classify(Reply{Text: rc.Diagnostic}).Reason; !r.Hard() {
			rc.Reason = r
		}
		return rc
	}
	rc.Action = "failed"
	if kind == KindDelay {
		rc.Action = "delayed"
	}
	phase := PhaseFromText(joined)
	if phase == vocab.PhaseUnknown && single {
		phase = PhaseFromText(head)
	}
	classifyRecipient(&rc, rc.Code, truncate(joined, 4*maxDiagnostic), phase)
	return rc
}

// severestCodes picks the first 5xx reply code and 5.x.x status in text,
// else the first 4xx and 4.x.x: transcripts also show the 250s and the
// temporary errors that preceded the final one.
func severestCodes(text string) (int, string) {
	code, enh := 0, ""
	for _, l := range strings.Split(text, "\n") {
		for rest := l; rest != ""; {
			c := scanCode(rest)
			if c == 0 {
				break
			}
			if code == 0 || (code/100 == 4 && c/100 == 5) {
				code = c
			}
			i := strings.Index(rest, itoa3(c))
			rest = rest[i+3:]
		}
		for rest := l; rest != ""; {
			e := scanEnhanced(rest)
			if e == "" {
				break
			}
			if e[0] != '2' && (enh == "" || (enh[0] == '4' && e[0] == '5')) {
				enh = e
			}
			i := strings.Index(rest, e)
			rest = rest[i+len(e):]
		}
	}
	return code, enh
}

func itoa3(c int) string {
	return string([]byte{byte('0' + c/100), byte('0' + c/10%10), byte('0' + c%10)})
}

// rawDiagnostic keeps the first meaningful lines of an unrecognised
// bounce, bounded to maxDiagnostic.
func rawDiagnostic(head string) string {
	var out []string
	n := 0
	for _, l := range strings.Split(head, "\n") {
		t := strings.TrimSpace(l)
		if t == "" {
			continue
		}
		out = append(out, t)
		n += len(t) + 1
		if n > maxDiagnostic || len(out) >= 10 {
			break
		}
	}
	return truncate(strings.Join(out, " "), maxDiagnostic)
}

// splitOriginal cuts the text where the copy of the original message begins.
func splitOriginal(text string) (head, tail string) {
	low := lowerASCII(text) // same length as text, so indexes carry over
	cut := len(text)
	for _, m := range originalMarkers {
		if i := strings.Index(low, m); i >= 0 && i < cut {
			cut = i
		}
	}
	return text[:cut], text[cut:]
}

// lowerASCII lower-cases ASCII letters only and keeps every byte offset,
// unlike strings.ToLower, which may change the length of invalid UTF-8.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// excludedAddrs are the report's own addresses (our VERP address in To,
// the daemon in From): they are never failed recipients.
func excludedAddrs(env *envelope) map[string]bool {
	ex := map[string]bool{}
	for _, k := range []string{"From", "To", "Cc", "Reply-To", "Sender", "Return-Path", "Delivered-To"} {
		for _, v := range env.header.Values(k) {
			for _, a := range reAddr.FindAllString(v, 10) {
				ex[strings.ToLower(normAddr(a))] = true
			}
		}
	}
	// X-Original-To is the report's own address when a forwarder added
	// it on the way to us (then it is To or Delivered-To, excluded
	// above); otherwise it names the failed recipient and stays.
	return ex
}

func isDaemonAddr(a string) bool {
	local, _, _ := strings.Cut(strings.ToLower(a), "@")
	for _, l := range daemonLocals {
		if local == l {
			return true
		}
	}
	return false
}
