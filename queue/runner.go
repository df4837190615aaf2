package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Delivery is one (message, recipient) handed to a Deliverer.
type Delivery struct {
	Message   *Message
	Recipient *Recipient
	// Body is the complete message as it leaves (headers and body, CRLF).
	Body []byte
}

// Result is the outcome of one delivery attempt.
type Result struct {
	// Status is StatusSent, StatusDeferred, StatusBounced or StatusSuppressed.
	Status       Status
	Host         string
	Code         int
	EnhancedCode string
	// Text is the remote reply verbatim, or what went wrong locally.
	Text string
	// Reason is the bounce reason word (docs/design.md) for failures.
	Reason string
	// Source overrides the event source ("relay" by default).
	Source string
}

// Deliverer delivers one recipient of one message. relay implements the SMTP
// side of it; the daemon adapts it and adds suppression and classification.
type Deliverer interface {
	Deliver(ctx context.Context, d Delivery) Result
}

// RunnerOptions configures the delivery scheduler.
type RunnerOptions struct {
	// Concurrency is the number of deliveries in progress at once (default 100).
	Concurrency int
	// Retry lists the delays between attempts; the last one repeats.
	Retry []time.Duration
	// MaxAge is the queue lifetime: a recipient still failing temporarily
	// after it is bounced with reason "expired".
	MaxAge time.Duration
	// Jitter spreads retries by up to this fraction of the delay (0 = none).
	Jitter float64
	// OnAttempt, when set, is told each finished attempt (logging, metrics).
	OnAttempt func(d Delivery, res Result, took time.Duration)
}

// Runner schedules due deliveries from a Store.
type Runner struct {
	store *Store
	del   Deliverer
	opts  RunnerOptions

	mu       sync.Mutex
	inflight map[string]struct{} // id + index
	wg       sync.WaitGroup
	sem      chan struct{}

	// abortCtx is the context of deliveries: Abort cancels it, so that a
	// stop can cut deliveries in progress short (they are recorded as
	// deferred and retried after restart).
	abortCtx context.Context
	abort    context.CancelFunc
}

// NewRunner returns a scheduler over s that uses d for deliveries.
func NewRunner(s *Store, d Deliverer, opts RunnerOptions) *Runner {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 100
	}
	if len(opts.Retry) == 0 {
		opts.Retry = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour}
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 5 * 24 * time.Hour
	}
	actx, abort := context.WithCancel(context.Background())
	return &Runner{store: s, del: d, opts: opts, inflight: map[string]struct{}{}, sem: make(chan struct{}, opts.Concurrency),
		abortCtx: actx, abort: abort}
}

// Abort cuts the deliveries in progress short; Run returns once they are
// recorded (as deferred).
func (r *Runner) Abort() { r.abort() }

// SetRetry replaces the retry schedule and lifetime (config reload).
func (r *Runner) SetRetry(retry []time.Duration, maxAge time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(retry) > 0 {
		r.opts.Retry = retry
	}
	if maxAge > 0 {
		r.opts.MaxAge = maxAge
	}
}

// InFlight returns how many deliveries are in progress.
func (r *Runner) InFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.inflight)
}

// Run dispatches due work until ctx is cancelled, then waits for the
// deliveries in progress to end (Abort cuts them short: a delivery cut short
// is recorded as deferred and retried, so nothing is lost). Work that was in
// flight when the process died is simply still due in the time index at the
// next start.
func (r *Runner) Run(ctx context.Context) error {
	defer r.wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next, err := r.dispatch(ctx)
		if err != nil {
			r.store.log.Error("queue: scan due index", "err", err)
			next = r.store.now().Add(time.Second)
		}
		wait := next.Sub(r.store.now())
		if next.IsZero() || wait > time.Minute {
			wait = time.Minute
		}
		if wait < 0 {
			wait = 0
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-r.store.wakeCh:
		case <-timer.C:
		}
	}
}

// dispatch starts every due delivery it has room for and returns when the
// next not-yet-due entry falls due (zero if none). It reads the time index
// from its start, so its cost is the number of due entries, not the queue size.
func (r *Runner) dispatch(ctx context.Context) (time.Time, error) {
	now := r.store.now()
	type item struct {
		id  string
		idx int
	}
	var due []item
	var next time.Time
	free := cap(r.sem) - len(r.sem)
	err := r.store.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			t, id, idx, ok := parseDueKey(k)
			if !ok {
				continue
			}
			if t.After(now) {
				next = t
				return nil
			}
			if len(due) >= free {
				// More due work than room: a finishing delivery wakes
				// the loop; polling now would only spin.
				next = time.Time{}
				return nil
			}
			r.mu.Lock()
			_, busy := r.inflight[inflightKey(id, idx)]
			r.mu.Unlock()
			if !busy {
				due = append(due, item{id, idx})
			}
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	for _, it := range due {
		key := inflightKey(it.id, it.idx)
		r.mu.Lock()
		r.inflight[key] = struct{}{}
		r.mu.Unlock()
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			r.mu.Lock()
			delete(r.inflight, key)
			r.mu.Unlock()
			return next, nil
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() {
				<-r.sem
				r.mu.Lock()
				delete(r.inflight, key)
				r.mu.Unlock()
				r.store.wake()
			}()
			r.attempt(r.abortCtx, it.id, it.idx)
		}()
	}
	return next, nil
}

func inflightKey(id string, idx int) string { return fmt.Sprintf("%s/%d", id, idx) }

// attempt delivers one recipient and records the result.
func (r *Runner) attempt(ctx context.Context, id string, idx int) {
	var d Delivery
	var bodyErr error
	err := r.store.db.View(func(tx *bolt.Tx) error {
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		if idx >= len(m.Recipients) || !m.Recipients[idx].Status.Pending() {
			return fmt.Errorf("recipient %d of %s is not pending", idx, id)
		}
		d = Delivery{Message: m, Recipient: m.Recipients[idx]}
		d.Body, bodyErr = r.store.readBody(tx, id)
		return nil
	})
	if err == nil && bodyErr != nil {
		// The message is there but its body cannot be read (a body file
		// gone or unreadable): retry later like any temporary failure, and
		// say why, rather than spin on it.
		r.store.log.Error("queue: read body", "msgid", id, "err", bodyErr)
		res := Result{Status: StatusDeferred, Text: "local error: " + bodyErr.Error(), Reason: "system", Source: "queue"}
		if err := r.store.record(context.Background(), id, idx, res, r.schedule); err != nil {
			r.store.log.Error("queue: record result", "msgid", id, "rcpt_index", idx, "err", err)
		}
		return
	}
	if err != nil {
		// The due entry is stale (message deleted meanwhile): drop it.
		r.store.log.Debug("queue: skip due entry", "msgid", id, "rcpt_index", idx, "err", err)
		_ = r.store.update(context.Background(), func(tx *bolt.Tx, st *txState) error {
			return dropStaleDue(tx, id, idx)
		})
		return
	}
	start := time.Now()
	res := r.del.Deliver(ctx, d)
	if ctx.Err() != nil && res.Status != StatusSent && res.Status != StatusBounced {
		res = Result{Status: StatusDeferred, Text: "delivery interrupted by shutdown", Reason: "system", Source: "relay"}
	}
	if err := r.store.record(context.Background(), id, idx, res, r.schedule); err != nil {
		r.store.log.Error("queue: record result", "msgid", id, "rcpt_index", idx, "err", err)
	}
	if r.opts.OnAttempt != nil {
		r.opts.OnAttempt(d, res, time.Since(start))
	}
}

func dropStaleDue(tx *bolt.Tx, id string, idx int) error {
	m, err := getMessage(tx, id)
	c := tx.Bucket(bucketDue).Cursor()
	var stale [][]byte
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		_, kid, kidx, ok := parseDueKey(k)
		if ok && kid == id && kidx == idx {
			if err != nil || idx >= len(m.Recipients) || !m.Recipients[idx].Status.Pending() {
				stale = append(stale, append([]byte(nil), k...))
			}
		}
	}
	for _, k := range stale {
		if err := tx.Bucket(bucketDue).Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// schedule turns a temporary failure into the next due time, or into an
// expiry bounce once the queue lifetime is over.
func (r *Runner) schedule(m *Message, rc *Recipient, now time.Time) (time.Time, bool) {
	r.mu.Lock()
	retry, maxAge, jitter := r.opts.Retry, r.opts.MaxAge, r.opts.Jitter
	r.mu.Unlock()
	if now.Sub(m.Received) >= maxAge {
		return time.Time{}, false
	}
	i := rc.Attempts - 1
	if i < 0 {
		i = 0
	}
	if i >= len(retry) {
		i = len(retry) - 1
	}
	delay := retry[i]
	if jitter > 0 {
		delay += time.Duration(rand.Float64() * jitter * float64(delay))
	}
	next := now.Add(delay)
	if end := m.Received.Add(maxAge); next.After(end) {
		next = end // one last attempt at the end of the lifetime
	}
	return next, true
}

// record stores the result of an attempt on recipient idx of message id.
func (s *Store) record(ctx context.Context, id string, idx int, res Result, schedule func(*Message, *Recipient, time.Time) (time.Time, bool)) error {
	return s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMessage(tx, id)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted by an admin while in flight
		} else if err != nil {
			return err
		}
		if idx < 0 || idx >= len(m.Recipients) {
			return fmt.Errorf("queue: message %s has no recipient %d", id, idx)
		}
		rc := m.Recipients[idx]
		if !rc.Status.Pending() {
			return nil // deleted or finished meanwhile (admin action)
		}
		now := s.now()
		rc.Attempts++
		ev := Event{Time: now, Status: res.Status, Host: res.Host, Code: res.Code, EnhancedCode: res.EnhancedCode,
			Text: res.Text, Reason: res.Reason, Source: res.Source, Attempt: rc.Attempts}
		if ev.Source == "" {
			ev.Source = "relay"
		}
		var next time.Time
		switch res.Status {
		case StatusDeferred:
			var ok bool
			next, ok = schedule(m, rc, now)
			if !ok {
				ev.Status = StatusBounced
				ev.Reason = "expired"
				ev.Note = fmt.Sprintf("queue lifetime exceeded after %d attempts; last reply: %s", rc.Attempts, res.Text)
			}
		case StatusSent, StatusBounced, StatusSuppressed:
		default:
			return fmt.Errorf("queue: invalid result status %q", res.Status)
		}
		if ev.Status == StatusSent {
			rc.Reason = ""
		} else {
			rc.Reason = ev.Reason
		}
		if err := s.setStatus(tx, st, m, rc, ev.Status, next); err != nil {
			return err
		}
		if err := s.appendEvent(tx, st, m, rc, ev); err != nil {
			return err
		}
		return putMessage(tx, m)
	})
}
