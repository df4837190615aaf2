package testnet

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// verpPrefix starts hermod's VERP envelope senders, bounce-md_<queue id>…
// (package verp; not imported, so that verp's own tests may use this
// package).
const verpPrefix = "bounce-md_"

// verpIDLen is the length of the queue id after verpPrefix (after the
// node and its dash for a cluster node's id).
const verpIDLen = 16

// Message is one message a Sink accepted.
type Message struct {
	From string   // envelope sender
	To   []string // accepted recipients, in RCPT order
	Data []byte   // the message as received (nil with DiscardData)
}

// Sink is a go-smtp server on 127.0.0.1 standing in for remote MX hosts.
// It accepts everything unless told otherwise, records what arrived and
// counts connections and deliveries. Its error log is silent.
type Sink struct {
	addr string
	srv  *smtp.Server

	onRcpt  func(to string) *smtp.SMTPError
	onData  func(m Message) *smtp.SMTPError
	discard bool

	mu        sync.Mutex
	msgs      []Message
	next      int           // msgs[:next] were seen by Wait
	arrived   chan struct{} // closed and replaced when a message arrives
	script    map[string][]*smtp.SMTPError
	refuse    map[string]*smtp.SMTPError
	conns     int
	byRcpt    map[string]int // lower-cased recipient → deliveries
	byID      map[string]int // VERP queue id → messages
	byIDRcpt  map[idRcpt]int // VERP queue id and lower-cased recipient → deliveries
	delivered int
}

type idRcpt struct{ id, rcpt string }

// SinkOption configures a Sink at NewSink.
type SinkOption func(*Sink)

// OnRcpt makes f answer each RCPT that no scripted reply (Answer, Refuse)
// answered first; a nil result accepts the recipient. f may run
// concurrently.
func OnRcpt(f func(to string) *smtp.SMTPError) SinkOption {
	return func(s *Sink) { s.onRcpt = f }
}

// OnData makes f run after the data of each message is read and before it
// is recorded; a non-nil result is the reply and the message is neither
// recorded nor counted. f may block (a slow MX) and may run concurrently.
func OnData(f func(m Message) *smtp.SMTPError) SinkOption {
	return func(s *Sink) { s.onData = f }
}

// DiscardData makes the sink keep only its counters: message data is read
// and dropped, no Message is recorded, and Wait and Messages find nothing.
// For load tests.
func DiscardData() SinkOption {
	return func(s *Sink) { s.discard = true }
}

// NewSink starts a sink on 127.0.0.1:0 and closes it when the test ends.
func NewSink(t testing.TB, opts ...SinkOption) *Sink {
	t.Helper()
	s := &Sink{
		arrived:  make(chan struct{}),
		script:   map[string][]*smtp.SMTPError{},
		refuse:   map[string]*smtp.SMTPError{},
		byRcpt:   map[string]int{},
		byID:     map[string]int{},
		byIDRcpt: map[idRcpt]int{},
	}
	for _, o := range opts {
		o(s)
	}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	s.srv.Domain = "sink.test"
	s.srv.ErrorLog = quietLog{}
	s.srv.ReadTimeout = 30 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	go func() { _ = s.srv.Serve(&countingListener{Listener: l, s: s}) }()
	t.Cleanup(func() { _ = s.srv.Close() })
	return s
}

// Close stops the sink and closes its connections at once, before the
// end of the test.
func (s *Sink) Close() { _ = s.srv.Close() }

// Addr returns the sink's host:port.
func (s *Sink) Addr() string { return s.addr }

// Answer scripts the replies to RCPT TO:<rcpt> (exact address): the next
// RCPTs for it get errs in turn (a nil entry accepts), after which it is
// accepted again. It replaces any earlier script for rcpt.
func (s *Sink) Answer(rcpt string, errs ...*smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script[rcpt] = errs
}

// Refuse makes every RCPT TO:<rcpt> (exact address) that Answer did not
// script get err; a nil err accepts rcpt again.
func (s *Sink) Refuse(rcpt string, err *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.refuse, rcpt)
		return
	}
	s.refuse[rcpt] = err
}

// Wait returns the first message for rcpt (an exact accepted recipient)
// among those that arrived since the previous Wait, waiting up to timeout
// for it. Every message it looks at, rcpt's or not, is passed over by the
// next Wait. The error says that no message arrived in time.
func (s *Sink) Wait(rcpt string, timeout time.Duration) (Message, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		for s.next < len(s.msgs) {
			m := s.msgs[s.next]
			s.next++
			if slices.Contains(m.To, rcpt) {
				s.mu.Unlock()
				return m, nil
			}
		}
		arrived := s.arrived
		s.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			return Message{}, fmt.Errorf("no message for %s arrived at the MX", rcpt)
		}
	}
}

// Messages returns the messages accepted so far, oldest first.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// Connections returns how many TCP connections the sink has accepted.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Delivered returns how many messages the sink has accepted.
func (s *Sink) Delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered
}

// Count returns how many messages were accepted for rcpt, compared
// without case.
func (s *Sink) Count(rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byRcpt[strings.ToLower(rcpt)]
}

// CountID returns how many messages were accepted whose envelope sender is
// hermod's VERP address for queue id (bounce-md_<id>…).
func (s *Sink) CountID(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// CountIDRcpt returns how many times rcpt (compared without case) was
// accepted in a message whose VERP envelope sender carries queue id.
func (s *Sink) CountIDRcpt(id, rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byIDRcpt[idRcpt{id, strings.ToLower(rcpt)}]
}

func (s *Sink) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delivered++
	id, verp := strings.CutPrefix(m.From, verpPrefix)
	n := verpIDLen
	if i := strings.IndexByte(id, '-'); i > 0 && i <= 8 {
		n += i + 1 // a cluster node's id: <node>-<16 chars>
	}
	verp = verp && len(id) >= n
	if verp {
		id = id[:n]
		s.byID[id]++
	}
	for _, to := range m.To {
		s.byRcpt[strings.ToLower(to)]++
		if verp {
			s.byIDRcpt[idRcpt{id, strings.ToLower(to)}]++
		}
	}
	if !s.discard {
		s.msgs = append(s.msgs, m)
		close(s.arrived)
		s.arrived = make(chan struct{})
	}
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	s *Sink
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns++
		l.s.mu.Unlock()
	}
	return c, err
}

type sinkSession struct {
	s   *Sink
	msg Message
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.msg = Message{From: from}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.s
	s.mu.Lock()
	l := s.script[to]
	if len(l) > 0 {
		s.script[to] = l[1:]
	}
	refuse := s.refuse[to]
	s.mu.Unlock()
	if len(l) > 0 && l[0] != nil {
		return l[0]
	}
	if len(l) == 0 && refuse != nil {
		return refuse
	}
	if s.onRcpt != nil {
		if err := s.onRcpt(to); err != nil {
			return err
		}
	}
	ss.msg.To = append(ss.msg.To, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	m := ss.msg
	m.To = slices.Clone(m.To)
	if ss.s.discard {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	} else {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		m.Data = b
	}
	if ss.s.onData != nil {
		if err := ss.s.onData(m); err != nil {
			return err
		}
	}
	ss.s.record(m)
	return nil
}

func (ss *sinkSession) Reset()        { ss.msg = Message{} }
func (ss *sinkSession) Logout() error { return nil }

type quietLog struct{}

func (quietLog) Printf(string, ...any) {}
func (quietLog) Println(...any)        {}
