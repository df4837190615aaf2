package bounce

import "testing"

func TestClassify(t *testing.T) {
	tests := []struct {
		code     int
		enhanced string
		text     string
		want     Reason
	}{
		// user-unknown
		{550, "5.1.1", "<a@example.com>: Recipient address rejected: User unknown in virtual mailbox table", ReasonUserUnknown},
		{550, "5.1.1", "The email account that you tried to reach does not exist.", ReasonUserUnknown},
		{550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", ReasonUserUnknown},
		{550, "5.1.1", "RESOLVER.ADR.RecipNotFound; not found", ReasonUserUnknown},
		{554, "", "delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]", ReasonUserUnknown},
		{0, "", "Sorry, no mailbox here by that name. (#5.1.1)", ReasonUserUnknown},
		{550, "", "Unknown user taro@docomo.ne.jp", ReasonUserUnknown},
		{550, "5.1.1", "Requested action not taken: mailbox unavailable", ReasonUserUnknown},
		{550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281)", ReasonUserUnknown},
		{0, "", "smtp; 550 5.1.1 user unknown", ReasonUserUnknown},
		{550, "5.7.1", "No such user here", ReasonUserUnknown},
		{553, "5.1.3", "", ReasonUserUnknown},
		// host-unknown / not-accept
		{0, "5.4.4", "Host or domain name not found. Name service error for name=x.example type=MX: Host not found", ReasonHostUnknown},
		{550, "5.1.2", "", ReasonHostUnknown},
		{0, "", "Unrouteable mail domain \"x.example\"", ReasonHostUnknown},
		{556, "5.1.10", "<a@x.example>: Recipient address rejected: Domain x.example does not accept mail (nullMX)", ReasonNotAccept},
		{556, "5.1.10", "", ReasonNotAccept},
		// THE dangerous ones: our host refused under user-unknown-looking codes.
		{550, "5.1.1", "Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org", ReasonBlocked},
		{550, "5.1.1", "<a@example.com>: Recipient address rejected: your IP address 192.0.2.10 is listed on our blocklist", ReasonBlocked},
		{550, "5.1.1", "Mail from 192.0.2.10 refused, listed in bl.spamcop.net", ReasonBlocked},
		{550, "5.1.1", "User unknown; see https://www.spamhaus.org/query/ip/192.0.2.10", ReasonBlocked},
		{550, "5.7.1", "Service unavailable, Client host [192.0.2.10] blocked using Spamhaus", ReasonBlocked},
		{554, "5.7.1", "Mailbox unavailable: your IP is blacklisted", ReasonBlocked},
		{550, "5.7.606", "Access denied, banned sending IP [192.0.2.10]", ReasonBlocked},
		{550, "5.1.1", "Access denied for 192.0.2.10", ReasonBlocked},
		{550, "", "Rejected by RBL: 192.0.2.10", ReasonBlocked},
		{450, "4.7.25", "Client host rejected: cannot find your hostname, [192.0.2.10]", ReasonBlocked},
		{550, "5.7.25", "The IP address sending this message does not have a PTR record setup", ReasonBlocked},
		{504, "5.5.2", "<mail.invalid>: Helo command rejected: Host not found", ReasonBlocked},
		{550, "", "SC-001 Unfortunately, messages from 192.0.2.10 weren't sent. Please contact your Internet service provider since part of their network is on our block list.", ReasonBlocked},
		{553, "5.7.2", "[TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT succeed.", ReasonBlocked},
		{550, "5.1.1", "Garbled recipient", ReasonUserUnknown}, // "rbl" inside a word is no blocklist
		// mailbox-full / suspended
		{552, "5.2.2", "<a@example.com>: Mailbox full", ReasonMailboxFull},
		{452, "4.2.2", "The recipient's inbox is out of storage space.", ReasonMailboxFull},
		{550, "", "Mailbox is over quota", ReasonMailboxFull},
		{550, "5.2.1", "The email account that you tried to reach is disabled.", ReasonSuspended},
		{550, "5.2.1", "", ReasonSuspended},
		{550, "", "This account has been suspended", ReasonSuspended},
		// sender / security / spam / policy / filtered
		{553, "5.1.8", "<bounce@m.example>: Sender address rejected: Domain not found", ReasonRejected},
		{550, "5.7.27", "", ReasonRejected},
		{550, "5.7.1", "The sender's domain does not exist", ReasonRejected},
		{550, "5.1.1", "Your domain has no MX record", ReasonRejected},
		{550, "5.7.26", "Unauthenticated email from makeleaps.com is not accepted due to domain's DMARC policy.", ReasonSecurity},
		{550, "5.7.23", "", ReasonSecurity},
		{550, "5.7.1", "SPF check failed for 192.0.2.10", ReasonSecurity},
		{530, "5.7.0", "Must issue a STARTTLS command first", ReasonSecurity},
		{550, "5.7.1", "[192.0.2.10 12] Our system has detected that this message is likely unsolicited mail.", ReasonSpam},
		{554, "5.7.1", "Message rejected: virus found", ReasonSpam},
		{550, "5.7.1", "Message rejected due to local policy", ReasonPolicy},
		{550, "5.7.1", "", ReasonPolicy},
		{554, "5.6.0", "", ReasonPolicy},
		{550, "5.7.1", "Rejected by recipient's settings (受信拒否)", ReasonFiltered},
		{550, "", "Message content rejected by filter", ReasonFiltered},
		// size, rate, expiry, network, system
		{552, "5.3.4", "Message size exceeds fixed limit", ReasonMessageTooBig},
		{552, "", "Message too large", ReasonMessageTooBig},
		{421, "4.7.0", "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints", ReasonRateLimited},
		{421, "", "Too many connections from your IP", ReasonRateLimited},
		{451, "4.7.28", "", ReasonRateLimited},
		{0, "", "retry timeout exceeded", ReasonExpired},
		{0, "4.4.7", "", ReasonExpired},
		{0, "5.4.7", "delivery time expired", ReasonExpired},
		{554, "5.4.6", "Mail for example.com loops back to myself", ReasonNetwork},
		{0, "4.4.1", "connect to mx.example.com[198.51.100.1]:25: Connection refused", ReasonNetwork},
		{451, "4.3.0", "Temporary local problem - please try later", ReasonSystem},
		{452, "4.3.1", "Insufficient system storage", ReasonSystem},
		// transient replies are never hard
		{450, "4.1.1", "<a@example.com>: Recipient address rejected: unverified address: User unknown", ReasonOther},
		{450, "", "User unknown", ReasonOther},
		{451, "4.1.2", "Host not found, try again", ReasonNetwork},
		// unclear: soft
		{550, "", "Requested action not taken: mailbox unavailable", ReasonOther},
		{550, "", "", ReasonOther},
		{0, "", "", ReasonOther},
		{554, "5.0.0", "Transaction failed", ReasonOther},
	}
	for _, tt := range tests {
		if got := Classify(Reply{Code: tt.code, EnhancedCode: tt.enhanced, Text: tt.text}).Reason; got != tt.want {
			t.Errorf("Classify(%d, %q, %q) = %q, want %q", tt.code, tt.enhanced, tt.text, got, tt.want)
		}
	}
}

func TestReasonHard(t *testing.T) {
	hard := map[Reason]bool{ReasonUserUnknown: true, ReasonHostUnknown: true, ReasonNotAccept: true}
	all := []Reason{
		ReasonUserUnknown, ReasonHostUnknown, ReasonNotAccept, ReasonMailboxFull, ReasonSuspended,
		ReasonBlocked, ReasonRejected, ReasonFiltered, ReasonSpam, ReasonPolicy, ReasonSecurity,
		ReasonMessageTooBig, ReasonRateLimited, ReasonExpired, ReasonNetwork, ReasonSystem, ReasonOther,
	}
	for _, r := range all {
		if r.Hard() != hard[r] {
			t.Errorf("%q.Hard() = %v, want %v", r, r.Hard(), hard[r])
		}
	}
	if Reason("").Hard() {
		t.Error(`Reason("").Hard() = true`)
	}
}

func TestScanCodes(t *testing.T) {
	tests := []struct {
		in   string
		code int
		enh  string
	}{
		{"smtp; 550 5.1.1 <a@b>: x", 550, "5.1.1"},
		{"550-5.1.1 The email account", 550, "5.1.1"},
		{"#550 5.1.1 RESOLVER.ADR.RecipNotFound", 550, "5.1.1"},
		{"554: delivery error: dd", 554, ""},
		{"connect to mx[192.0.2.5]:25: refused", 0, ""},
		{"Mail from 5.1.1.1 refused", 0, ""},
		{"mta1234.mail ne1 (#4.4.1)", 0, "4.4.1"},
		{"status 5.7.606 ok", 0, "5.7.606"},
	}
	for _, tt := range tests {
		code, enh := replyCodes(tt.in)
		if code != tt.code || enh != tt.enh {
			t.Errorf("replyCodes(%q) = %d, %q; want %d, %q", tt.in, code, enh, tt.code, tt.enh)
		}
	}
}
