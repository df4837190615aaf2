package queue

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// maxBatch bounds how many writes share one transaction.
const maxBatch = 512

type commitReq struct {
	fn   func(tx *bolt.Tx, st *txState) error
	done chan error
	st   txState
}

// update runs fn in a write transaction shared with whatever other writes are
// waiting (group commit) and returns once that transaction is durable. While
// one transaction commits, new requests queue up and go together into the
// next one, so under load many submissions share one fsync and under no load
// a write commits at once, with no batching delay.
func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx, st *txState) error) error {
	req := &commitReq{fn: fn, done: make(chan error, 1)}
	select {
	case s.commits <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return fmt.Errorf("%w: store is closing", ErrStorage)
	}
	// Once handed over, the write happens whether or not the caller still
	// waits: never report failure for a write that may have committed.
	return <-req.done
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
			// Drain what was handed over before Close.
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
// a failure of the transaction), so that the batch can be retried without it.
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
		for _, r := range batch {
			s.runBatch([]*commitReq{r})
		}
		return
	}
	if fe != nil {
		err = fe.err
	} else if err != nil {
		err = storageError(err)
	}
	for _, r := range batch {
		r.done <- err
	}
}

func storageError(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EIO) ||
		errors.Is(err, syscall.EDQUOT) || errors.Is(err, bolterrors.ErrDatabaseReadOnly) || errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return fmt.Errorf("%w: commit: %w", ErrStorage, err)
}

func (s *Store) commitBatch(batch []*commitReq) error {
	total := txState{store: s}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range batch {
			r.st = txState{store: s}
			if err := r.fn(tx, &r.st); err != nil {
				return &fnError{req: r, err: err}
			}
			for k, v := range r.st.counts {
				total.count(k, v)
			}
			total.events += r.st.events
			total.due = total.due || r.st.due
			total.removeFiles = append(total.removeFiles, r.st.removeFiles...)
		}
		s.mu.Lock()
		cur := s.counts
		s.mu.Unlock()
		return total.persistCounts(tx, cur)
	})
	if err != nil {
		return err
	}
	s.commitCount.Add(1)
	s.commitItems.Add(uint64(len(batch)))
	for _, f := range total.removeFiles {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("queue: remove body file", "file", f, "err", err)
		}
	}
	s.mu.Lock()
	for k, v := range total.counts {
		s.counts[k] += v
	}
	if total.events > 0 {
		close(s.eventsCh)
		s.eventsCh = make(chan struct{})
	}
	obs := s.batchObs
	s.mu.Unlock()
	if obs != nil {
		obs(len(batch))
	}
	if total.due {
		s.wake()
	}
	return nil
}
