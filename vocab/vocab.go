// Package vocab is hermod's shared vocabulary: small typed values that
// several packages exchange (the SMTP phase a reply answered, …), so that
// they are compared as values and never as strings spelled in three places.
// It imports nothing of hermod's.
package vocab

// Phase is the step of an SMTP transaction that a reply answered (RFC 5321
// section 3). Whether a failure can say anything about the recipient
// depends on it: a refusal at connect or EHLO is about the sending host, one
// after MAIL FROM about the envelope sender, and only one at RCPT TO is
// about the recipient's address as such.
type Phase string

// The phases, in the order a transaction goes through them.
const (
	// PhaseUnknown: the phase is not known (a DSN that does not say).
	PhaseUnknown Phase = ""
	// PhaseConnect: connecting or the greeting banner.
	PhaseConnect Phase = "connect"
	// PhaseEHLO: the EHLO/HELO command.
	PhaseEHLO Phase = "ehlo"
	// PhaseTLS: STARTTLS and the TLS handshake.
	PhaseTLS Phase = "starttls"
	// PhaseMail: MAIL FROM.
	PhaseMail Phase = "mail"
	// PhaseRcpt: RCPT TO.
	PhaseRcpt Phase = "rcpt"
	// PhaseData: the DATA command itself (before the message is sent).
	PhaseData Phase = "data"
	// PhaseEndOfData: the reply after the terminating "." of the message.
	PhaseEndOfData Phase = "end-of-data"
)

// Phases lists every known phase in transaction order (PhaseUnknown excluded).
var Phases = []Phase{PhaseConnect, PhaseEHLO, PhaseTLS, PhaseMail, PhaseRcpt, PhaseData, PhaseEndOfData}

// Valid reports whether p is PhaseUnknown or one of Phases.
func (p Phase) Valid() bool {
	if p == PhaseUnknown {
		return true
	}
	for _, q := range Phases {
		if p == q {
			return true
		}
	}
	return false
}
