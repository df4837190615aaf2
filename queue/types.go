// Package queue is hermod's durable store and delivery scheduler.
//
// Messages, their per-recipient deliveries, a time index of due work and an
// ordered event log live in one bbolt file. Writes from many goroutines are
// grouped into shared transactions so that concurrent submissions share one
// fsync (see commit.go); a message is acknowledged only after its commit is on
// disk. The Runner finds due work through the time index, hands each
// (message, recipient) to a Deliverer and records the result.
package queue

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/vocab"
)

// Status is the state of one recipient of a message (docs/design.md, "VERP and statuses").
type Status string

// The recipient statuses.
const (
	// StatusQueued: accepted, not yet tried.
	StatusQueued Status = "queued"
	// StatusDeferred: tried, temporary failure, will be retried.
	StatusDeferred Status = "deferred"
	// StatusSent: the remote MX answered 250; a later DSN may still bounce it.
	StatusSent Status = "sent"
	// StatusBounced: permanent failure (5xx, DSN, NXDOMAIN, null MX, expiry).
	StatusBounced Status = "bounced"
	// StatusSuppressed: not sent because the address is on the suppression list.
	StatusSuppressed Status = "suppressed"
	// StatusHeld: put on hold by the postmaster (queue hold): never attempted
	// until released, not final, and still aging towards relay.max_age.
	StatusHeld Status = "held"
)

// Statuses lists every status in display order.
var Statuses = []Status{StatusQueued, StatusDeferred, StatusSent, StatusBounced, StatusSuppressed, StatusHeld}

// Pending reports whether the status still waits for a delivery attempt.
func (s Status) Pending() bool { return s == StatusQueued || s == StatusDeferred }

// Open reports whether the status is not final: pending, or held.
func (s Status) Open() bool { return s.Pending() || s == StatusHeld }

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// Message is the stored envelope and metadata of one accepted message. The
// message bytes are stored separately (Store.Body).
type Message struct {
	ID string `json:"id"`
	// Account is the company account the mail was sent for; User the SMTP AUTH user.
	Account string `json:"account,omitempty"`
	User    string `json:"user,omitempty"`
	// Ref is the application's own reference (X-Hermod-Ref).
	Ref string `json:"ref,omitempty"`
	// Kind is the X-Hermod-Kind of the message.
	Kind string `json:"kind,omitempty"`
	// MailFrom is the envelope sender the application gave; HeaderFrom the
	// From it submitted; From the From that leaves after the sender rule.
	MailFrom   string `json:"mail_from"`
	HeaderFrom string `json:"header_from,omitempty"`
	From       string `json:"from,omitempty"`
	// MessageIDHeader is the Message-ID header value of the message.
	MessageIDHeader string `json:"message_id_header,omitempty"`
	// SigningDomain is the DKIM d= the message was signed with ("" unsigned).
	SigningDomain string       `json:"signing_domain,omitempty"`
	Received      time.Time    `json:"received"`
	Size          int          `json:"size"`
	Recipients    []*Recipient `json:"recipients"`
	// Finished is when the last recipient reached a final status (zero while pending).
	Finished time.Time `json:"finished,omitempty"`
}

// Recipient is one delivery of a message: its own envelope, status and history.
type Recipient struct {
	Index   int    `json:"index"`
	Address string `json:"address"`
	// EnvelopeFrom is the VERP return path used for this recipient.
	EnvelopeFrom string    `json:"envelope_from"`
	Status       Status    `json:"status"`
	Reason       string    `json:"reason,omitempty"`
	Attempts     int       `json:"attempts"`
	NextAttempt  time.Time `json:"next_attempt,omitempty"`
	// Last is the most recent event of this recipient (the remote reply kept verbatim).
	Last   *Event  `json:"last,omitempty"`
	Events []Event `json:"events"`
}

// Done reports whether every recipient has reached a final status.
func (m *Message) Done() bool {
	for _, r := range m.Recipients {
		if r.Status == "" || r.Status.Open() {
			return false
		}
	}
	return true
}

// Event is one status change of one recipient: the unit of `queue tail`, the
// API's event stream and webhooks.
type Event struct {
	// Seq orders all events of the store; it only grows.
	Seq          uint64    `json:"seq"`
	Time         time.Time `json:"time"`
	MessageID    string    `json:"message_id"`
	Index        int       `json:"rcpt_index"`
	Recipient    string    `json:"recipient"`
	Account      string    `json:"account,omitempty"`
	Ref          string    `json:"ref,omitempty"`
	Status       Status    `json:"status"`
	Host         string    `json:"host,omitempty"`
	Code         int       `json:"code,omitempty"`
	EnhancedCode string    `json:"enhanced_code,omitempty"`
	Text         string    `json:"text,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	// Source says what produced the event: "smtp" (submission), "relay"
	// (delivery attempt), "dsn", "feedback", "admin", "expiry".
	Source string `json:"source,omitempty"`
	// Note carries extra information that does not change the status (a delay DSN).
	Note string `json:"note,omitempty"`
	// Attempt is the delivery attempt number for relay events.
	Attempt int `json:"attempt,omitempty"`
	// Delay is the time from acceptance to this event.
	Delay Duration `json:"delay,omitempty"`
	// Addr is the ip:port of the MX host of a relay attempt.
	Addr string `json:"addr,omitempty"`
	// TLS is the protocol version of the attempt's session ("TLS 1.3"), or
	// "plain" when it was not encrypted; "" when no session was made.
	TLS string `json:"tls,omitempty"`
	// TLSCipher is the cipher suite of an encrypted session.
	TLSCipher string `json:"tls_cipher,omitempty"`
	// Duration is how long the delivery attempt took.
	Duration Duration `json:"duration,omitempty"`
	// Type names an event that is not a status change: "delayed" (the
	// recipient is still not delivered after relay.delay_warning; its
	// status stays deferred). "" for status changes and notes.
	Type string `json:"type,omitempty"`
}

// EventDelayed is the Type of the one event a recipient gets when it is
// still not delivered after the delay warning time.
const EventDelayed = "delayed"

// JSON promise: the JSON objects of Message, Recipient, Event and
// SummaryRow (and the CLI's -json output built from them) only ever gain
// fields; a field is never renamed, removed or given another meaning.

// Duration is a time.Duration that reads and writes as seconds in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as fractional seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strings.TrimRight(strings.TrimRight(
		strconv.FormatFloat(time.Duration(d).Seconds(), 'f', 3, 64), "0"), ".")), nil
}

// UnmarshalJSON reads fractional seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

var idEncoding = base32.HexEncoding.WithPadding(base32.NoPadding)

// CoreIDLen is the length of a single-node message id, and of the part of a
// node's message id after "<node>-".
const CoreIDLen = 16

// MaxIDLen is the longest message id: a node id of vocab.MaxNodeIDLen
// characters, "-" and CoreIDLen characters.
const MaxIDLen = vocab.MaxNodeIDLen + 1 + CoreIDLen

// NewID returns a new message id: 16 lower-case base32hex characters made of
// 48 bits of milliseconds since the epoch and 32 random bits, so that ids sort
// by time of acceptance and fit a lower-case-only VERP local part.
func NewID(now time.Time) string {
	var b [10]byte
	ms := uint64(now.UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// NewNodeID returns a new message id of node: "<node>-" followed by an id as
// NewID makes, so that the id names the node that owns the message and the
// ids of one node sort by time of acceptance. node "" gives NewID's id. It
// panics if node is neither "" nor valid (see vocab.ParseNodeID): the node id
// is validated with the configuration, so an invalid one here is a
// programming error, and an id ValidID refuses could never be queued.
//
// The single-node ids of a spool that joined a cluster begin with "0" (for
// the next few centuries) and so sort before every node id, which begins
// with a letter: acceptance order holds across the change too.
func NewNodeID(node vocab.NodeID, now time.Time) string {
	if node == "" {
		return NewID(now)
	}
	if !node.Valid() {
		panic(fmt.Sprintf("queue: NewNodeID: invalid node id %q", node))
	}
	return string(node) + "-" + NewID(now)
}

// ValidID reports whether s has a form NewNodeID produces: CoreIDLen
// characters of lower-case base32hex, optionally preceded by a valid node id
// and "-".
func ValidID(s string) bool {
	node, core, clustered := strings.Cut(s, "-")
	if !clustered {
		core = s
	} else if !vocab.NodeID(node).Valid() {
		return false
	}
	if len(core) != CoreIDLen {
		return false
	}
	for i := 0; i < len(core); i++ {
		c := core[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'v') {
			return false
		}
	}
	return true
}

// IDNode returns the node that owns message id, or "" for a single-node id
// (and for a string that is not a valid id).
func IDNode(id string) vocab.NodeID {
	if !ValidID(id) {
		return ""
	}
	node, _, _ := strings.Cut(id, "-")
	if node == id {
		return ""
	}
	return vocab.NodeID(node)
}
