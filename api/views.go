package api

import (
	"time"

	"github.com/hermod-mta/hermod/queue"
)

// Wording is the human text of a status in the words of the product's help
// page (seeds/delivery-status-faq.ja.txt), in Japanese and English.
type Wording struct {
	JA string `json:"ja"`
	EN string `json:"en"`
}

// StatusWording returns the wording the application shows its user for a status.
func StatusWording(s queue.Status) Wording {
	switch s {
	case queue.StatusSent:
		return Wording{JA: "送信済み", EN: "Sent"}
	case queue.StatusBounced:
		return Wording{JA: "メールが宛先のシステムで拒否されました", EN: "The email was rejected by the recipient's system"}
	case queue.StatusSuppressed:
		return Wording{JA: "受信側のシステムによって拒否されたことがあるメールアドレスのため、メールは送信されませんでした",
			EN: "The email was not sent because this address was rejected by the receiving system before"}
	default: // queued, deferred, held: handed over or trying, no final answer yet
		return Wording{JA: "送信結果待ち", EN: "Waiting for the result"}
	}
}

// MessageView is the JSON of one message.
type MessageView struct {
	ID            string          `json:"id"`
	Account       string          `json:"account,omitempty"`
	User          string          `json:"user,omitempty"`
	Ref           string          `json:"ref,omitempty"`
	Kind          string          `json:"kind,omitempty"`
	MailFrom      string          `json:"mail_from"`
	HeaderFrom    string          `json:"header_from,omitempty"`
	From          string          `json:"from,omitempty"`
	MessageID     string          `json:"message_id_header,omitempty"`
	SigningDomain string          `json:"dkim_domain,omitempty"`
	Received      time.Time       `json:"received"`
	Finished      time.Time       `json:"finished,omitzero"`
	Size          int             `json:"size"`
	Recipients    []RecipientView `json:"recipients"`
}

// RecipientView is the JSON of one recipient and its history.
type RecipientView struct {
	Index        int          `json:"index"`
	Address      string       `json:"address"`
	EnvelopeFrom string       `json:"envelope_from"`
	Status       queue.Status `json:"status"`
	Message      Wording      `json:"message"`
	Reason       string       `json:"reason,omitempty"`
	Attempts     int          `json:"attempts"`
	NextAttempt  time.Time    `json:"next_attempt,omitzero"`
	// Remote is the last remote reply verbatim.
	Remote       string      `json:"remote,omitempty"`
	Host         string      `json:"host,omitempty"`
	Code         int         `json:"code,omitempty"`
	EnhancedCode string      `json:"enhanced_code,omitempty"`
	Events       []EventView `json:"events,omitempty"`
}

// EventView is the JSON of one event.
type EventView struct {
	queue.Event
	Message Wording `json:"message"`
}

// NewEventView adds the wording to an event.
func NewEventView(ev queue.Event) EventView {
	return EventView{Event: ev, Message: StatusWording(ev.Status)}
}

// NewMessageView builds the JSON view of a stored message.
func NewMessageView(m *queue.Message) MessageView {
	v := MessageView{ID: m.ID, Account: m.Account, User: m.User, Ref: m.Ref, Kind: m.Kind, MailFrom: m.MailFrom,
		HeaderFrom: m.HeaderFrom, From: m.From, MessageID: m.MessageIDHeader, SigningDomain: m.SigningDomain,
		Received: m.Received, Finished: m.Finished, Size: m.Size}
	for _, r := range m.Recipients {
		rv := RecipientView{Index: r.Index, Address: r.Address, EnvelopeFrom: r.EnvelopeFrom, Status: r.Status,
			Message: StatusWording(r.Status), Reason: r.Reason, Attempts: r.Attempts, NextAttempt: r.NextAttempt}
		if l := r.Last; l != nil {
			rv.Remote, rv.Host, rv.Code, rv.EnhancedCode = l.Text, l.Host, l.Code, l.EnhancedCode
		}
		for _, ev := range r.Events {
			rv.Events = append(rv.Events, NewEventView(ev))
		}
		v.Recipients = append(v.Recipients, rv)
	}
	return v
}
