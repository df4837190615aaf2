package queue

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The spool's buckets (schema 1). One fact lives in one place: the envelope
// in msg, each recipient's delivery state in its own small record, each
// event once in the log; everything else is an index of keys.
var (
	bucketMeta      = []byte("meta")       // "schema" → "1"; "probe" → time of the last write probe
	bucketMsgs      = []byte("msg")        // id → msgRecord JSON (written at enqueue, again only when it finishes)
	bucketRcpts     = []byte("recipients") // id + index(2) → rcptRecord JSON
	bucketBodies    = []byte("bodies")     // id → message bytes (bodies kept in the store; large ones are files)
	bucketDue       = []byte("due")        // time(8) + id + index(2) → destination
	bucketDueDest   = []byte("duedest")    // destination + 0 + time(8) + id + index(2) → nil
	bucketFinished  = []byte("finished")   // time(8) + id → nil, for retention purge
	bucketEvents    = []byte("events")     // seq(8) → Event JSON, append-only
	bucketMsgEvents = []byte("msgevents")  // id + seq(8) → nil: the events of one message
	bucketRefs      = []byte("refs")       // ref + 0 + id → nil
	bucketAddrs     = []byte("rcpts")      // lower(address) + 0 + id → nil
	bucketByStatus  = []byte("bystatus")   // status + 0 + id + index(2) → nil
	bucketCounts    = []byte("counts")     // status → uint64 recipients
)

// spoolBuckets are created at open.
var spoolBuckets = [][]byte{bucketMeta, bucketMsgs, bucketRcpts, bucketBodies, bucketDue, bucketDueDest, bucketFinished,
	bucketEvents, bucketMsgEvents, bucketRefs, bucketAddrs, bucketByStatus, bucketCounts}

// schemaVersion is the layout this code writes; v0 stores (one JSON blob per
// message) are migrated at open (migrate.go).
const schemaVersion = "1"

// msgRecord is the stored envelope of a message. It is written when the
// message is accepted and rewritten only when its last recipient finishes.
type msgRecord struct {
	ID              string    `json:"id"`
	Account         string    `json:"account,omitempty"`
	User            string    `json:"user,omitempty"`
	Ref             string    `json:"ref,omitempty"`
	Kind            string    `json:"kind,omitempty"`
	MailFrom        string    `json:"mail_from"`
	HeaderFrom      string    `json:"header_from,omitempty"`
	From            string    `json:"from,omitempty"`
	MessageIDHeader string    `json:"message_id_header,omitempty"`
	SigningDomain   string    `json:"signing_domain,omitempty"`
	Received        time.Time `json:"received"`
	Size            int       `json:"size"`
	Rcpts           int       `json:"rcpts"`
	// BodyFile says the body is the file BodyDir/<id>, not a value in bodies.
	BodyFile bool `json:"body_file,omitempty"`
	// BodyCRC is the CRC-32C (Castagnoli) of the body as accepted; Size is
	// its length. Both are checked before every delivery.
	BodyCRC  uint32    `json:"body_crc"`
	Finished time.Time `json:"finished,omitempty"`
}

// envelope returns the Message view of the record, without recipients.
func (mr *msgRecord) envelope() *Message {
	return &Message{ID: mr.ID, Account: mr.Account, User: mr.User, Ref: mr.Ref, Kind: mr.Kind, MailFrom: mr.MailFrom,
		HeaderFrom: mr.HeaderFrom, From: mr.From, MessageIDHeader: mr.MessageIDHeader, SigningDomain: mr.SigningDomain,
		Received: mr.Received, Size: mr.Size, Finished: mr.Finished}
}

// newMsgRecord is the record of an accepted message's envelope.
func newMsgRecord(m *Message) msgRecord {
	return msgRecord{ID: m.ID, Account: m.Account, User: m.User, Ref: m.Ref, Kind: m.Kind, MailFrom: m.MailFrom,
		HeaderFrom: m.HeaderFrom, From: m.From, MessageIDHeader: m.MessageIDHeader, SigningDomain: m.SigningDomain,
		Received: m.Received, Size: m.Size, Rcpts: len(m.Recipients), Finished: m.Finished}
}

// rcptRecord is the delivery state of one recipient.
type rcptRecord struct {
	Address      string    `json:"address"`
	EnvelopeFrom string    `json:"envelope_from"`
	Status       Status    `json:"status"`
	Reason       string    `json:"reason,omitempty"`
	Attempts     int       `json:"attempts"`
	NextAttempt  time.Time `json:"next_attempt,omitempty"`
	// LastSeq is the sequence number of the recipient's newest event.
	LastSeq uint64 `json:"last_seq"`
	// Delayed says the recipient got its one "delayed" event.
	Delayed bool `json:"delayed,omitempty"`
	// HeldFrom is the pending status a held recipient returns to when released.
	HeldFrom Status `json:"held_from,omitempty"`
}

// Destination is what the scheduler limits connections by: the recipient's
// domain, lower case.
func Destination(address string) string {
	at := strings.LastIndexByte(address, '@')
	return lowerASCII(address[at+1:])
}

func rcptKey(id string, idx int) []byte {
	k := make([]byte, len(id)+2)
	copy(k, id)
	binary.BigEndian.PutUint16(k[len(id):], uint16(idx))
	return k
}

func dueKey(t time.Time, id string, idx int) []byte {
	k := make([]byte, 8+len(id)+2)
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	copy(k[8:], id)
	binary.BigEndian.PutUint16(k[8+len(id):], uint16(idx))
	return k
}

// putDue and deleteDue keep the time index and the per-destination index
// of due work in step.
func putDue(tx *bolt.Tx, t time.Time, id string, idx int, address string) error {
	dest := Destination(address)
	k := dueKey(t, id, idx)
	if err := tx.Bucket(bucketDue).Put(k, []byte(dest)); err != nil {
		return err
	}
	return tx.Bucket(bucketDueDest).Put(destDueKey(dest, k), nil)
}

func deleteDue(tx *bolt.Tx, t time.Time, id string, idx int, address string) error {
	k := dueKey(t, id, idx)
	if err := tx.Bucket(bucketDue).Delete(k); err != nil {
		return err
	}
	return tx.Bucket(bucketDueDest).Delete(destDueKey(Destination(address), k))
}

func destDueKey(dest string, due []byte) []byte {
	k := make([]byte, 0, len(dest)+1+len(due))
	k = append(k, dest...)
	k = append(k, 0)
	return append(k, due...)
}

// dueItemKey is the scheduler's map key of a time-index key (no allocation).
func dueItemKey(k []byte) (itemKey, bool) {
	var ik itemKey
	if !validDueKeyLen(len(k)) {
		return ik, false
	}
	ik[0] = byte(len(k) - 8)
	copy(ik[1:], k[8:])
	return ik, true
}

// validDueKeyLen reports whether n is the length of a time-index key: 8
// bytes of time, an id (of a single node or of a named node) and 2 bytes of
// recipient index.
func validDueKeyLen(n int) bool {
	n -= 8 + 2
	return n == CoreIDLen || n >= 1+1+CoreIDLen && n <= MaxIDLen
}

func parseDueKey(k []byte) (t time.Time, id string, idx int, ok bool) {
	if !validDueKeyLen(len(k)) {
		return time.Time{}, "", 0, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), string(k[8 : len(k)-2]), int(binary.BigEndian.Uint16(k[len(k)-2:])), true
}

// parseStatusKey returns the id and recipient index of a status-index key k
// that starts with prefix (indexKey(status, "")).
func parseStatusKey(prefix, k []byte) (id string, idx int, ok bool) {
	if len(k) < len(prefix)+2 {
		return "", 0, false
	}
	id = string(k[len(prefix) : len(k)-2])
	if !ValidID(id) {
		return "", 0, false
	}
	return id, int(binary.BigEndian.Uint16(k[len(k)-2:])), true
}

func timeKey(t time.Time, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	copy(k[8:], id)
	return k
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

func msgEventKey(id string, seq uint64) []byte {
	k := make([]byte, len(id)+8)
	copy(k, id)
	binary.BigEndian.PutUint64(k[len(id):], seq)
	return k
}

func indexKey(prefix, id string) []byte {
	k := make([]byte, 0, len(prefix)+1+len(id))
	k = append(k, prefix...)
	k = append(k, 0)
	return append(k, id...)
}

func statusKey(st Status, id string, idx int) []byte {
	return append(indexKey(string(st), id), byte(idx>>8), byte(idx))
}

func getMsg(tx *bolt.Tx, id string) (*msgRecord, error) {
	v := tx.Bucket(bucketMsgs).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	m := new(msgRecord)
	if err := json.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("queue: decode message %s: %w", id, err)
	}
	return m, nil
}

func putMsg(tx *bolt.Tx, m *msgRecord) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("queue: encode message %s: %w", m.ID, err)
	}
	return tx.Bucket(bucketMsgs).Put([]byte(m.ID), v)
}

func getRcpt(tx *bolt.Tx, id string, idx int) (*rcptRecord, error) {
	v := tx.Bucket(bucketRcpts).Get(rcptKey(id, idx))
	if v == nil {
		return nil, fmt.Errorf("%w: message %s has no recipient %d", ErrNotFound, id, idx)
	}
	r := new(rcptRecord)
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("queue: decode recipient %d of %s: %w", idx, id, err)
	}
	return r, nil
}

func putRcpt(tx *bolt.Tx, id string, idx int, r *rcptRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("queue: encode recipient %d of %s: %w", idx, id, err)
	}
	return tx.Bucket(bucketRcpts).Put(rcptKey(id, idx), v)
}

// forEachRcpt calls fn with every recipient record of message id, in index order.
func forEachRcpt(tx *bolt.Tx, id string, fn func(idx int, r *rcptRecord) error) error {
	c := tx.Bucket(bucketRcpts).Cursor()
	p := []byte(id)
	for k, v := c.Seek(p); k != nil && len(k) == len(p)+2 && string(k[:len(p)]) == id; k, v = c.Next() {
		r := new(rcptRecord)
		if err := json.Unmarshal(v, r); err != nil {
			return fmt.Errorf("queue: decode recipient of %s: %w", id, err)
		}
		if err := fn(int(binary.BigEndian.Uint16(k[len(p):])), r); err != nil {
			return err
		}
	}
	return nil
}

func getEvent(tx *bolt.Tx, seq uint64) (Event, error) {
	var ev Event
	v := tx.Bucket(bucketEvents).Get(seqKey(seq))
	if v == nil {
		return ev, fmt.Errorf("%w: event %d", ErrNotFound, seq)
	}
	if err := json.Unmarshal(v, &ev); err != nil {
		return ev, fmt.Errorf("queue: decode event %d: %w", seq, err)
	}
	return ev, nil
}

// view assembles the Message the API and CLI show from the records.
func view(tx *bolt.Tx, id string) (*Message, error) {
	mr, err := getMsg(tx, id)
	if err != nil {
		return nil, err
	}
	m := mr.envelope()
	err = forEachRcpt(tx, id, func(idx int, r *rcptRecord) error {
		m.Recipients = append(m.Recipients, &Recipient{Index: idx, Address: r.Address, EnvelopeFrom: r.EnvelopeFrom,
			Status: r.Status, Reason: r.Reason, Attempts: r.Attempts, NextAttempt: r.NextAttempt, Events: []Event{}})
		return nil
	})
	if err != nil {
		return nil, err
	}
	c := tx.Bucket(bucketMsgEvents).Cursor()
	p := []byte(id)
	for k, _ := c.Seek(p); k != nil && len(k) == len(p)+8 && string(k[:len(p)]) == id; k, _ = c.Next() {
		ev, err := getEvent(tx, binary.BigEndian.Uint64(k[len(p):]))
		if err != nil {
			continue // purged from the log: the recipient's record still has its state
		}
		if ev.Index >= 0 && ev.Index < len(m.Recipients) {
			r := m.Recipients[ev.Index]
			r.Events = append(r.Events, ev)
		}
	}
	for _, r := range m.Recipients {
		if n := len(r.Events); n > 0 {
			last := r.Events[n-1]
			r.Last = &last
		}
	}
	return m, nil
}
