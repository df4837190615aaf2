package bounce

import (
	"fmt"
	"io"
)

// Kind says what a message received at the bounce address is.
type Kind string

// The kinds of message Parse recognises. Only KindBounce changes a
// recipient's status to bounced; the others are kept apart (DESIGN.md,
// "Not bounces, recognised and kept apart").
const (
	KindBounce    Kind = "bounce"    // permanent failure for at least one recipient
	KindDelay     Kind = "delay"     // delivery delayed, still being retried
	KindAutoReply Kind = "autoreply" // out-of-office and other automatic replies, read receipts
	KindFeedback  Kind = "feedback"  // RFC 5965 abuse report (complaint)
	KindDelivered Kind = "delivered" // success DSN (delivered, relayed, expanded)
	KindUnknown   Kind = "unknown"   // nothing recognisable
)

// Recipient is what a report says about one recipient.
type Recipient struct {
	Recipient         string // final recipient address (lower-cased domain), "" if not recoverable
	OriginalRecipient string // RFC 3464 Original-Recipient, or ARF Original-Rcpt-To
	Action            string // failed, delayed, delivered, relayed, expanded (inferred for plain-text bounces, "" for feedback and auto-replies)
	Status            string // enhanced status "5.1.1" ("" if none)
	Code              int    // SMTP reply code from the diagnostic if present
	Reason            Reason // "" for delivered recipients and feedback reports
	Hard              bool   // failed permanently for a hard Reason: suppress the address
	Diagnostic        string // Diagnostic-Code text or the recovered line(s), at most about 1 KB
	RemoteMTA         string // host that gave the answer, if known
}

// Report is the parsed form of one message received at the bounce address.
type Report struct {
	Kind         Kind
	Recipients   []Recipient
	FeedbackType string // ARF Feedback-Type: abuse, fraud, …
	Subject      string // decoded Subject of the report itself
	// OriginalMessageID is the Message-ID, without angle brackets, of the
	// returned original message (message/rfc822 or text/rfc822-headers
	// part, or the inline copy in a plain-text bounce).
	OriginalMessageID string
	// OriginalEnvelopeFrom is the original envelope sender when the report
	// reveals it (returned Return-Path, X-Postfix-Sender, ARF
	// Original-Mail-From); it helps to match a VERP address.
	OriginalEnvelopeFrom string
}

// maxMessage bounds how much of a message Parse reads; bounces are small and
// anything beyond this is the returned original, which is not needed.
const maxMessage = 10 << 20

// Parse reads one message received at the bounce address and says what it
// is. An unrecognisable or malformed message yields a Report of Kind
// KindUnknown, not an error; the only error is a failure to read r. Parse
// never panics.
func Parse(r io.Reader) (rep *Report, err error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxMessage))
	if err != nil {
		return nil, fmt.Errorf("bounce: reading message: %w", err)
	}
	defer func() {
		// Belt and braces: FuzzParse exercises parse without this.
		if recover() != nil {
			rep, err = &Report{Kind: KindUnknown}, nil
		}
	}()
	return parse(raw), nil
}

// Line is one JSON line of `hermod bounce parse FILE…`: Decide's answer
// for one recipient the report names, the same the bounce listener acts on.
type Line struct {
	File         string  `json:"file"`
	Kind         Kind    `json:"kind"`
	Recipient    string  `json:"recipient"`
	Status       string  `json:"status"`
	Reason       Reason  `json:"reason"`
	Hard         bool    `json:"hard"`
	Action       Outcome `json:"action"`
	FeedbackType string  `json:"feedback_type,omitempty"`
	Diagnostic   string  `json:"diagnostic"`
	RemoteMTA    string  `json:"remote_mta"`
}

// Lines gives one Line per recipient of rep (each Decide(rep, that
// recipient)); a report without recipients gives a single line with an
// empty recipient.
func Lines(file string, rep *Report) []Line {
	if rep == nil || len(rep.Recipients) == 0 {
		return []Line{lineOf(file, Decide(rep, ""))}
	}
	out := make([]Line, 0, len(rep.Recipients))
	for i := range rep.Recipients {
		out = append(out, lineOf(file, decideFor(rep, i)))
	}
	return out
}

func lineOf(file string, d Decision) Line {
	return Line{
		File:         file,
		Kind:         d.Kind,
		Recipient:    d.Recipient,
		Status:       d.Status,
		Reason:       d.Reason,
		Hard:         d.Hard,
		Action:       d.Outcome,
		FeedbackType: d.FeedbackType,
		Diagnostic:   d.Diagnostic,
		RemoteMTA:    d.RemoteMTA,
	}
}
