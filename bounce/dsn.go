package bounce

import (
	"strings"

	"github.com/hermod-mta/hermod/vocab"
)

// Bounds that keep reports small and parsing linear.
const (
	maxDiagnostic = 1024    // Recipient.Diagnostic
	maxFieldValue = 8 << 10 // one unfolded delivery-status field
	maxRecipients = 1000    // recipients taken from one report
)

// field is one "Name: value" line of a delivery-status or feedback-report
// body, unfolded, with the name lower-cased.
type field struct{ name, value string }

type fieldGroup []field

func (g fieldGroup) get(name string) string {
	for _, f := range g {
		if f.name == name {
			return f.value
		}
	}
	return ""
}

// parseFields splits a message/delivery-status body into its field groups
// (RFC 3464 2.1: per-message fields, then per-recipient groups, separated
// by blank lines). It is lenient: lines without a colon are skipped and
// folded lines are joined.
func parseFields(b []byte) []fieldGroup {
	var groups []fieldGroup
	var cur fieldGroup
	var val strings.Builder // value of the last field in cur, while folding
	flush := func() {
		if len(cur) > 0 {
			cur[len(cur)-1].value = strings.TrimSpace(val.String())
		}
		val.Reset()
	}
	for _, line := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n") {
		if strings.TrimSpace(line) == "" {
			flush()
			if len(cur) > 0 {
				groups = append(groups, cur)
				cur = nil
			}
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(cur) > 0 {
			if val.Len() < maxFieldValue {
				val.WriteByte(' ')
				val.WriteString(strings.TrimSpace(line))
			}
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		flush()
		n := strings.ToLower(strings.TrimSpace(name))
		if startsGroup(cur, n) {
			// Per-recipient groups without the blank line between.
			groups = append(groups, cur)
			cur = nil
		}
		cur = append(cur, field{name: n})
		val.WriteString(strings.TrimSpace(value))
	}
	flush()
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	return groups
}

// startsGroup reports whether a field named n opens a new per-recipient
// group in cur: a second Final-Recipient, Original-Recipient or Action in
// the same group means the blank line between two groups is missing.
func startsGroup(cur fieldGroup, n string) bool {
	if n != "final-recipient" && n != "original-recipient" && n != "action" {
		return false
	}
	for _, f := range cur {
		if f.name == n {
			return true
		}
	}
	return false
}

// isRecipientGroup tells per-recipient groups from the per-message one, so
// that a DSN missing the blank line after the per-message fields still works.
func isRecipientGroup(g fieldGroup) bool {
	return g.get("final-recipient") != "" || g.get("original-recipient") != "" || g.get("action") != ""
}

// parseDSN fills rep from an RFC 3464 message/delivery-status part.
func parseDSN(env *envelope, rep *Report) {
	var perMessage fieldGroup
	for _, g := range parseFields(env.dsn) {
		if !isRecipientGroup(g) {
			perMessage = append(perMessage, g...)
			continue
		}
		if len(rep.Recipients) < maxRecipients {
			rep.Recipients = append(rep.Recipients, dsnRecipient(g))
		}
	}
	for i := range rep.Recipients {
		rc := &rep.Recipients[i]
		if rc.Action != "failed" && rc.Action != "delayed" {
			continue
		}
		if rc.Diagnostic != "" {
			// Postfix keeps "(in reply to end of DATA command)" out
			// of Diagnostic-Code; its text part says it.
			if PhaseFromText(rc.Diagnostic) == vocab.PhaseUnknown {
				h := humanDiagnostic(env, rc.Recipient, len(rep.Recipients) == 1)
				if p := PhaseFromText(h); p != vocab.PhaseUnknown {
					classifyRecipient(rc, rc.Code, rc.Diagnostic, p)
				}
			}
			continue
		}
		// No Diagnostic-Code (Exim's local failures, OpenSMTPD, some
		// Sendmail and Google forms): the reason is in the human text.
		if d := humanDiagnostic(env, rc.Recipient, len(rep.Recipients) == 1); d != "" {
			code, enh := severestCodes(d)
			if strings.HasSuffix(rc.Status, ".0.0") && enh != "" && enh[0] == rc.Status[0] {
				rc.Status = enh
			}
			rc.Code = code
			rc.Diagnostic = cleanDiag(d)
			classifyRecipient(rc, code, truncate(d, 4*maxDiagnostic), vocab.PhaseUnknown)
		}
	}
	if rep.OriginalEnvelopeFrom == "" {
		for _, n := range []string{"x-postfix-sender", "x-original-envelope-from", "original-envelope-from"} {
			if v := perMessage.get(n); v != "" {
				rep.OriginalEnvelopeFrom = normAddr(v)
				break
			}
		}
	}
	var failed, delayed, delivered bool
	for _, rc := range rep.Recipients {
		switch rc.Action {
		case "failed":
			failed = true
		case "delayed":
			delayed = true
		case "delivered", "relayed", "expanded":
			delivered = true
		}
	}
	switch {
	case failed:
		rep.Kind = KindBounce
	case delayed:
		rep.Kind = KindDelay
	case delivered:
		rep.Kind = KindDelivered
	case len(rep.Recipients) > 0:
		rep.Kind = KindBounce // RFC 3464 requires Action; treat a bare report as failure
	}
}

func dsnRecipient(g fieldGroup) Recipient {
	rc := Recipient{
		Recipient:         mailAddr(g.get("final-recipient")),
		OriginalRecipient: mailAddr(g.get("original-recipient")),
		Action:            strings.ToLower(firstWord(g.get("action"))),
		Status:            scanEnhanced(g.get("status")),
		RemoteMTA:         stripType(g.get("remote-mta")),
		Diagnostic:        cleanDiag(stripType(g.get("diagnostic-code"))),
	}
	if rc.Recipient == "" {
		rc.Recipient = rc.OriginalRecipient
	}
	code, enh := replyCodes(rc.Diagnostic)
	rc.Code = code
	if rc.Status == "" || strings.HasSuffix(rc.Status, ".0.0") && enh != "" && enh[0] == rc.Status[0] {
		// "Status: 5.0.0" with "550 5.1.1 …" in the diagnostic: the
		// diagnostic is the more precise.
		if enh != "" {
			rc.Status = enh
		}
	}
	if rc.Action == "" {
		switch {
		case strings.HasPrefix(rc.Status, "5"):
			rc.Action = "failed"
		case strings.HasPrefix(rc.Status, "4"):
			rc.Action = "delayed"
		case strings.HasPrefix(rc.Status, "2"):
			rc.Action = "delivered"
		}
	}
	switch rc.Action {
	case "delivered", "relayed", "expanded":
		return rc
	}
	classifyRecipient(&rc, code, rc.Diagnostic, vocab.PhaseUnknown)
	return rc
}

// classifyRecipient sets the reason, hard flag and (when missing) status of
// a failed or delayed recipient from its diagnostic text, through Classify.
func classifyRecipient(rc *Recipient, code int, text string, phase vocab.Phase) {
	if rc.Action == "delayed" && (strings.HasSuffix(rc.Status, ".4.7") || matchAny(strings.ToLower(text), expiredText)) {
		// OpenSMTPD reports an expired envelope as "Action: delayed",
		// "Status: 4.4.7", "Envelope expired": the message is gone
		// from its queue, so it is a failure.
		rc.Action = "failed"
	}
	v := Classify(Reply{Code: code, EnhancedCode: rc.Status, Text: text, Phase: phase})
	rc.Reason = v.Reason
	if rc.Status == "" {
		rc.Status = v.Status
	}
	if rc.Status == "" {
		// No code anywhere: report the class, so that status and
		// hard/soft stay consistent.
		switch rc.Action {
		case "failed":
			rc.Status = "5.0.0"
		case "delayed":
			rc.Status = "4.0.0"
		}
	}
	if rc.Action == "failed" && strings.HasPrefix(rc.Status, "4") {
		// The queue lifetime ran out and the report gives the last
		// temporary error. Generic network trouble and unrecognised
		// text mean expired; specific soft reasons (rate limit,
		// system error, …) stay.
		switch {
		case matchAny(strings.ToLower(text), hostUnknownText) || matchAny(strings.ToLower(text), notAcceptText):
			// NXDOMAIN or null MX under a temporary status: a DNS
			// problem (network), neither expired nor proof.
			rc.Reason = ReasonNetwork
		case rc.Reason == ReasonNetwork, rc.Reason == ReasonOther:
			rc.Reason = ReasonExpired
		}
	}
	rc.Hard = rc.Action == "failed" && v.Hard && rc.Reason.Hard()
}

// humanDiagnostic returns the lines of the report's text part that explain
// addr: the block under the address's own line, else (when the report has
// one recipient) the lines carrying a reply code.
func humanDiagnostic(env *envelope, addr string, only bool) string {
	head, _ := splitOriginal(strings.ReplaceAll(env.bodyText(), "\r\n", "\n"))
	lines := strings.Split(head, "\n")
	for _, b := range addrBlocks(lines, excludedAddrs(env)) {
		if SameAddress(b.addr, addr) && len(b.lines) > 0 {
			return strings.Join(b.lines, "\n")
		}
	}
	if only {
		return strings.Join(codeLines(lines, addr), "\n")
	}
	return ""
}

// parseARF fills rep from an RFC 5965 message/feedback-report part.
func parseARF(env *envelope, rep *Report) {
	rep.Kind = KindFeedback
	var all fieldGroup
	for _, g := range parseFields(env.feedback) {
		all = append(all, g...)
	}
	rep.FeedbackType = strings.ToLower(firstWord(all.get("feedback-type")))
	if v := all.get("original-mail-from"); v != "" && rep.OriginalEnvelopeFrom == "" {
		rep.OriginalEnvelopeFrom = normAddr(v)
	}
	// Every Original-Rcpt-To and Removal-Recipient names a complaining
	// recipient (RFC 5965 3.2, RFC 6650).
	seen := map[string]bool{}
	add := func(v, orig string) {
		a := mailAddr(v)
		if a == "" || seen[strings.ToLower(a)] || len(rep.Recipients) >= maxRecipients {
			return
		}
		seen[strings.ToLower(a)] = true
		rep.Recipients = append(rep.Recipients, Recipient{Recipient: a, OriginalRecipient: mailAddr(orig)})
	}
	for _, f := range all {
		if f.name == "original-rcpt-to" || f.name == "removal-recipient" {
			add(f.value, f.value)
		}
	}
	if len(rep.Recipients) == 0 && env.returned != nil {
		add(env.returned.Get("X-HmXmrOriginalRecipient"), "")
		add(firstAddr(env.returned.Get("To")), "")
	}
	if len(rep.Recipients) == 0 {
		rep.Recipients = []Recipient{{}}
	}
}

// mailAddr is normAddr for values that must be an address: a placeholder
// such as "Undisclosed recipients:;" or "unknown" gives "".
func mailAddr(s string) string {
	a := normAddr(s)
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return ""
	}
	return a
}

func firstWord(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, " \t;("); i >= 0 {
		return s[:i]
	}
	return s
}

// stripType removes an RFC 3464 address-type or diagnostic-type prefix
// ("rfc822;", "smtp;", "dns;", "X-Postfix;").
func stripType(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, ';'); i > 0 && i < 20 && !strings.ContainsAny(s[:i], " <@\t") {
		s = strings.TrimSpace(s[i+1:])
	}
	return s
}

// normAddr turns "rfc822; <Taro@Example.COM>" into "Taro@example.com".
func normAddr(s string) string {
	s = stripType(s)
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), "<>\"'"))
	if i := strings.IndexAny(s, " \t"); i > 0 {
		s = s[:i]
	}
	s = strings.Trim(s, "<>\"'")
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s
	}
	return s[:at] + "@" + strings.ToLower(s[at+1:])
}

// firstAddr returns the first angle-bracketed address in a header value,
// or the value itself.
func firstAddr(s string) string {
	if i := strings.IndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	if i := strings.IndexByte(s, ','); i >= 0 {
		s = s[:i]
	}
	return s
}

func msgID(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return strings.Trim(s, "<>")
}

// cleanDiag collapses whitespace, drops the "550-5.1.1 " continuation
// prefixes that multi-line replies repeat, and bounds the length. Only the
// reply code the text starts with is dropped, so "said: 550 …" survives.
func cleanDiag(s string) string {
	fs := strings.Fields(s)
	if len(fs) == 0 {
		return ""
	}
	lead := ""
	if isReplyWord(fs[0]) {
		lead = fs[0][:3]
	}
	out := make([]string, 0, len(fs))
	for i := 0; i < len(fs); i++ {
		w := fs[i]
		if i > 0 && lead != "" && strings.HasPrefix(w, lead) && isReplyWord(w) {
			if len(w) == 3 && i+1 < len(fs) && scanEnhanced(fs[i+1]) == fs[i+1] {
				i++ // "550 5.1.1" repeated as the last line's prefix
			}
			continue
		}
		out = append(out, w)
	}
	return truncate(strings.Join(out, " "), maxDiagnostic)
}

// isReplyWord matches "550", "550-" and "550-5.1.1".
func isReplyWord(w string) bool {
	if len(w) < 3 || (w[0] != '4' && w[0] != '5' && w[0] != '2') || !isDigit(w[1]) || !isDigit(w[2]) {
		return false
	}
	if len(w) == 3 {
		return true
	}
	return w[3] == '-' && (len(w) == 4 || scanEnhanced(w[4:]) == w[4:])
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
