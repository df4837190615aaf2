package bounce

// The reasons Decide reports for messages that are not failures. They are
// not bounce reasons (Reason.Hard is false for each) and never become a
// recipient's bounced status.
const (
	ReasonFeedback  Reason = "feedback"  // RFC 5965 complaint; Decision.FeedbackType says which
	ReasonVacation  Reason = "vacation"  // out-of-office or other auto-reply, read receipt
	ReasonDelivered Reason = "delivered" // success DSN (delivered, relayed, expanded)
)

// Outcome is what a report does to the recipient it is about.
type Outcome string

// The outcomes of Decide.
const (
	// OutcomeBounce: the recipient's status becomes bounced with
	// Decision.Reason (and the address is suppressed when Hard).
	OutcomeBounce Outcome = "bounce"
	// OutcomeComplaint: a complaint; the address is suppressed, the
	// status does not change.
	OutcomeComplaint Outcome = "complaint"
	// OutcomeNote: an event is recorded (delay or delivery notice, an
	// unrecognised message), the status does not change.
	OutcomeNote Outcome = "note"
	// OutcomeIgnore: nothing is recorded: an auto-reply, or a report that
	// names recipients other than the stored one.
	OutcomeIgnore Outcome = "ignore"
)

// Decision is what one report does to one recipient. It is the single
// answer both `hermod bounce parse` and the bounce listener give, so that
// they agree on every message.
type Decision struct {
	Outcome Outcome
	Kind    Kind
	// Recipient is the address the report names for this recipient, or
	// "" when the report names none.
	Recipient string
	// Matched is true when the report names the stored address; false
	// when it names nobody (the VERP address alone says who) or others.
	Matched      bool
	Status       string // enhanced status ("5.1.1"; the class "5.0.0" when the report has no code)
	Code         int    // SMTP reply code, 0 if none
	Reason       Reason // a bounce reason, or ReasonFeedback, ReasonVacation, ReasonDelivered
	Hard         bool   // suppress the address: a permanent failure for a hard reason
	Diagnostic   string // the remote text, verbatim as far as recovered
	RemoteMTA    string // host that gave the answer, if known
	FeedbackType string // abuse, fraud, … for a complaint
	// Note says in a few words why the outcome is a note or ignore.
	Note string
}

// Decide says what rep does to the recipient whose stored address is
// stored (as submitted; compared through SameAddress, so IDN domains in
// U-label and A-label form match). When the report names recipients, one
// of them must be stored, or the outcome is OutcomeIgnore: a report about
// someone else never changes this recipient. A report that names nobody
// applies to stored (the VERP address proved which recipient it is
// about). Decide is pure.
func Decide(rep *Report, stored string) Decision {
	if rep == nil {
		return Decision{Outcome: OutcomeNote, Kind: KindUnknown, Note: "unrecognised message to the bounce address"}
	}
	named := false
	for i, rc := range rep.Recipients {
		if rc.Recipient == "" && rc.OriginalRecipient == "" {
			continue
		}
		named = true
		if SameAddress(rc.Recipient, stored) || SameAddress(rc.OriginalRecipient, stored) {
			d := decideFor(rep, i)
			d.Matched = true
			return d
		}
	}
	if named {
		d := decideFor(rep, -1)
		d.Outcome, d.Note = OutcomeIgnore, "report names other recipients"
		return d
	}
	if len(rep.Recipients) > 0 {
		return decideFor(rep, 0)
	}
	return decideFor(rep, -1)
}

// decideFor is the decision for rep.Recipients[i] (i < 0: no recipient).
func decideFor(rep *Report, i int) Decision {
	d := Decision{Kind: rep.Kind, FeedbackType: rep.FeedbackType}
	kind := rep.Kind
	if i >= 0 && i < len(rep.Recipients) {
		rc := rep.Recipients[i]
		if kind == KindBounce || kind == KindDelay {
			// A report may list recipients that failed, are only
			// delayed or were delivered, side by side.
			switch rc.Action {
			case "failed":
				kind = KindBounce
			case "delayed":
				kind = KindDelay
			case "delivered", "relayed", "expanded":
				kind = KindDelivered
			}
		}
		d.Recipient = rc.Recipient
		if d.Recipient == "" {
			d.Recipient = rc.OriginalRecipient
		}
		d.Status, d.Code, d.Reason, d.Hard = rc.Status, rc.Code, rc.Reason, rc.Hard
		d.Diagnostic, d.RemoteMTA = rc.Diagnostic, rc.RemoteMTA
	}
	switch kind {
	case KindBounce:
		d.Outcome = OutcomeBounce
		if d.Reason == "" {
			d.Reason = ReasonOther
		}
		if d.Status == "" {
			d.Status = "5.0.0"
		}
		d.Hard = d.Hard && d.Reason.Hard()
	case KindFeedback:
		d.Outcome, d.Reason, d.Hard = OutcomeComplaint, ReasonFeedback, false
		d.Note = "complaint (" + rep.FeedbackType + ")"
	case KindDelay:
		d.Outcome, d.Hard = OutcomeNote, false
		if d.Reason.Hard() {
			d.Reason = ReasonOther // a delay proves nothing about the address
		}
		d.Note = "delay notice"
	case KindDelivered:
		d.Outcome, d.Reason, d.Hard = OutcomeNote, ReasonDelivered, false
		d.Note = "delivery notice"
	case KindAutoReply:
		d.Outcome, d.Reason, d.Hard = OutcomeIgnore, ReasonVacation, false
		d.Note = "auto-reply"
	default:
		d.Outcome, d.Reason, d.Hard = OutcomeNote, "", false
		d.Note = "unrecognised message to the bounce address"
	}
	return d
}
