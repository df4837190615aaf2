package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/smtpd"
)

// bounceIntake applies what the bounce listener receives to the recipients
// its VERP addresses name. Mail for postmaster@ and abuse@ is stored by the
// listener itself (smtpd.BounceOptions.Mailbox, the mailbox package).
type bounceIntake struct {
	store *queue.Store
	// applied is the suppression list's follower of the event log: a bounce
	// is answered once its suppression has taken effect.
	applied *queue.Follower
	log     *slog.Logger
	// On a cluster: this node ("" on a single node), and where the
	// reports for other nodes' messages go.
	self     string
	forwards *forwarder
}

// local reports whether this node owns message id.
func (b *bounceIntake) local(id string) bool { return owns(b.self, id) }

func (b *bounceIntake) Known(id string, index int) bool {
	if !b.local(id) {
		// Another node's message: the VERP MAC, checked before, proves it
		// was issued by the cluster; its owner checks the recipient.
		return index >= 0
	}
	n, err := b.store.Recipients(id)
	return err == nil && index >= 0 && index < n
}

func (b *bounceIntake) Receive(ctx context.Context, remote netip.Addr, mailFrom string, rcpts []smtpd.BounceRcpt, data []byte) error {
	rep, err := bounce.Parse(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("parse bounce: %w", err)
	}
	for _, rc := range rcpts {
		if rc.Mailbox != "" {
			continue // stored by the listener's mailbox
		}
		if !b.local(rc.MessageID) {
			if err := b.forwards.Add(forward{MessageID: rc.MessageID, Index: rc.Index, Remote: remote.String(),
				Report: rep, Received: time.Now().UTC()}); err != nil {
				return err
			}
			b.log.Info("bounce for another node's message kept for forwarding", "msgid", rc.MessageID, "owner", nodeOf(rc.MessageID), "client", remote)
			continue
		}
		if err := b.apply(ctx, remote, rc, rep); err != nil {
			return err
		}
	}
	return nil
}

// apply records the report on the recipient the VERP address names. The
// VERP proves which (message, recipient) the report is about; when the
// report names recipients, one of them must be that recipient's address, so
// that a report about someone else cannot change it.
func (b *bounceIntake) apply(ctx context.Context, remote netip.Addr, rc smtpd.BounceRcpt, rep *bounce.Report) error {
	id := rc.MessageID
	want, err := b.store.Address(id, rc.Index)
	if err != nil {
		b.log.Info("bounce: message gone", "msgid", id, "client", remote)
		return nil
	}
	// bounce.Decide is the one decision `hermod bounce parse` prints too.
	d := bounce.Decide(rep, want)
	ev, ok := bounceEvent(d, remote, rep.Subject)
	if !ok {
		b.log.Info("bounce: "+d.Note+"; ignored", "msgid", id, "rcpt", want, "client", remote, "kind", rep.Kind, "subject", rep.Subject)
		return nil
	}
	rec, err := b.store.Apply(ctx, id, rc.Index, ev)
	if errors.Is(err, queue.ErrNotApplicable) {
		b.log.Info("bounce: not applied", "msgid", id, "rcpt", want, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	b.log.Info("bounce", "msgid", id, "rcpt", want, "kind", rep.Kind, "status", rec.Status, "reason", ev.Reason,
		"enhanced", ev.EnhancedCode, "client", remote)
	if b.applied != nil {
		// Answer once the suppression this may cause has taken effect, so
		// that mail submitted after the 250 to this bounce sees it.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := b.applied.WaitFor(wctx, rec.Seq); err != nil {
			b.log.Warn("bounce: suppression not applied yet", "msgid", id, "seq", rec.Seq, "err", err)
		}
	}
	return nil
}

// bounceEvent turns Decide's answer into the event to record; false means
// nothing is recorded (an auto-reply, a report about other recipients).
// An event with StatusBounced and a hard reason suppresses the address
// (eventHooks), exactly when `hermod bounce parse` prints "hard": true.
func bounceEvent(d bounce.Decision, remote netip.Addr, subject string) (queue.Event, bool) {
	if d.Outcome == bounce.OutcomeIgnore {
		return queue.Event{}, false
	}
	ev := queue.Event{Source: "dsn", Host: remote.String(),
		EnhancedCode: d.Status, Code: d.Code, Text: d.Diagnostic, Reason: string(d.Reason)}
	if d.RemoteMTA != "" {
		ev.Host = d.RemoteMTA
	}
	switch d.Outcome {
	case bounce.OutcomeBounce:
		ev.Status = queue.StatusBounced
	case bounce.OutcomeComplaint:
		ev.Source, ev.Reason = "feedback", "complaint"
		ev.Note = d.Note
	default: // bounce.OutcomeNote
		switch d.Kind {
		case bounce.KindDelay, bounce.KindBounce:
			ev.Note = "delay notice: " + ev.Text
		case bounce.KindDelivered:
			ev.Note, ev.Reason = "delivery notice: "+ev.Text, ""
		default:
			ev.Note, ev.Reason = "unrecognised message to the bounce address: "+subject, ""
		}
	}
	return ev, true
}
