package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/smtpd"
	"github.com/hermod-mta/hermod/suppress"
)

// mailboxMinFree is the free space the postmaster@/abuse@ mailbox leaves
// on the filesystem of data_dir (until the spool's own reserve is passed
// here instead).
const mailboxMinFree = 64 << 20

// bounceIntake applies what the bounce listener receives to the recipients
// its VERP addresses name. Mail for postmaster@ and abuse@ is stored by the
// listener itself (smtpd.BounceOptions.Mailbox, the mailbox package).
type bounceIntake struct {
	store    *queue.Store
	suppress *suppress.List
	log      *slog.Logger
}

func (b *bounceIntake) Known(id string, index int) bool {
	m, err := b.store.Get(id)
	return err == nil && index >= 0 && index < len(m.Recipients)
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
	m, err := b.store.Get(rc.MessageID)
	if err != nil {
		b.log.Info("bounce: message gone", "msgid", rc.MessageID, "client", remote)
		return nil
	}
	want := m.Recipients[rc.Index].Address
	var match *bounce.Recipient
	named := false
	for i := range rep.Recipients {
		r := &rep.Recipients[i]
		if r.Recipient == "" && r.OriginalRecipient == "" {
			continue
		}
		named = true
		if sameAddress(r.Recipient, want) || sameAddress(strings.TrimPrefix(r.OriginalRecipient, "rfc822;"), want) {
			match = r
			break
		}
	}
	if named && match == nil {
		b.log.Warn("bounce: report names other recipients; ignored", "msgid", m.ID, "rcpt", want, "client", remote, "kind", rep.Kind)
		return nil
	}
	if match == nil && len(rep.Recipients) > 0 {
		match = &rep.Recipients[0]
	}
	ev := queue.Event{Source: "dsn", Host: remote.String()}
	if match != nil {
		ev.EnhancedCode, ev.Code, ev.Text, ev.Reason = match.Status, match.Code, match.Diagnostic, string(match.Reason)
		if match.RemoteMTA != "" {
			ev.Host = match.RemoteMTA
		}
	}
	switch rep.Kind {
	case bounce.KindBounce:
		ev.Status = queue.StatusBounced
		if ev.Reason == "" {
			ev.Reason = string(bounce.ReasonOther)
		}
	case bounce.KindFeedback:
		ev.Source, ev.Reason = "feedback", "complaint"
		ev.Note = "complaint (" + rep.FeedbackType + ")"
	case bounce.KindDelay:
		ev.Note = "delay notice: " + ev.Text
	case bounce.KindDelivered:
		ev.Note = "delivery notice: " + ev.Text
	case bounce.KindAutoReply:
		b.log.Info("bounce: auto-reply ignored", "msgid", m.ID, "rcpt", want, "subject", rep.Subject)
		return nil
	default:
		ev.Note = "unrecognised message to the bounce address: " + rep.Subject
		ev.Reason = ""
	}
	r, err := b.store.Apply(ctx, m.ID, rc.Index, ev)
	if errors.Is(err, queue.ErrNotApplicable) {
		b.log.Info("bounce: not applied", "msgid", m.ID, "rcpt", want, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	b.log.Info("bounce", "msgid", m.ID, "rcpt", want, "kind", rep.Kind, "status", r.Status, "reason", ev.Reason,
		"enhanced", ev.EnhancedCode, "client", remote)
	return nil
}

// sameAddress compares addresses with the domain case-insensitive and the
// local part too (mail systems fold it often enough that a report naming
// Taro@ for taro@ is about the same person).
func sameAddress(a, b string) bool {
	return a != "" && strings.EqualFold(strings.Trim(a, "<> "), strings.Trim(b, "<> "))
}
