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
	// Message is the envelope (its Recipients and events are not loaded).
	Message *Message
	// Recipient is the recipient being delivered, without its events.
	Recipient *Recipient
	// Body is the complete message as it leaves (headers and body, CRLF),
	// already checked against its size and checksum.
	Body *Body
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
	// PerDestination caps the deliveries in progress to one destination
	// (recipient domain); 0 means no cap beyond Concurrency. A destination at
	// its cap is passed over for the others, never waited on.
	PerDestination int
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

// maxSkipped bounds how many due entries of saturated destinations one
// dispatch pass looks past before it waits for a delivery to finish.
const maxSkipped = 10000

// Runner schedules due deliveries from a Store.
type Runner struct {
	store *Store
	del   Deliverer
	opts  RunnerOptions

	mu       sync.Mutex
	inflight map[string]struct{} // id + index
	perDest  map[string]int      // deliveries in progress per destination
	running  int
	wg       sync.WaitGroup

	// abortCtx is the context of deliveries: Abort cancels it, so that a
	// stop can cut deliveries in progress short (they go back to due,
	// without counting as an attempt).
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
	return &Runner{store: s, del: d, opts: opts, inflight: map[string]struct{}{}, perDest: map[string]int{},
		abortCtx: actx, abort: abort}
}

// Abort cuts the deliveries in progress short; Run returns once they have
// ended. A delivery cut short is not recorded: it is still due, as after a
// crash, and its attempt is not counted.
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

// InFlight returns how many deliveries are in progress (including results
// waiting for the store to take them).
func (r *Runner) InFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.inflight)
}

// Run dispatches due work until ctx is cancelled, then waits for the
// deliveries in progress to end. Work that was in flight when the process
// died is simply still due in the time index at the next start. While the
// store cannot be written, nothing is dispatched: a result that could not be
// recorded must never turn into another delivery.
func (r *Runner) Run(ctx context.Context) error {
	defer r.wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var next time.Time
		var err error
		if r.store.Writable() {
			next, err = r.dispatch()
			if err != nil {
				r.store.log.Error("queue: scan due index", "err", err)
				next = r.store.now().Add(time.Second)
			}
		} else {
			// Find out whether writes work again; the answer flips Writable.
			if err := r.store.Probe(ctx); err != nil {
				r.store.log.Warn("queue: store not writable; deliveries paused", "err", err)
			}
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

type dueItem struct {
	id   string
	idx  int
	dest string
}

// dispatch starts every due delivery it has room for and returns when the
// next not-yet-due entry falls due (zero: wait for a delivery to finish). It
// reads the time index from its start, so its cost is the number of due
// entries it looks at, not the queue size.
func (r *Runner) dispatch() (time.Time, error) {
	now := r.store.now()
	var due []dueItem
	var next time.Time
	err := r.store.db.View(func(tx *bolt.Tx) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		free := r.opts.Concurrency - r.running
		skipped := 0
		c := tx.Bucket(bucketDue).Cursor()
		for k, v := c.First(); k != nil && free > 0; k, v = c.Next() {
			t, id, idx, ok := parseDueKey(k)
			if !ok {
				continue
			}
			if t.After(now) {
				next = t
				return nil
			}
			key := inflightKey(id, idx)
			if _, busy := r.inflight[key]; busy {
				continue
			}
			dest := string(v)
			if r.opts.PerDestination > 0 && r.perDest[dest] >= r.opts.PerDestination {
				if skipped++; skipped > maxSkipped {
					return nil
				}
				continue
			}
			r.inflight[key] = struct{}{}
			r.perDest[dest]++
			r.running++
			free--
			due = append(due, dueItem{id, idx, dest})
		}
		return nil
	})
	if err != nil {
		r.mu.Lock()
		for _, it := range due {
			r.release(it)
		}
		r.mu.Unlock()
		return time.Time{}, err
	}
	for _, it := range due {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.attempt(r.abortCtx, it)
			r.mu.Lock()
			r.release(it)
			r.mu.Unlock()
			r.store.wake()
		}()
	}
	return next, nil
}

// release gives back the slots of a finished delivery; r.mu is held.
func (r *Runner) release(it dueItem) {
	delete(r.inflight, inflightKey(it.id, it.idx))
	if r.perDest[it.dest]--; r.perDest[it.dest] <= 0 {
		delete(r.perDest, it.dest)
	}
	r.running--
}

func inflightKey(id string, idx int) string { return fmt.Sprintf("%s/%d", id, idx) }

// load reads what one attempt needs: the envelope and the recipient. It
// returns ok false when the due entry is stale (message deleted, recipient
// no longer pending), after removing that entry.
func (r *Runner) load(it dueItem) (d Delivery, ok bool) {
	var stale bool
	err := r.store.db.View(func(tx *bolt.Tx) error {
		mr, err := getMsg(tx, it.id)
		if err != nil {
			stale = errors.Is(err, ErrNotFound)
			return err
		}
		rc, err := getRcpt(tx, it.id, it.idx)
		if err != nil {
			stale = errors.Is(err, ErrNotFound)
			return err
		}
		if !rc.Status.Pending() {
			stale = true
			return nil
		}
		d.Message = &Message{ID: mr.ID, Account: mr.Account, User: mr.User, Ref: mr.Ref, Kind: mr.Kind,
			MailFrom: mr.MailFrom, HeaderFrom: mr.HeaderFrom, From: mr.From, MessageIDHeader: mr.MessageIDHeader,
			SigningDomain: mr.SigningDomain, Received: mr.Received, Size: mr.Size}
		d.Recipient = &Recipient{Index: it.idx, Address: rc.Address, EnvelopeFrom: rc.EnvelopeFrom, Status: rc.Status,
			Reason: rc.Reason, Attempts: rc.Attempts, NextAttempt: rc.NextAttempt}
		return nil
	})
	if stale {
		r.store.log.Debug("queue: skip stale due entry", "msgid", it.id, "rcpt_index", it.idx, "err", err)
		_ = r.store.update(context.Background(), func(tx *bolt.Tx, st *txState) error {
			return dropStaleDue(tx, it.id, it.idx)
		})
		return d, false
	}
	if err != nil {
		r.store.log.Error("queue: read delivery", "msgid", it.id, "rcpt_index", it.idx, "err", err)
		return d, false
	}
	return d, true
}

// dropStaleDue removes the due entries of a recipient that is not pending
// (or no longer exists), looking only at that recipient's own keys.
func dropStaleDue(tx *bolt.Tx, id string, idx int) error {
	rc, err := getRcpt(tx, id, idx)
	if err == nil && rc.Status.Pending() {
		return nil // pending after all: its entry is right
	}
	if err == nil && !rc.NextAttempt.IsZero() {
		return tx.Bucket(bucketDue).Delete(dueKey(rc.NextAttempt, id, idx))
	}
	// The recipient is gone: its entry can only be found by scanning; such
	// entries are rare (a crash between writes cannot leave them, since
	// writes are transactions), so scan the due index once.
	var stale [][]byte
	c := tx.Bucket(bucketDue).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if _, kid, kidx, ok := parseDueKey(k); ok && kid == id && kidx == idx {
			stale = append(stale, append([]byte(nil), k...))
		}
	}
	for _, k := range stale {
		if err := tx.Bucket(bucketDue).Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// attempt delivers one recipient and records the result.
func (r *Runner) attempt(ctx context.Context, it dueItem) {
	d, ok := r.load(it)
	if !ok {
		return
	}
	start := time.Now()
	body, err := r.store.OpenBody(it.id)
	var res Result
	if err != nil {
		// The body cannot be read or is not what was accepted: it never
		// reaches a remote server. Retry later like any temporary failure
		// (a restored file heals it), and say why.
		res = Result{Status: StatusDeferred, Text: "local error: " + err.Error(), Reason: "system", Source: "queue"}
	} else {
		d.Body = body
		res = r.del.Deliver(ctx, d)
		body.Close()
		if ctx.Err() != nil && res.Status != StatusSent && res.Status != StatusBounced {
			// Cut short by a stop: not an attempt. The due entry is still
			// there, so the next start delivers it again at once.
			r.store.log.Info("queue: delivery interrupted by shutdown; still due", "msgid", it.id, "rcpt_index", it.idx)
			return
		}
	}
	r.recordDurably(it, res)
	if r.opts.OnAttempt != nil {
		r.opts.OnAttempt(d, res, time.Since(start))
	}
}

// recordDurably records res and keeps trying while the store cannot take
// it: until then the recipient stays in flight, so it is not delivered
// again. If the store closes first the result is lost as in a crash, and
// the recipient is delivered again after the restart.
func (r *Runner) recordDurably(it dueItem, res Result) {
	backoff := 50 * time.Millisecond
	for {
		err := r.store.record(context.Background(), it.id, it.idx, res, r.schedule(rand.Float64()))
		if err == nil {
			return
		}
		if !errors.Is(err, ErrStorage) {
			r.store.log.Error("queue: record result", "msgid", it.id, "rcpt_index", it.idx, "err", err)
			return
		}
		r.store.log.Warn("queue: cannot record a result yet; keeping it", "msgid", it.id, "rcpt_index", it.idx,
			"status", res.Status, "err", err)
		select {
		case <-r.store.stop:
			r.store.log.Error("queue: store closed before a result could be recorded; the recipient will be delivered again",
				"msgid", it.id, "rcpt_index", it.idx, "status", res.Status)
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// scheduleFunc turns a temporary failure into the next due time, or reports
// that the queue lifetime is over.
type scheduleFunc func(received time.Time, attempts int, now time.Time) (time.Time, bool)

// schedule returns the retry rule with its random jitter drawn once, so
// that running the transaction again computes the same time.
func (r *Runner) schedule(jitterDraw float64) scheduleFunc {
	r.mu.Lock()
	retry, maxAge, jitter := r.opts.Retry, r.opts.MaxAge, r.opts.Jitter
	r.mu.Unlock()
	return func(received time.Time, attempts int, now time.Time) (time.Time, bool) {
		if now.Sub(received) >= maxAge {
			return time.Time{}, false
		}
		i := min(max(attempts-1, 0), len(retry)-1)
		delay := retry[i]
		if jitter > 0 {
			delay += time.Duration(jitterDraw * jitter * float64(delay))
		}
		next := now.Add(delay)
		if end := received.Add(maxAge); next.After(end) {
			next = end // one last attempt at the end of the lifetime
		}
		return next, true
	}
}

// record stores the result of an attempt on recipient idx of message id.
func (s *Store) record(ctx context.Context, id string, idx int, res Result, schedule scheduleFunc) error {
	now := s.now()
	return s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		m, err := getMsg(tx, id)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted by an admin while in flight
		} else if err != nil {
			return err
		}
		rc, err := getRcpt(tx, id, idx)
		if err != nil {
			return err
		}
		if !rc.Status.Pending() {
			return nil // finished meanwhile (a DSN, an admin action)
		}
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
			if next, ok = schedule(m.Received, rc.Attempts, now); !ok {
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
		msgChanged, err := s.setStatus(tx, st, m, idx, rc, ev.Status, next)
		if err != nil {
			return err
		}
		if _, err := s.appendEvent(tx, st, m, idx, rc, ev); err != nil {
			return err
		}
		if err := putRcpt(tx, id, idx, rc); err != nil {
			return err
		}
		if msgChanged {
			return putMsg(tx, m)
		}
		return nil
	})
}
