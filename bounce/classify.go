package bounce

import (
	"regexp"
	"strings"

	"github.com/hermod-mta/hermod/vocab"
)

// Reply is one failure to classify: a reply hermod's relay saw during
// delivery, or the diagnostic of one recipient of a parsed bounce. Both paths
// go through Classify, so the same evidence gives the same verdict.
type Reply struct {
	Code         int         // three-digit SMTP reply code, 0 if unknown
	EnhancedCode string      // RFC 3463 enhanced status ("5.1.1"), "" if none
	Text         string      // reply text or DSN Diagnostic-Code, verbatim
	Phase        vocab.Phase // the SMTP command the reply answered; PhaseUnknown if not known
}

// Verdict is what Classify makes of a Reply.
type Verdict struct {
	Reason Reason // why the recipient was not delivered
	// Hard is true when the address itself is proven undeliverable and
	// belongs on the suppression list. It is always Reason.Hard() for a
	// permanent reply, and false for a transient one.
	Hard bool
	// Status is the enhanced status: the reply's own, else the one in its
	// text, else the class of the reply code ("5.0.0", "4.0.0"), else "".
	Status string
}

// Classify decides what a failed reply says about the recipient. Missing
// codes are recovered from the start of Text ("smtp; 550 5.1.1 …"); a
// missing Phase is recovered from Text when it says which command failed
// ("in reply to end of DATA command", "after RCPT TO", a ">>> DATA"
// transcript).
//
// The phase decides what can be hard: only a refusal at RCPT TO (or one
// whose phase is unknown) can prove the address wrong. A refusal at connect,
// EHLO or STARTTLS is about hermod's host (blocked, security), one after MAIL
// FROM about its envelope sender (rejected), and a "user unknown" after DATA
// is a content or policy refusal (filtered). Precision first: when the
// evidence is ambiguous the verdict is soft.
func Classify(r Reply) Verdict {
	enhanced := normEnhanced(r.EnhancedCode)
	code := r.Code
	if code == 0 || enhanced == "" {
		c, e := replyCodes(r.Text)
		if code == 0 {
			code = c
		}
		if enhanced == "" {
			enhanced = e
		}
	}
	phase := r.Phase
	if phase == vocab.PhaseUnknown || !phase.Valid() {
		phase = PhaseFromText(r.Text)
	}
	reason := byPhase(classifyText(code, enhanced, r.Text), phase)
	if reason == ReasonUserUnknown && phase == vocab.PhaseUnknown {
		// "550 5.0.0 <a@b>... User unknown", "5.2.0 … User unknown":
		// the remote's own code contradicts its text. Typical of a
		// content or policy refusal after DATA dressed as user
		// unknown; without the phase to say otherwise, soft.
		if e := scanEnhanced(r.Text); strings.HasSuffix(e, ".0.0") || strings.HasSuffix(e, ".2.0") {
			reason = ReasonFiltered
		}
	}
	status := enhanced
	if status == "" {
		switch code / 100 {
		case 4:
			status = "4.0.0"
		case 5:
			status = "5.0.0"
		}
	}
	return Verdict{Reason: reason, Hard: reason.Hard() && !transient(code, enhanced), Status: status}
}

// byPhase narrows a reason by the command the reply answered.
func byPhase(r Reason, p vocab.Phase) Reason {
	switch p {
	case vocab.PhaseConnect, vocab.PhaseEHLO:
		switch r {
		case ReasonRateLimited, ReasonSecurity, ReasonNetwork, ReasonSystem, ReasonExpired:
			return r
		}
		return ReasonBlocked
	case vocab.PhaseTLS:
		switch r {
		case ReasonRateLimited, ReasonNetwork, ReasonSystem, ReasonExpired, ReasonBlocked:
			return r
		}
		return ReasonSecurity
	case vocab.PhaseMail:
		switch r {
		case ReasonUserUnknown, ReasonHostUnknown, ReasonNotAccept, ReasonSuspended, ReasonOther:
			// "5.1.7 No such domain <our domain>", "553 5.1.0 <our
			// domain> does not exist": about our envelope sender.
			return ReasonRejected
		}
		return r
	case vocab.PhaseData, vocab.PhaseEndOfData:
		switch r {
		case ReasonUserUnknown, ReasonHostUnknown, ReasonSuspended:
			// Recipients were accepted at RCPT TO: a refusal of the
			// message that names the user is a filter, not proof
			// the address is wrong.
			return ReasonFiltered
		case ReasonNotAccept:
			return ReasonPolicy
		}
		return r
	}
	return r
}

var (
	// rePhaseProse finds "in reply to end of DATA command" (Postfix) and
	// "after end of data", "after RCPT TO:<…>" (Exim, qmail, others).
	rePhaseProse = regexp.MustCompile(`(?i)\b(?:in reply to (?:the )?|after (?:the )?(?:pipelined )?)(end of data|data|rcpt to|rcpt|mail from|mail|ehlo|helo|lhlo|starttls|initial connection|connect|greeting|banner)\b`)
	// reTranscript is one line of a Sendmail-style session transcript.
	reTranscript = regexp.MustCompile(`(?im)^\s*(>>>|<<<)\s*(.*)$`)
)

// PhaseFromText recovers the phase of a failure from the text of a DSN
// diagnostic or plain-text bounce: Postfix's "(in reply to end of DATA
// command)", Exim's "after RCPT TO:<…>", a Sendmail transcript whose last
// ">>> " command before the first "<<< 4xx/5xx" reply is DATA, or the
// wording of a refusal at connect or EHLO ("refused to talk to me", "my
// name was rejected"). It returns vocab.PhaseUnknown when the text does
// not say.
func PhaseFromText(text string) vocab.Phase {
	if text == "" {
		return vocab.PhaseUnknown
	}
	if p := transcriptPhase(text); p != vocab.PhaseUnknown {
		return p
	}
	if m := rePhaseProse.FindStringSubmatch(text); m != nil {
		return commandPhase(m[1])
	}
	t := strings.ToLower(text)
	switch {
	case strings.Contains(t, "refused to talk to me"):
		return vocab.PhaseConnect
	case strings.Contains(t, "my name was rejected"):
		return vocab.PhaseEHLO
	}
	return vocab.PhaseUnknown
}

// transcriptPhase reads a ">>> CMD" / "<<< reply" transcript.
func transcriptPhase(text string) vocab.Phase {
	last := ""
	for _, m := range reTranscript.FindAllStringSubmatch(text, 200) {
		if m[1] == ">>>" {
			last = m[2]
			continue
		}
		reply := strings.TrimSpace(m[2])
		if last != "" && len(reply) >= 3 && (reply[0] == '4' || reply[0] == '5') && isDigit(reply[1]) && isDigit(reply[2]) {
			return commandPhase(last)
		}
	}
	return vocab.PhaseUnknown
}

// commandPhase maps an SMTP command (or its description) to its phase.
func commandPhase(cmd string) vocab.Phase {
	c := strings.ToLower(strings.TrimSpace(cmd))
	switch {
	case strings.HasPrefix(c, "end of data"), c == ".":
		return vocab.PhaseEndOfData
	case strings.HasPrefix(c, "data"):
		return vocab.PhaseData
	case strings.HasPrefix(c, "rcpt"):
		return vocab.PhaseRcpt
	case strings.HasPrefix(c, "mail"):
		return vocab.PhaseMail
	case strings.HasPrefix(c, "ehlo"), strings.HasPrefix(c, "helo"), strings.HasPrefix(c, "lhlo"):
		return vocab.PhaseEHLO
	case strings.HasPrefix(c, "starttls"):
		return vocab.PhaseTLS
	case strings.HasPrefix(c, "initial connection"), strings.HasPrefix(c, "connect"),
		strings.HasPrefix(c, "greeting"), strings.HasPrefix(c, "banner"):
		return vocab.PhaseConnect
	}
	return vocab.PhaseUnknown
}
