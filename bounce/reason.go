// Package bounce parses what comes back to hermod's bounce address — RFC 3464
// delivery status notifications, the common non-standard bounces, auto-replies
// and RFC 5965 (ARF) complaints — and classifies SMTP replies into the bounce
// reasons of DESIGN.md ("VERP and statuses").
//
// The package is pure: it reads bytes and returns values, keeps no state and
// imports none of hermod's own packages. Importing it registers go-message's
// charset decoders (ISO-2022-JP, Shift_JIS, …) through
// github.com/emersion/go-message/charset, which Japanese carrier bounces need.
package bounce

import (
	"strings"
)

// Reason is why a recipient could not be delivered, in the vocabulary of
// DESIGN.md. Only the hard reasons put an address on the suppression list.
type Reason string

// The bounce reasons. The strings are part of the API (statuses, webhooks,
// suppression entries) and must not change.
const (
	ReasonUserUnknown   Reason = "user-unknown"    // mailbox does not exist or has moved
	ReasonHostUnknown   Reason = "host-unknown"    // recipient domain does not exist
	ReasonNotAccept     Reason = "not-accept"      // domain accepts no mail (null MX)
	ReasonMailboxFull   Reason = "mailbox-full"    // over quota
	ReasonSuspended     Reason = "suspended"       // mailbox disabled or inactive
	ReasonBlocked       Reason = "blocked"         // our sending host or IP refused
	ReasonRejected      Reason = "rejected"        // envelope sender or its domain refused
	ReasonFiltered      Reason = "filtered"        // recipient-side filter or rule
	ReasonSpam          Reason = "spam"            // content judged spam or virus
	ReasonPolicy        Reason = "policy"          // receiver policy or RFC violation
	ReasonSecurity      Reason = "security"        // SPF/DKIM/DMARC/TLS requirements not met
	ReasonMessageTooBig Reason = "message-too-big" // size over the receiver's limit
	ReasonRateLimited   Reason = "rate-limited"    // too many connections or messages
	ReasonExpired       Reason = "expired"         // queue lifetime ran out
	ReasonNetwork       Reason = "network"         // routing, loops, connection failures
	ReasonSystem        Reason = "system"          // remote system errors
	ReasonOther         Reason = "other"           // nothing recognisable
)

// Hard reports whether r means the address itself is undeliverable, so that
// it belongs on the suppression list: only user-unknown, host-unknown and
// not-accept. Everything else — above all blocked, which is our own sending
// host's problem — is soft.
func (r Reason) Hard() bool {
	switch r {
	case ReasonUserUnknown, ReasonHostUnknown, ReasonNotAccept:
		return true
	}
	return false
}

// classifyText maps an SMTP reply to a Reason without regard to the phase
// (Classify applies the phase on top). code is the three-digit reply code
// (0 if unknown), enhanced the RFC 3463 enhanced status ("5.1.1", or ""), and
// text the free text of the reply or DSN Diagnostic-Code. Missing codes are
// recovered from the start of text ("smtp; 550 5.1.1 …").
//
// Text evidence beats codes, and evidence that our own host or IP was refused
// beats everything: servers send "550 5.1.1" and "550 5.7.1" for blocklist
// hits, and suppressing a valid address for our own problem is the worst
// mistake this function can make. A transient reply (4xx or 4.x.x) never
// yields a hard reason. When nothing is recognisable the result is soft.
func classifyText(code int, enhanced, text string) Reason {
	enhanced = normEnhanced(enhanced)
	if code == 0 || enhanced == "" {
		c, e := replyCodes(text)
		if code == 0 {
			code = c
		}
		if enhanced == "" {
			enhanced = e
		}
	}
	r := classify(code, enhanced, strings.ToLower(text))
	if r.Hard() && transient(code, enhanced) {
		// A 4xx "user unknown" (reject_unverified_recipient, a DNS
		// hiccup) is not proof the address is dead.
		if r == ReasonHostUnknown {
			return ReasonNetwork
		}
		return ReasonOther
	}
	return r
}

// transient reports whether the reply is a temporary failure.
func transient(code int, enhanced string) bool {
	if enhanced != "" {
		return enhanced[0] == '4'
	}
	return code >= 400 && code < 500
}

func classify(code int, enhanced, t string) Reason {
	// Order matters: each rule is evidence that must win over the
	// ones below it.
	switch enhanced {
	case "5.7.509", "5.7.510", "5.7.511", "5.7.515", "4.7.509", "4.7.515":
		// Microsoft's sender-authentication rejections: never the
		// recipient's fault, whatever the text says.
		return ReasonSecurity
	}
	switch {
	case matchRe(t, reNotListed):
		// Lotus Notes/Domino: "… is not listed in … Directory" is an
		// unknown user, unlike a blocklist's "listed in".
		return ReasonUserUnknown
	case matchAny(t, hostBlocked) || matchRe(t, reHostBlocked):
		return ReasonBlocked
	case matchAny(t, rateLimited):
		return ReasonRateLimited
	case matchAny(t, weakHostBlocked) || enhanced == "5.7.25" || enhanced == "4.7.25":
		return ReasonBlocked
	case matchAny(t, securityText) || matchRe(t, reSecurity):
		return ReasonSecurity
	case matchAny(t, senderRejected):
		return ReasonRejected
	case matchAny(t, relayDenied):
		return ReasonRejected
	case matchAny(t, mailboxFullText):
		// Before expired: Exim's "mailbox is full: retry timeout
		// exceeded" still counts toward the soft-bounce run.
		return ReasonMailboxFull
	case matchAny(t, expiredText) || matchRe(t, reExpired):
		return ReasonExpired
	case matchAny(t, noAddressText):
		return ReasonNetwork
	case matchAny(t, notAcceptText):
		return ReasonNotAccept
	case matchAny(t, hostUnknownText):
		return ReasonHostUnknown
	case matchAny(t, userUnknownText) || userUnknownByCode(enhanced, t):
		return ReasonUserUnknown
	case matchAny(t, suspendedText) || matchRe(t, reSuspended):
		return ReasonSuspended
	case matchAny(t, tooBigText):
		return ReasonMessageTooBig
	case matchAny(t, spamText):
		return ReasonSpam
	case matchAny(t, filteredText) || matchRe(t, reFiltered):
		return ReasonFiltered
	case matchAny(t, networkText):
		return ReasonNetwork
	case matchAny(t, systemText):
		return ReasonSystem
	case matchAny(t, policyText):
		return ReasonPolicy
	}
	if r := byEnhanced(enhanced); r != "" {
		return r
	}
	return byCode(code)
}

// userUnknownByCode accepts the RFC 5321 stock text "mailbox unavailable"
// (sent for every kind of 550) as user evidence only under X.1.1.
// Exchange Online's directory-based edge blocking answers an unknown
// recipient with "5.4.1 Recipient address rejected: Access denied".
func userUnknownByCode(enhanced, t string) bool {
	switch enhanced {
	case "5.1.1", "4.1.1":
		return strings.Contains(t, "mailbox unavailable")
	case "5.4.1":
		return strings.Contains(t, "recipient address rejected: access denied")
	}
	return false
}

// byEnhanced maps an RFC 3463 enhanced status code (RFC 3463 3.x, RFC 7372,
// RFC 7505) when the text said nothing recognisable.
func byEnhanced(e string) Reason {
	if e == "" {
		return ""
	}
	sub := e[2:] // "1.1" from "5.1.1"
	switch sub {
	case "1.1", "1.3", "1.6":
		return ReasonUserUnknown
	case "1.2":
		return ReasonHostUnknown
	case "1.10": // RFC 7505 null MX
		return ReasonNotAccept
	case "1.7", "1.8", "7.27":
		return ReasonRejected
	case "2.1", "7.13":
		return ReasonSuspended
	case "2.2":
		return ReasonMailboxFull
	case "2.3", "3.4":
		return ReasonMessageTooBig
	case "4.7":
		return ReasonExpired
	case "5.3", "7.28":
		return ReasonRateLimited
	case "7.25":
		return ReasonBlocked
	case "7.5", "7.6", "7.7", "7.8", "7.9", "7.10", "7.11", "7.14",
		"7.20", "7.21", "7.22", "7.23", "7.24", "7.26":
		return ReasonSecurity
	}
	switch {
	case strings.HasPrefix(sub, "3."):
		return ReasonSystem
	case strings.HasPrefix(sub, "4."):
		return ReasonNetwork
	case strings.HasPrefix(sub, "5."), strings.HasPrefix(sub, "6."), strings.HasPrefix(sub, "7."):
		return ReasonPolicy
	}
	return ""
}

// byCode is the last resort: a bare reply code says little, and a bare 550
// in particular is never taken as "user unknown".
func byCode(code int) Reason {
	switch code {
	case 421, 451:
		return ReasonSystem
	case 452:
		return ReasonSystem
	case 552:
		return ReasonMailboxFull
	}
	return ReasonOther
}

func matchAny(t string, subs []string) bool {
	for _, s := range subs {
		if strings.Contains(t, s) {
			return true
		}
	}
	return false
}
