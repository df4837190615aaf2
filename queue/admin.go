package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Retry makes every pending recipient of message id due now. It returns how
// many recipients were rescheduled.
func (s *Store) Retry(ctx context.Context, id string) (int, error) {
	n := 0
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		n = 0
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		now := s.now()
		for _, r := range m.Recipients {
			if r.Status.Pending() {
				if err := s.setStatus(tx, st, m, r, r.Status, now); err != nil {
					return err
				}
				n++
			}
		}
		return putMessage(tx, m)
	})
	return n, err
}

// Delete removes message id, its body and its pending deliveries. Its past
// events stay in the event log until purged.
func (s *Store) Delete(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		return s.deleteMessage(tx, st, m)
	})
}

func (s *Store) deleteMessage(tx *bolt.Tx, st *txState, m *Message) error {
	for _, r := range m.Recipients {
		if r.Status.Pending() && !r.NextAttempt.IsZero() {
			if err := tx.Bucket(bucketDue).Delete(dueKey(r.NextAttempt, m.ID, r.Index)); err != nil {
				return err
			}
		}
		st.count(r.Status, -1)
		if err := tx.Bucket(bucketRcpts).Delete(indexKey(lowerASCII(r.Address), m.ID)); err != nil {
			return err
		}
	}
	if m.Ref != "" {
		if err := tx.Bucket(bucketRefs).Delete(indexKey(m.Ref, m.ID)); err != nil {
			return err
		}
	}
	if !m.Finished.IsZero() {
		if err := tx.Bucket(bucketFinished).Delete(finishedKey(m.Finished, m.ID)); err != nil {
			return err
		}
	}
	if v := tx.Bucket(bucketBodies).Get([]byte(m.ID)); string(v) == string(fileMarker) {
		st.removeFiles = append(st.removeFiles, s.bodyPath(m.ID))
	}
	if err := tx.Bucket(bucketBodies).Delete([]byte(m.ID)); err != nil {
		return err
	}
	return tx.Bucket(bucketMessages).Delete([]byte(m.ID))
}

// ErrNotApplicable is returned by Apply when the event cannot change the
// recipient (for instance a bounce for a recipient that was suppressed).
var ErrNotApplicable = errors.New("queue: event does not apply to this recipient")

// Apply records an event that comes from outside a delivery attempt, such as
// a DSN or a complaint received later, on recipient idx of message id.
// ev.Status StatusBounced moves a queued, deferred or sent recipient to
// bounced; an empty ev.Status records a note (a delay notice, a delivered
// DSN) without changing the status. It returns the updated recipient.
func (s *Store) Apply(ctx context.Context, id string, idx int, ev Event) (*Recipient, error) {
	var out *Recipient
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		if idx < 0 || idx >= len(m.Recipients) {
			return fmt.Errorf("%w: message %s has no recipient %d", ErrNotFound, id, idx)
		}
		r := m.Recipients[idx]
		switch ev.Status {
		case "":
			ev.Status = r.Status
		case StatusBounced:
			if r.Status == StatusSuppressed || r.Status == StatusBounced {
				return fmt.Errorf("%w: recipient is already %s", ErrNotApplicable, r.Status)
			}
			r.Reason = ev.Reason
			if err := s.setStatus(tx, st, m, r, StatusBounced, time.Time{}); err != nil {
				return err
			}
		default:
			return fmt.Errorf("queue: Apply cannot set status %q", ev.Status)
		}
		if ev.Time.IsZero() {
			ev.Time = s.now()
		}
		if err := s.appendEvent(tx, st, m, r, ev); err != nil {
			return err
		}
		out = r
		return putMessage(tx, m)
	})
	return out, err
}

// ListOptions selects a page of messages, newest first.
type ListOptions struct {
	// Status keeps only messages with at least one recipient in it ("" = all).
	Status Status
	// Before is the cursor: only messages with an id below it ("" = from the newest).
	Before string
	// Limit is the page size (default 50, at most 1000).
	Limit int
}

// List returns a page of messages, newest first, and the cursor of the next
// page ("" when there is none).
func (s *Store) List(opts ListOptions) ([]*Message, string, error) {
	if opts.Limit <= 0 {
		opts.Limit = 50
	}
	opts.Limit = min(opts.Limit, 1000)
	var out []*Message
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMessages).Cursor()
		var k, v []byte
		if opts.Before == "" {
			k, v = c.Last()
		} else if sk, _ := c.Seek([]byte(opts.Before)); sk == nil {
			k, v = c.Last() // every id is below the cursor
		} else {
			k, v = c.Prev()
		}
		for ; k != nil; k, v = c.Prev() {
			if opts.Status != "" && !bytes.Contains(v, []byte(`"status":"`+string(opts.Status)+`"`)) {
				continue
			}
			m := new(Message)
			if err := json.Unmarshal(v, m); err != nil {
				return fmt.Errorf("queue: decode message %s: %w", k, err)
			}
			if opts.Status != "" && !hasStatus(m, opts.Status) {
				continue
			}
			if len(out) == opts.Limit { // a match beyond the page: there is a next one
				next = out[len(out)-1].ID
				return nil
			}
			out = append(out, m)
		}
		return nil
	})
	return out, next, err
}

func hasStatus(m *Message, st Status) bool {
	for _, r := range m.Recipients {
		if r.Status == st {
			return true
		}
	}
	return false
}

// ByRef returns the ids of messages submitted with X-Hermod-Ref ref, oldest first.
func (s *Store) ByRef(ref string) ([]string, error) { return s.scanIndex(bucketRefs, ref) }

// ByRecipient returns the ids of messages sent to address (case-insensitive), oldest first.
func (s *Store) ByRecipient(address string) ([]string, error) {
	return s.scanIndex(bucketRcpts, lowerASCII(address))
}

func (s *Store) scanIndex(bucket []byte, prefix string) ([]string, error) {
	var ids []string
	p := indexKey(prefix, "")
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p) && len(ids) < 1000; k, _ = c.Next() {
			ids = append(ids, string(k[len(p):]))
		}
		return nil
	})
	return ids, err
}

// Events returns up to limit events with a sequence number above after, in order.
func (s *Store) Events(after uint64, limit int) ([]Event, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		var start [8]byte
		binary.BigEndian.PutUint64(start[:], after+1)
		for k, v := c.Seek(start[:]); k != nil && len(out) < limit; k, v = c.Next() {
			var ev Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("queue: decode event %x: %w", k, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// LastEventSeq returns the sequence number of the newest event (0 if none).
func (s *Store) LastEventSeq() (uint64, error) {
	var seq uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketEvents).Cursor().Last(); k != nil {
			seq = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return seq, err
}

// Purge deletes messages that finished before cutoff and events older than
// it, at most limit messages per call; it returns how many messages it removed.
func (s *Store) Purge(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	n := 0
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		n = 0
		c := tx.Bucket(bucketFinished).Cursor()
		var keys [][]byte
		for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
			if len(k) < 8 || int64(binary.BigEndian.Uint64(k)) >= cutoff.UnixNano() {
				break
			}
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			id := string(k[8:])
			m, err := getMessage(tx, id)
			if err == nil {
				if err := s.deleteMessage(tx, st, m); err != nil {
					return err
				}
				n++
			}
			if err := tx.Bucket(bucketFinished).Delete(k); err != nil {
				return err
			}
		}
		ec := tx.Bucket(bucketEvents).Cursor()
		var old [][]byte
		for k, v := ec.First(); k != nil && len(old) < limit*4; k, v = ec.Next() {
			var ev struct {
				Time time.Time `json:"time"`
			}
			if json.Unmarshal(v, &ev) != nil || !ev.Time.Before(cutoff) {
				break
			}
			old = append(old, append([]byte(nil), k...))
		}
		for _, k := range old {
			if err := tx.Bucket(bucketEvents).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// RunPurge purges every interval until ctx ends, keeping finished messages for retention.
func (s *Store) RunPurge(ctx context.Context, retention, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			n, err := s.Purge(ctx, s.now().Add(-retention), 500)
			if err != nil {
				s.log.Error("queue: purge", "err", err)
				break
			}
			if n > 0 {
				s.log.Info("queue: purged finished messages", "count", n, "retention", retention)
			}
			if n < 500 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
