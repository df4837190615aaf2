package queue

import (
	"context"
	"sync"
	"time"
)

// Consumer is something that must act on every event of the log exactly
// once, after it is committed: the suppression list, the webhook outbox.
// Consume must store its cursor (the Seq of the last event it was given)
// atomically with its own effects, and Cursor must return it, so that a
// crash between the two cannot apply an event twice or skip one.
type Consumer interface {
	Cursor() (uint64, error)
	Consume(events []Event) error
}

// Follower feeds a Consumer the event log in order. It is how work that
// follows a status change is derived from what was committed, never from a
// transaction that might roll back or run again.
type Follower struct {
	store *Store
	name  string
	c     Consumer

	mu      sync.Mutex
	applied uint64
	changed chan struct{} // closed and replaced when applied grows

	// offered carries committed batches straight from the committer, so
	// that the log is read back only when the follower fell behind.
	offered chan []Event
}

// NewFollower returns a follower of s for c; name labels its log lines. It
// registers with s so that Purge keeps the events c has not consumed.
func NewFollower(s *Store, name string, c Consumer) (*Follower, error) {
	cur, err := c.Cursor()
	if err != nil {
		return nil, err
	}
	if m := s.MigratedSeq(); cur < m {
		cur = m // v0 applied these inside its own transactions
	}
	f := &Follower{store: s, name: name, c: c, applied: cur, changed: make(chan struct{}), offered: make(chan []Event, 64)}
	s.KeepEventsAfter(f.Applied)
	s.mu.Lock()
	s.offers = append(s.offers, f.offer)
	s.mu.Unlock()
	return f, nil
}

// offer hands a committed batch to the follower without blocking the
// committer; a batch that does not fit is read from the log later.
func (f *Follower) offer(evs []Event) {
	select {
	case f.offered <- evs:
	default:
	}
}

// Applied returns the sequence number of the last event consumed.
func (f *Follower) Applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// WaitFor returns once the event seq has been consumed, or ctx ends.
func (f *Follower) WaitFor(ctx context.Context, seq uint64) error {
	for {
		f.mu.Lock()
		done, ch := f.applied >= seq, f.changed
		f.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Run consumes events until ctx ends. A failing Consume is tried again with
// a growing delay; events are never skipped.
func (f *Follower) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	var pending []Event // an offered batch not yet consumed
	for {
		applied := f.Applied()
		var evs []Event
		var err error
		switch {
		case len(pending) > 0 && pending[0].Seq == applied+1:
			evs = pending // exactly the next events: no need to read them back
		case len(pending) > 0 && pending[len(pending)-1].Seq <= applied:
			pending = nil
			continue
		default:
			pending = nil
			evs, err = f.store.Events(applied, 500)
		}
		if err == nil && len(evs) > 0 {
			if err = f.c.Consume(evs); err == nil {
				f.mu.Lock()
				f.applied = evs[len(evs)-1].Seq
				close(f.changed)
				f.changed = make(chan struct{})
				f.mu.Unlock()
				pending = nil
				backoff = 50 * time.Millisecond
				continue
			}
		}
		if err != nil {
			f.store.log.Error("queue: "+f.name+": cannot consume events yet", "after", applied, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case pending = <-f.offered:
		case <-time.After(time.Second):
		}
	}
}
