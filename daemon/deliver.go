package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/relay"
	"github.com/hermod-mta/hermod/suppress"
)

// deliverer adapts relay to queue.Deliverer: it checks the suppression list
// again before each attempt (an address may have been suppressed since the
// message was queued) and classifies failures into bounce reasons.
type deliverer struct {
	relay    *relay.Relay
	suppress *suppress.List
	pending  *pendingSuppressions
}

func (d *deliverer) Deliver(ctx context.Context, dl queue.Delivery) queue.Result {
	if d.pending != nil {
		if e, ok := d.pending.lookup(dl.Message.Account, dl.Recipient.Address); ok {
			return queue.Result{Status: queue.StatusSuppressed, Reason: e.Reason, Source: "suppress",
				Text: "address is suppressed by a bounce not yet on the suppression list (" + e.Reason + ")"}
		}
	}
	if d.suppress != nil {
		if e, ok, err := d.suppress.Lookup(dl.Message.Account, dl.Recipient.Address); err == nil && ok {
			return queue.Result{Status: queue.StatusSuppressed, Reason: e.Reason, Source: "suppress",
				Text: "address is on the suppression list (" + e.Reason + ")"}
		}
	}
	r := d.relay.Deliver(ctx, dl.Recipient.EnvelopeFrom, dl.Recipient.Address, dl.Body)
	return resultFromRelay(r)
}

// resultFromRelay maps a relay result to a queue result with its reason.
func resultFromRelay(r relay.Result) queue.Result {
	res := queue.Result{Host: r.Host, Code: r.Code, EnhancedCode: r.EnhancedCode, Text: r.Text, Source: "relay",
		Addr: r.Addr, TLSCipher: r.TLSCipher}
	switch {
	case r.TLS:
		res.TLS = r.TLSVersion
	case r.Addr != "" && r.Stage != relay.StageConnect:
		res.TLS = "plain" // a session was made, without TLS
	}
	if r.Host == "" && r.Addr != "" {
		res.Host = r.Addr
	} else if r.Addr != "" {
		res.Host = r.Host + "[" + r.Addr + "]"
	}
	switch r.Outcome {
	case relay.Sent:
		res.Status = queue.StatusSent
		return res
	case relay.Permanent:
		res.Status = queue.StatusBounced
	default:
		res.Status = queue.StatusDeferred
	}
	switch r.DNS {
	case "nxdomain":
		res.Reason = string(bounce.ReasonHostUnknown)
	case "noaddress": // an MX host without A/AAAA is not proof the address is wrong
		res.Reason = string(bounce.ReasonNetwork)
	case "nullmx":
		res.Reason = string(bounce.ReasonNotAccept)
	case "servfail", "timeout":
		res.Reason = string(bounce.ReasonNetwork)
	default:
		if r.Code == 0 {
			res.Reason = string(bounce.ReasonNetwork)
		} else {
			// The relay will report r.Phase (vocab.Phase); until then unknown.
			res.Reason = string(bounce.Classify(bounce.Reply{Code: r.Code, EnhancedCode: r.EnhancedCode, Text: r.Text, Phase: r.Phase}).Reason)
		}
	}
	return res
}

// logAttempt writes the one log line per delivery attempt that postmasters grep.
func logAttempt(log *slog.Logger) func(queue.Delivery, queue.Result, time.Duration) {
	return func(dl queue.Delivery, res queue.Result, took time.Duration) {
		level := slog.LevelInfo
		if res.Status == queue.StatusDeferred {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, "attempt",
			"msgid", dl.Message.ID, "from", dl.Recipient.EnvelopeFrom, "rcpt", dl.Recipient.Address,
			"attempt", dl.Recipient.Attempts+1, "mx", res.Host, "status", res.Status, "code", res.Code,
			"enhanced", res.EnhancedCode, "reason", res.Reason, "reply", res.Text,
			"delay", time.Since(dl.Message.Received).Round(time.Millisecond), "took", took.Round(time.Millisecond))
	}
}
