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

// Get returns the message with the given id: its envelope, every recipient
// and every event still in the log.
func (s *Store) Get(id string) (*Message, error) {
	var m *Message
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		m, err = view(tx, id)
		return err
	})
	return m, err
}

// Recipients returns how many recipients message id has, or ErrNotFound.
func (s *Store) Recipients(id string) (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		m, err := getMsg(tx, id)
		if err == nil {
			n = m.Rcpts
		}
		return err
	})
	return n, err
}

// Address returns the stored address of recipient idx of message id.
func (s *Store) Address(id string, idx int) (string, error) {
	var addr string
	err := s.db.View(func(tx *bolt.Tx) error {
		r, err := getRcpt(tx, id, idx)
		if err == nil {
			addr = r.Address
		}
		return err
	})
	return addr, err
}

// Retry makes every pending recipient of message id due now. It returns how
// many recipients were rescheduled.
func (s *Store) Retry(ctx context.Context, id string) (int, error) {
	n := 0
	now := s.now()
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMsg(tx, id)
		if err != nil {
			return err
		}
		count := 0
		type change struct {
			idx int
			r   *rcptRecord
		}
		var pending []change
		if err := forEachRcpt(tx, id, func(idx int, r *rcptRecord) error {
			if r.Status.Pending() {
				pending = append(pending, change{idx, r})
			}
			return nil
		}); err != nil {
			return err
		}
		for _, c := range pending {
			if _, err := s.setStatus(tx, st, m, c.idx, c.r, c.r.Status, now); err != nil {
				return err
			}
			if err := putRcpt(tx, id, c.idx, c.r); err != nil {
				return err
			}
			count++
		}
		n = count
		return nil
	})
	return n, err
}

// Delete removes message id, its body and its pending deliveries. Its past
// events stay in the event log until purged.
func (s *Store) Delete(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMsg(tx, id)
		if err != nil {
			return err
		}
		return s.deleteMessage(tx, st, m)
	})
}

func (s *Store) deleteMessage(tx *bolt.Tx, st *txState, m *msgRecord) error {
	var keys [][]byte
	err := forEachRcpt(tx, m.ID, func(idx int, r *rcptRecord) error {
		if r.Status.Pending() && !r.NextAttempt.IsZero() {
			if err := deleteDue(tx, r.NextAttempt, m.ID, idx, r.Address); err != nil {
				return err
			}
		}
		st.count(r.Status, -1)
		if err := tx.Bucket(bucketByStatus).Delete(statusKey(r.Status, m.ID, idx)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAddrs).Delete(indexKey(lowerASCII(r.Address), m.ID)); err != nil {
			return err
		}
		keys = append(keys, rcptKey(m.ID, idx))
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Bucket(bucketRcpts).Delete(k); err != nil {
			return err
		}
	}
	if m.Ref != "" {
		if err := tx.Bucket(bucketRefs).Delete(indexKey(m.Ref, m.ID)); err != nil {
			return err
		}
	}
	if !m.Finished.IsZero() {
		if err := tx.Bucket(bucketFinished).Delete(timeKey(m.Finished, m.ID)); err != nil {
			return err
		}
	}
	if m.BodyFile {
		st.removeFiles = append(st.removeFiles, s.bodyPath(m.ID))
	} else if err := tx.Bucket(bucketBodies).Delete([]byte(m.ID)); err != nil {
		return err
	}
	var evKeys [][]byte
	c := tx.Bucket(bucketMsgEvents).Cursor()
	p := []byte(m.ID)
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		evKeys = append(evKeys, bytes.Clone(k))
	}
	for _, k := range evKeys {
		if err := tx.Bucket(bucketMsgEvents).Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMsgs).Delete([]byte(m.ID))
}

// ErrNotApplicable is returned by Apply when the event cannot change the
// recipient (for instance a bounce for a recipient that was suppressed).
var ErrNotApplicable = errors.New("queue: event does not apply to this recipient")

// Apply records an event that comes from outside a delivery attempt, such as
// a DSN or a complaint received later, on recipient idx of message id.
// ev.Status StatusBounced moves a queued, deferred or sent recipient to
// bounced; an empty ev.Status records a note (a delay notice, a delivered
// DSN) without changing the status. It returns the recorded event.
func (s *Store) Apply(ctx context.Context, id string, idx int, ev Event) (Event, error) {
	var out Event
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMsg(tx, id)
		if err != nil {
			return err
		}
		r, err := getRcpt(tx, id, idx)
		if err != nil {
			return err
		}
		e := ev // the transaction's own copy
		msgChanged := false
		switch e.Status {
		case "":
			e.Status = r.Status
		case StatusBounced:
			if r.Status == StatusSuppressed || r.Status == StatusBounced {
				return fmt.Errorf("%w: recipient is already %s", ErrNotApplicable, r.Status)
			}
			r.Reason = e.Reason
			if msgChanged, err = s.setStatus(tx, st, m, idx, r, StatusBounced, time.Time{}); err != nil {
				return err
			}
		default:
			return fmt.Errorf("queue: Apply cannot set status %q", e.Status)
		}
		if e, err = s.appendEvent(tx, st, m, idx, r, e); err != nil {
			return err
		}
		if err := putRcpt(tx, id, idx, r); err != nil {
			return err
		}
		if msgChanged {
			if err := putMsg(tx, m); err != nil {
				return err
			}
		}
		out = e
		return nil
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
// page ("" when there is none). With a status it walks the status index, so
// its cost is the page, not the queue.
func (s *Store) List(opts ListOptions) ([]*Message, string, error) {
	if opts.Limit <= 0 {
		opts.Limit = 50
	}
	opts.Limit = min(opts.Limit, 1000)
	var ids []string
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		var c *bolt.Cursor
		var prefix []byte
		if opts.Status != "" {
			c = tx.Bucket(bucketByStatus).Cursor()
			prefix = indexKey(string(opts.Status), "")
		} else {
			c = tx.Bucket(bucketMsgs).Cursor()
		}
		idOf := func(k []byte) string {
			if prefix == nil {
				return string(k)
			}
			id, _, _ := parseStatusKey(prefix, k)
			return id
		}
		var k []byte
		start := append(bytes.Clone(prefix), opts.Before...)
		if opts.Before == "" {
			// The last key of the range: seek past it and step back.
			end := append(bytes.Clone(prefix), 0xff)
			if k, _ = c.Seek(end); k == nil {
				k, _ = c.Last()
			} else {
				k, _ = c.Prev()
			}
		} else if k, _ = c.Seek(start); k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		last := ""
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
			id := idOf(k)
			if id == "" || id == last || (opts.Before != "" && id >= opts.Before) {
				continue
			}
			last = id
			if len(ids) == opts.Limit { // a match beyond the page: there is a next one
				next = ids[len(ids)-1]
				return nil
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	// Each message is read in its own short transaction: a long page never
	// holds one read transaction open (which would stall the file's growth).
	out := make([]*Message, 0, len(ids))
	for _, id := range ids {
		m, err := s.Get(id)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, "", err
		}
		out = append(out, m)
	}
	return out, next, nil
}

// ByRef returns the ids of messages submitted with X-Hermod-Ref ref, oldest first.
func (s *Store) ByRef(ref string) ([]string, error) { return s.scanIndex(bucketRefs, ref) }

// ByRecipient returns the ids of messages sent to address (case-insensitive), oldest first.
func (s *Store) ByRecipient(address string) ([]string, error) {
	return s.scanIndex(bucketAddrs, lowerASCII(address))
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
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
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
		seq = tx.Bucket(bucketEvents).Sequence()
		return nil
	})
	return seq, err
}

// Purge deletes messages that finished before cutoff and events older than
// it, at most limit messages per call; it returns how many messages it
// removed. Events that a consumer has not read yet (KeepEventsAfter) are
// kept whatever their age.
func (s *Store) Purge(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	n := 0
	floor, limited := s.eventFloor()
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		c := tx.Bucket(bucketFinished).Cursor()
		var keys [][]byte
		for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
			if len(k) < 8 || int64(binary.BigEndian.Uint64(k)) >= cutoff.UnixNano() {
				break
			}
			keys = append(keys, bytes.Clone(k))
		}
		removed := 0
		for _, k := range keys {
			m, err := getMsg(tx, string(k[8:]))
			if err == nil {
				if err := s.deleteMessage(tx, st, m); err != nil {
					return err
				}
				removed++
			} else if err := tx.Bucket(bucketFinished).Delete(k); err != nil {
				return err
			}
		}
		ec := tx.Bucket(bucketEvents).Cursor()
		var old [][]byte
		for k, v := ec.First(); k != nil && len(old) < limit*4; k, v = ec.Next() {
			if limited && binary.BigEndian.Uint64(k) > floor {
				break
			}
			var ev struct {
				Time time.Time `json:"time"`
			}
			if json.Unmarshal(v, &ev) != nil || !ev.Time.Before(cutoff) {
				break
			}
			old = append(old, bytes.Clone(k))
		}
		for _, k := range old {
			if err := tx.Bucket(bucketEvents).Delete(k); err != nil {
				return err
			}
		}
		n = removed
		return nil
	})
	return n, err
}

// KeepEventsAfter registers a consumer of the event log: Purge keeps every
// event whose sequence number is above what f returns (the last one the
// consumer has processed), so that a consumer that is behind — a webhook
// receiver down for days — loses nothing.
func (s *Store) KeepEventsAfter(f func() uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.floors = append(s.floors, f)
}

// eventFloor is the highest sequence number Purge may delete; limited is
// false when no consumer is registered.
func (s *Store) eventFloor() (floor uint64, limited bool) {
	s.mu.Lock()
	floors := append([]func() uint64(nil), s.floors...)
	s.mu.Unlock()
	for i, f := range floors {
		if v := f(); i == 0 || v < floor {
			floor = v
		}
	}
	return floor, len(floors) > 0
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
