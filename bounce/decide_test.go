package bounce

import (
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/vocab"
)

// TestClassifyPhase: the phase decides what can be hard (table: text,
// phase, code → reason, hard).
func TestClassifyPhase(t *testing.T) {
	tests := []struct {
		code  int
		enh   string
		text  string
		phase vocab.Phase
		want  Reason
		hard  bool
	}{
		{550, "5.1.1", "<a@example.com>: Recipient address rejected: User unknown", vocab.PhaseRcpt, ReasonUserUnknown, true},
		{550, "5.1.1", "<a@example.com>: Recipient address rejected: User unknown", vocab.PhaseUnknown, ReasonUserUnknown, true},
		// user unknown after DATA: a content or policy refusal
		{550, "5.1.1", "<a@example.com>... User unknown", vocab.PhaseEndOfData, ReasonFiltered, false},
		{550, "5.0.0", "Unknown user a@example.com", vocab.PhaseData, ReasonFiltered, false},
		{550, "", ": User unknown", vocab.PhaseEndOfData, ReasonFiltered, false},
		{550, "5.1.2", "Host unknown", vocab.PhaseEndOfData, ReasonFiltered, false},
		{554, "5.7.1", "Message content rejected", vocab.PhaseEndOfData, ReasonFiltered, false},
		// after MAIL FROM: about our sender
		{550, "5.1.7", "No such domain <m.hermod.test>", vocab.PhaseMail, ReasonRejected, false},
		{553, "5.1.0", "<b@m.hermod.test>: m.hermod.test does not exist", vocab.PhaseMail, ReasonRejected, false},
		{553, "5.1.0", "<b@m.hermod.test>: m.hermod.test does not exist", vocab.PhaseUnknown, ReasonUserUnknown, true},
		{550, "5.7.1", "Too many connections", vocab.PhaseMail, ReasonRateLimited, false},
		// connect, EHLO: about our host
		{554, "5.7.1", "Service unavailable; user unknown", vocab.PhaseConnect, ReasonBlocked, false},
		{550, "5.1.1", "my name was rejected", vocab.PhaseEHLO, ReasonBlocked, false},
		{421, "4.7.0", "Too many connections from your IP", vocab.PhaseConnect, ReasonRateLimited, false},
		{530, "5.7.0", "Must issue a STARTTLS command first", vocab.PhaseEHLO, ReasonSecurity, false},
		{554, "5.7.1", "Handshake refused", vocab.PhaseTLS, ReasonSecurity, false},
		// transient never hard, whatever the phase
		{450, "4.1.1", "User unknown", vocab.PhaseRcpt, ReasonOther, false},
		// provider wordings
		{550, "5.7.515", "Access denied, sending domain x does not meet the required authentication level", vocab.PhaseEndOfData, ReasonSecurity, false},
		{550, "5.7.511", "Access denied, banned sender", vocab.PhaseRcpt, ReasonSecurity, false},
		{550, "5.1.6", "Recipient no longer on server", vocab.PhaseRcpt, ReasonUserUnknown, true},
		{0, "5.4.4", "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)", vocab.PhaseUnknown, ReasonHostUnknown, true},
		{550, "5.4.4", "Invalid domain", vocab.PhaseRcpt, ReasonHostUnknown, true},
		{554, "5.7.1", "<a@b.example>: Relay access denied", vocab.PhaseRcpt, ReasonRejected, false},
		{550, "", "Unable to relay for a@b.example", vocab.PhaseRcpt, ReasonRejected, false},
		{421, "", "Ip frequency limited", vocab.PhaseConnect, ReasonRateLimited, false},
		{0, "5.4.4", "Host found but no data record of requested type", vocab.PhaseUnknown, ReasonNetwork, false},
		{550, "", "User a (a@b.example) not listed in Domino Directory", vocab.PhaseRcpt, ReasonUserUnknown, true},
		{550, "5.7.1", "Mail from 192.0.2.1 refused, listed in bl.example", vocab.PhaseRcpt, ReasonBlocked, false},
	}
	for _, tt := range tests {
		v := Classify(Reply{Code: tt.code, EnhancedCode: tt.enh, Text: tt.text, Phase: tt.phase})
		if v.Reason != tt.want || v.Hard != tt.hard {
			t.Errorf("Classify(%d, %q, %q, %q) = %s hard=%v, want %s hard=%v", tt.code, tt.enh, tt.text, tt.phase, v.Reason, v.Hard, tt.want, tt.hard)
		}
	}
}

func TestClassifyStatusClass(t *testing.T) {
	for _, tt := range []struct {
		r    Reply
		want string
	}{
		{Reply{Code: 550, Text: "no"}, "5.0.0"},
		{Reply{Code: 451, Text: "later"}, "4.0.0"},
		{Reply{Text: "smtp; 550 5.1.1 user unknown"}, "5.1.1"},
		{Reply{Code: 550, EnhancedCode: "5.7.1"}, "5.7.1"},
		{Reply{}, ""},
	} {
		if got := Classify(tt.r).Status; got != tt.want {
			t.Errorf("Classify(%+v).Status = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestPhaseFromText(t *testing.T) {
	tests := []struct {
		text string
		want vocab.Phase
	}{
		{"host mx[1.2.3.4] said: 550 5.0.0 User unknown (in reply to end of DATA command)", vocab.PhaseEndOfData},
		{"said: 550 5.1.1 unknown (in reply to RCPT TO command)", vocab.PhaseRcpt},
		{"said: 553 5.1.0 x does not exist (in reply to MAIL FROM command)", vocab.PhaseMail},
		{"SMTP error from remote mail server after end of data:\n550 Unknown user", vocab.PhaseEndOfData},
		{"SMTP error from remote mail server after RCPT TO:<a@b>: 550 5.1.1", vocab.PhaseRcpt},
		{"SMTP error from remote mail server after pipelined MAIL FROM:<b@c>: 553", vocab.PhaseMail},
		{"SMTP error from remote mail server after initial connection: 554", vocab.PhaseConnect},
		{"... while talking to mx.example.:\n>>> DATA\n<<< 354 go ahead\n<<< 550 Unknown user a@b\n554 5.0.0 Service unavailable", vocab.PhaseData},
		{"... while talking to mx.example.:\n>>> RCPT To:<a@b>\n<<< 550 5.1.1 User unknown\n>>> DATA\n<<< 503 need RCPT", vocab.PhaseRcpt},
		{"host mx[1.2.3.4] refused to talk to me: 554 5.7.1 go away", vocab.PhaseConnect},
		{"550 5.1.1 my name was rejected", vocab.PhaseEHLO},
		{"550 5.1.1 User unknown", vocab.PhaseUnknown},
		{"", vocab.PhaseUnknown},
	}
	for _, tt := range tests {
		if got := PhaseFromText(tt.text); got != tt.want {
			t.Errorf("PhaseFromText(%q) = %q, want %q", tt.text, got, tt.want)
		}
	}
}

func TestSameAddress(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"taro@例え.jp", "taro@xn--r8jz45g.jp", true},
		{"taro@例え.jp", "rfc822; <Taro@XN--R8JZ45G.JP>", true},
		{"taro@EXAMPLE.com", "Taro@example.com.", true},
		{"taro@例え.jp", "hanako@xn--r8jz45g.jp", false},
		{"taro@例え.jp", "taro@xn--r8jz45g.com", false},
		{"", "", false},
		{"taro@example.com", "", false},
	}
	for _, tt := range tests {
		if got := SameAddress(tt.a, tt.b); got != tt.want {
			t.Errorf("SameAddress(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	if got := NormalizeAddress("Taro@例え.JP"); got != "Taro@xn--r8jz45g.jp" {
		t.Errorf("NormalizeAddress = %q", got)
	}
}

// TestDecideIDN: a recipient stored as typed (U-label) matches the DSN that
// names the A-label the relay sent.
func TestDecideIDN(t *testing.T) {
	rep := parseFile(t, "testdata/corpus/006-postfix-idn-user-unknown.eml")
	d := Decide(rep, "taro@例え.jp")
	if !d.Matched || d.Outcome != OutcomeBounce || d.Reason != ReasonUserUnknown || !d.Hard {
		t.Fatalf("Decide(IDN) = %+v, want a matched hard user-unknown bounce", d)
	}
	if d := Decide(rep, "hanako@例え.jp"); d.Outcome != OutcomeIgnore || d.Matched {
		t.Fatalf("Decide(other recipient) = %+v, want ignore", d)
	}
}

func TestDecideOutcomes(t *testing.T) {
	for _, tt := range []struct {
		file, stored string
		outcome      Outcome
		reason       Reason
	}{
		{"048-arf-two-rcpt-to.eml", "rui.oishi@isp.example", OutcomeComplaint, ReasonFeedback},
		{"050-arf-undisclosed.eml", "anyone@example.com", OutcomeComplaint, ReasonFeedback},
		{"052-autoreply-undisclosed.eml", "ryo.koike@example.com", OutcomeIgnore, ReasonVacation},
		{"021-postfix-delivered.eml", "ema.kondo@example.com", OutcomeNote, ReasonDelivered},
		{"012-postfix-delayed.eml", "mei.hara@example.com", OutcomeNote, ReasonMailboxFull},
		{"013-dsn-groups-no-blank.eml", "b.ni@example.com", OutcomeBounce, ReasonMailboxFull},
		{"013-dsn-groups-no-blank.eml", "c.san@example.com", OutcomeIgnore, ReasonUserUnknown},
	} {
		rep := parseFile(t, "testdata/corpus/"+tt.file)
		d := Decide(rep, tt.stored)
		if d.Outcome != tt.outcome || (tt.outcome != OutcomeIgnore || tt.reason == ReasonVacation) && d.Reason != tt.reason {
			t.Errorf("%s for %s: %+v, want %s %s", tt.file, tt.stored, d, tt.outcome, tt.reason)
		}
	}
	if d := Decide(nil, "a@b.example"); d.Outcome != OutcomeNote || d.Kind != KindUnknown {
		t.Errorf("Decide(nil) = %+v", d)
	}
	rep := parseFile(t, "testdata/corpus/050-arf-undisclosed.eml")
	for _, l := range Lines("f", rep) {
		if strings.Contains(strings.ToLower(l.Recipient), "undisclosed") {
			t.Errorf("placeholder printed as an address: %+v", l)
		}
	}
}
