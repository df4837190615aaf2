package queue

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// maxBatch bounds how many writes share one transaction.
const maxBatch = 512

// A txFunc is one write. It must be pure: it reads what it needs from tx,
// writes, and reports through st, which is fresh for every run. A batch
// that fails is run again (each write alone), so a txFunc that changed
// anything outside tx and st would write something else the second time.
type txFunc func(tx *bolt.Tx, st *txState) error

type commitReq struct {
	fn   txFunc
	done chan error
	st   *txState
}

// txState collects what one write changed, applied to the in-memory view
// and handed to observers once the commit is durable.
type txState struct {
	counts map[Status]int64
	events []Event
	due    bool
	minDue time.Time // the earliest due time written
	// removeFiles are body files to delete once the transaction commits.
	removeFiles []string
}

func (st *txState) count(status Status, delta int64) {
	if st.counts == nil {
		st.counts = map[Status]int64{}
	}
	st.counts[status] += delta
}

// update runs fn in a write transaction shared with whatever other writes are
// waiting (group commit) and returns once that transaction is durable. While
// one transaction commits, new requests queue up and go together into the
// next one, so under load many submissions share one fsync and under no load
// a write commits at once, with no batching delay.
func (s *Store) update(ctx context.Context, fn txFunc) error {
	req := &commitReq{fn: fn, done: make(chan error, 1)}
	select {
	case <-s.stop:
		return fmt.Errorf("%w: store is closed", ErrStorage)
	default:
	}
	select {
	case s.commits <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return fmt.Errorf("%w: store is closed", ErrStorage)
	}
	// Once handed over, the write happens whether or not the caller still
	// waits: never report failure for a write that may have committed. The
	// committer answers every request it takes before it stops; one it never
	// took was never run.
	select {
	case err := <-req.done:
		return err
	case <-s.stopped:
		select {
		case err := <-req.done:
			return err
		default:
			return fmt.Errorf("%w: store is closed", ErrStorage)
		}
	}
}

// committer is the single goroutine that owns write transactions.
func (s *Store) committer() {
	defer close(s.stopped)
	batch := make([]*commitReq, 0, maxBatch)
	for {
		var first *commitReq
		select {
		case first = <-s.commits:
		case <-s.stop:
			// Run what was handed over before Close.
			for {
				select {
				case r := <-s.commits:
					s.runBatch([]*commitReq{r})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-s.commits:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.runBatch(batch)
	}
}

// fnError marks an error returned by a request's own function (as opposed to
// a failure of the transaction), so that the batch can be run again without it.
type fnError struct {
	req *commitReq
	err error
}

func (e *fnError) Error() string { return e.err.Error() }

func (s *Store) runBatch(batch []*commitReq) {
	err := s.commitBatch(batch)
	var fe *fnError
	if errors.As(err, &fe) && len(batch) > 1 {
		// One write failed on its own: run each alone so the others commit.
		// Their functions are pure, so running them again writes the same.
		for _, r := range batch {
			s.runBatch([]*commitReq{r})
		}
		return
	}
	if fe != nil {
		err = fe.err
	} else if err != nil {
		if isNoSpace(err) && s.space != nil {
			s.space.release()
		}
		s.unwritable.Store(true)
		err = storageError(err)
	}
	for _, r := range batch {
		r.done <- err
	}
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func storageError(err error) error {
	if isNoSpace(err) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EIO) ||
		errors.Is(err, bolterrors.ErrDatabaseReadOnly) || errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return fmt.Errorf("%w: commit: %w", ErrStorage, err)
}

func (s *Store) commitBatch(batch []*commitReq) error {
	var counts map[Status]int64
	var events []Event
	var removeFiles []string
	due := false
	var minDue time.Time
	err := s.db.Update(func(tx *bolt.Tx) error {
		counts, events, removeFiles, due, minDue = nil, nil, nil, false, time.Time{}
		for _, r := range batch {
			r.st = &txState{}
			if err := r.fn(tx, r.st); err != nil {
				return &fnError{req: r, err: err}
			}
			for k, v := range r.st.counts {
				if counts == nil {
					counts = map[Status]int64{}
				}
				counts[k] += v
			}
			events = append(events, r.st.events...)
			if r.st.due && (!due || r.st.minDue.Before(minDue)) {
				minDue = r.st.minDue
			}
			due = due || r.st.due
			removeFiles = append(removeFiles, r.st.removeFiles...)
		}
		s.mu.Lock()
		cur := s.counts
		s.mu.Unlock()
		return persistCounts(tx, counts, cur)
	})
	if err != nil {
		return err
	}
	s.unwritable.Store(false)
	s.commitCount.Add(1)
	s.commitItems.Add(uint64(len(batch)))
	s.removeBodyFiles(removeFiles)
	s.mu.Lock()
	for k, v := range counts {
		s.counts[k] += v
	}
	if len(events) > 0 {
		close(s.eventsCh)
		s.eventsCh = make(chan struct{})
	}
	if due && (s.dueHint.IsZero() || minDue.Before(s.dueHint)) {
		s.dueHint = minDue
	}
	obs := s.batchObs
	offers := s.offers
	s.mu.Unlock()
	if obs != nil {
		obs(len(batch))
	}
	if len(events) > 0 {
		if s.opts.OnCommit != nil {
			s.opts.OnCommit(events)
		}
		for _, offer := range offers {
			offer(events)
		}
	}
	if due {
		s.wake()
	}
	return nil
}

// takeDueHint returns (and forgets) the earliest due time written since the
// last call, zero if none: the scheduler reads the time index again from there.
func (s *Store) takeDueHint() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.dueHint
	s.dueHint = time.Time{}
	return t
}

func persistCounts(tx *bolt.Tx, deltas, current map[Status]int64) error {
	b := tx.Bucket(bucketCounts)
	for status, d := range deltas {
		if d == 0 {
			continue
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(max(current[status]+d, 0)))
		if err := b.Put([]byte(status), v[:]); err != nil {
			return err
		}
	}
	return nil
}

// appendEvent stamps ev with the next sequence number and the identity of
// its recipient, stores it once in the log with its message index, and
// remembers it for the observers. It returns the stamped event.
func (s *Store) appendEvent(tx *bolt.Tx, st *txState, m *msgRecord, idx int, r *rcptRecord, ev Event) (Event, error) {
	b := tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return ev, err
	}
	ev.Seq = seq
	ev.MessageID = m.ID
	ev.Index = idx
	ev.Recipient = r.Address
	ev.Account = m.Account
	ev.Ref = m.Ref
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	ev.Delay = Duration(ev.Time.Sub(m.Received))
	v, err := json.Marshal(&ev)
	if err != nil {
		return ev, err
	}
	if err := b.Put(seqKey(seq), v); err != nil {
		return ev, err
	}
	if err := tx.Bucket(bucketMsgEvents).Put(msgEventKey(m.ID, seq), nil); err != nil {
		return ev, err
	}
	r.LastSeq = seq
	st.events = append(st.events, ev)
	return ev, nil
}

// setStatus moves recipient idx (record r, changed in place: it is the
// transaction's own copy) to status, keeping the counters, the status index,
// the due index and the finished index in step. next is the due time for
// pending statuses. It returns whether the message record changed (it
// finished or stopped being finished); the caller writes r and, then, m.
func (s *Store) setStatus(tx *bolt.Tx, st *txState, m *msgRecord, idx int, r *rcptRecord, status Status, next time.Time) (msgChanged bool, err error) {
	return s.moveStatus(tx, st, m, idx, r, status, next, true)
}

// moveStatus is setStatus; checkDone false leaves the finished index alone
// (Enqueue, which writes the recipients one by one, decides it itself).
func (s *Store) moveStatus(tx *bolt.Tx, st *txState, m *msgRecord, idx int, r *rcptRecord, status Status, next time.Time, checkDone bool) (msgChanged bool, err error) {
	if r.Status.Pending() && !r.NextAttempt.IsZero() {
		if err := deleteDue(tx, r.NextAttempt, m.ID, idx, r.Address); err != nil {
			return false, err
		}
	}
	if r.Status != "" {
		st.count(r.Status, -1)
		if err := tx.Bucket(bucketByStatus).Delete(statusKey(r.Status, m.ID, idx)); err != nil {
			return false, err
		}
	}
	st.count(status, +1)
	if err := tx.Bucket(bucketByStatus).Put(statusKey(status, m.ID, idx), nil); err != nil {
		return false, err
	}
	r.Status = status
	r.NextAttempt = time.Time{}
	if status.Pending() {
		r.NextAttempt = next
		if err := putDue(tx, next, m.ID, idx, r.Address); err != nil {
			return false, err
		}
		if !st.due || next.Before(st.minDue) {
			st.minDue = next
		}
		st.due = true
		if !m.Finished.IsZero() {
			if err := tx.Bucket(bucketFinished).Delete(timeKey(m.Finished, m.ID)); err != nil {
				return false, err
			}
			m.Finished = time.Time{}
			return true, nil
		}
		return false, nil
	}
	// Held is not final: holding a recipient never finishes its message.
	if status == StatusHeld || !checkDone || !m.Finished.IsZero() {
		return false, nil
	}
	done := true
	err = forEachRcpt(tx, m.ID, func(i int, other *rcptRecord) error {
		if i != idx && (other.Status == "" || other.Status.Open()) {
			done = false
		}
		return nil
	})
	if err != nil || !done {
		return false, err
	}
	m.Finished = s.now()
	return true, tx.Bucket(bucketFinished).Put(timeKey(m.Finished, m.ID), nil)
}
