package queue

import (
	"context"
	"encoding/binary"
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
	// Addr is the ip:port of the MX host that answered.
	Addr string
	// TLS is the session's protocol version ("TLS 1.3") or "plain"; "" when
	// no session was made. TLSCipher is the cipher suite when encrypted.
	TLS       string
	TLSCipher string
	// Duration is how long the attempt took (the runner measures it when 0).
	Duration time.Duration
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
	// DelayWarning is how long after acceptance a recipient still deferred
	// gets one "delayed" event (Event.Type EventDelayed; its status stays
	// deferred); 0 disables it (relay.delay_warning).
	DelayWarning time.Duration
	// OnAttempt, when set, is told each finished attempt (logging, metrics).
	OnAttempt func(d Delivery, res Result, took time.Duration)
}

// Scheduling bounds: how many due entries one dispatch pass reads from the
// time index, how often a full rescan of it starts over, and how many
// entries wait in memory (in all, and per destination) to be started.
const (
	scanBudget   = 4096
	rescanEvery  = 5 * time.Second
	minReadySize = 1000
)

// Runner schedules due deliveries from a Store.
type Runner struct {
	store *Store
	del   Deliverer
	opts  RunnerOptions

	mu       sync.Mutex
	inflight map[itemKey]struct{} // deliveries in progress (or their results waiting for the store)
	perDest  map[string]int       // deliveries in progress per destination
	running  int
	// unrecorded counts results the store refused and that wait to be
	// written again: while there are any, no delivery starts.
	unrecorded int
	wg         sync.WaitGroup

	// The scheduler's memory of the time index: due entries read but not
	// started yet, in one FIFO per destination, served round robin, so that
	// a destination at its cap is passed over without reading its entries
	// again and again.
	queued     map[itemKey]struct{}
	ready      map[string][]dueItem
	order      []string            // destinations with ready entries
	rr         int                 // round-robin position in order
	scanFrom   []byte              // the time index is read on from after this key (nil: from the start)
	overflow   map[string]struct{} // destinations with more due entries than their list holds
	lastRescan time.Time
	// missed remembers due entries read while their recipient was still in
	// flight (its next due time written, the attempt not yet wound up): when
	// it is, the time index is read again from there.
	missed map[itemKey]time.Time

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
	return &Runner{store: s, del: d, opts: opts, inflight: map[itemKey]struct{}{}, perDest: map[string]int{},
		queued: map[itemKey]struct{}{}, ready: map[string][]dueItem{}, overflow: map[string]struct{}{}, missed: map[itemKey]time.Time{},
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

// SetDelayWarning replaces the delay warning time (config reload); 0 disables it.
func (r *Runner) SetDelayWarning(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opts.DelayWarning = max(d, 0)
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

// itemKey names a (message, recipient) in the scheduler's maps: the length
// of the id and index, then the id and index as they stand in a time-index
// key (zero-padded).
type itemKey [1 + MaxIDLen + 2]byte

type dueItem struct {
	key  itemKey
	id   string
	idx  int
	dest string
}

func newDueItem(k []byte, dest string) (dueItem, bool) {
	ik, ok := dueItemKey(k)
	if !ok {
		return dueItem{}, false
	}
	_, id, idx, _ := parseDueKey(k)
	return dueItem{key: ik, id: id, idx: idx, dest: dest}, true
}

// readyLimits are how many entries wait in memory in all and per destination.
func (r *Runner) readyLimits() (total, perDest int) {
	total = max(4*r.opts.Concurrency, minReadySize)
	perDest = total
	if r.opts.PerDestination > 0 {
		perDest = min(total, max(4*r.opts.PerDestination, 8))
	}
	return total, perDest
}

// dispatch reads newly due entries of the time index into the
// per-destination lists and starts every delivery it has room for, round
// robin over the destinations. It returns when to look again: the time of
// the next not-yet-due entry, now if it stopped reading early, or zero (wait
// for a delivery to finish or new work). Its cost is what it reads, never
// the queue size: it reads the time index on from where it stopped (from
// the start only every few seconds), and a destination with more due work
// than its list holds is refilled from the per-destination index.
func (r *Runner) dispatch() (time.Time, error) {
	now := r.store.now()
	var next time.Time
	r.mu.Lock()
	defer r.mu.Unlock()
	total, perDestReady := r.readyLimits()
	if r.scanFrom != nil && now.Sub(r.lastRescan) >= rescanEvery {
		r.scanFrom = nil // safety net: read everything once more
	}
	if hint := r.store.takeDueHint(); !hint.IsZero() && r.scanFrom != nil {
		// Work committed out of order (a submission that took its time
		// before its commit) lies behind the mark: read on from there.
		if hk := seqKey(uint64(hint.UnixNano())); string(hk) < string(r.scanFrom) {
			r.scanFrom = hk
		}
	}
	if r.scanFrom == nil {
		r.lastRescan = now
	}
	err := r.store.db.View(func(tx *bolt.Tx) error {
		// Destinations whose lists ran low refill from their own index.
		for dest := range r.overflow {
			if len(r.ready[dest]) < perDestReady/2 && len(r.queued) < total {
				if !r.refill(tx, dest, now, perDestReady, total) {
					delete(r.overflow, dest)
				}
			}
		}
		if len(r.queued) >= total {
			return nil
		}
		c := tx.Bucket(bucketDue).Cursor()
		var k, v []byte
		if r.scanFrom == nil {
			k, v = c.First()
		} else if k, v = c.Seek(r.scanFrom); k != nil && string(k) == string(r.scanFrom) {
			k, v = c.Next()
		}
		var last []byte
		for scanned := 0; k != nil; k, v = c.Next() {
			if len(k) < 8 {
				continue
			}
			if t := time.Unix(0, int64(binary.BigEndian.Uint64(k))); t.After(now) {
				next = t
				break
			}
			if scanned++; scanned > scanBudget || len(r.queued) >= total {
				next = now // more to read: come back at once
				break
			}
			last = k
			_, over := r.overflow[string(v)]
			if over || len(r.ready[string(v)]) >= perDestReady {
				// Its older entries wait in the per-destination index:
				// refill takes them in time order, this one after them.
				r.overflow[string(v)] = struct{}{}
				continue
			}
			r.enqueueReady(k, string(v))
		}
		if last != nil {
			r.scanFrom = append(r.scanFrom[:0], last...)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	r.startReady()
	return next, nil
}

// enqueueReady adds the due entry k to its destination's list unless it is
// in flight or listed already; r.mu is held.
func (r *Runner) enqueueReady(k []byte, dest string) {
	ik, ok := dueItemKey(k)
	if !ok {
		return
	}
	if _, busy := r.inflight[ik]; busy {
		if t, seen := r.missed[ik]; !seen || dueTime(k).Before(t) {
			r.missed[ik] = dueTime(k)
		}
		return
	}
	if _, listed := r.queued[ik]; listed {
		return
	}
	it, _ := newDueItem(k, dest)
	if len(r.ready[dest]) == 0 {
		r.order = append(r.order, dest)
	}
	r.ready[dest] = append(r.ready[dest], it)
	r.queued[ik] = struct{}{}
}

// dueTime is the time of a time-index key.
func dueTime(k []byte) time.Time { return time.Unix(0, int64(binary.BigEndian.Uint64(k))) }

// refill reads dest's due entries from the per-destination index into its
// list; it reports whether more due entries remain than the list took.
func (r *Runner) refill(tx *bolt.Tx, dest string, now time.Time, perDestReady, total int) bool {
	c := tx.Bucket(bucketDueDest).Cursor()
	p := append([]byte(dest), 0)
	for k, _ := c.Seek(p); k != nil && validDueKeyLen(len(k)-len(p)) && string(k[:len(p)]) == string(p); k, _ = c.Next() {
		due := k[len(p):]
		if time.Unix(0, int64(binary.BigEndian.Uint64(due))).After(now) {
			return false
		}
		if len(r.ready[dest]) >= perDestReady || len(r.queued) >= total {
			return true
		}
		r.enqueueReady(due, dest)
	}
	return false
}

// startReady starts deliveries from the ready lists, round robin, while
// there are slots; r.mu is held.
func (r *Runner) startReady() {
	if r.unrecorded > 0 {
		return
	}
	for r.running < r.opts.Concurrency && len(r.order) > 0 {
		started := false
		for i := 0; i < len(r.order) && r.running < r.opts.Concurrency; i++ {
			r.rr %= len(r.order)
			dest := r.order[r.rr]
			if r.opts.PerDestination > 0 && r.perDest[dest] >= r.opts.PerDestination {
				r.rr++
				continue
			}
			list := r.ready[dest]
			it := list[0]
			if len(list) == 1 {
				delete(r.ready, dest)
				r.order = append(r.order[:r.rr], r.order[r.rr+1:]...)
			} else {
				r.ready[dest] = list[1:]
				r.rr++
			}
			delete(r.queued, it.key)
			r.start(it)
			started = true
		}
		if !started {
			return
		}
	}
}

// start runs one delivery; r.mu is held.
func (r *Runner) start(it dueItem) {
	r.inflight[it.key] = struct{}{}
	r.perDest[it.dest]++
	r.running++
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		released := false
		// The slots go back as soon as the remote side is done, so that the
		// destination's connection serves the next delivery while this
		// result is being made durable; the recipient itself stays in
		// flight until then.
		releaseSlots := func() {
			if !released {
				released = true
				r.mu.Lock()
				r.releaseSlots(it)
				r.mu.Unlock()
				r.store.wake()
			}
		}
		r.attempt(r.abortCtx, it, releaseSlots)
		releaseSlots()
		r.mu.Lock()
		delete(r.inflight, it.key)
		if t, ok := r.missed[it.key]; ok {
			delete(r.missed, it.key)
			if hk := seqKey(uint64(t.UnixNano())); r.scanFrom != nil && string(hk) < string(r.scanFrom) {
				r.scanFrom = hk
			}
		}
		r.mu.Unlock()
		r.store.wake()
	}()
}

// releaseSlots gives back the concurrency slots of a delivery; r.mu is held.
func (r *Runner) releaseSlots(it dueItem) {
	if r.perDest[it.dest]--; r.perDest[it.dest] <= 0 {
		delete(r.perDest, it.dest)
	}
	r.running--
}

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
		d.Message = mr.envelope()
		d.Message.Finished = time.Time{}
		d.Recipient = &Recipient{Index: it.idx, Address: rc.Address, EnvelopeFrom: rc.EnvelopeFrom, Status: rc.Status,
			Reason: rc.Reason, Attempts: rc.Attempts, NextAttempt: rc.NextAttempt}
		return nil
	})
	if stale {
		// Deleted, finished or rescheduled since it was read from the
		// time index (writes keep the index itself exact).
		return d, false
	}
	if err != nil {
		r.store.log.Error("queue: read delivery", "msgid", it.id, "rcpt_index", it.idx, "err", err)
		return d, false
	}
	return d, true
}

// attempt delivers one recipient and records the result.
func (r *Runner) attempt(ctx context.Context, it dueItem, delivered func()) {
	d, ok := r.load(it)
	if !ok {
		return
	}
	start := r.store.now()
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
	delivered()
	if res.Duration == 0 {
		res.Duration = r.store.now().Sub(start)
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
	failed := false
	defer func() {
		if failed {
			r.mu.Lock()
			r.unrecorded--
			r.mu.Unlock()
		}
	}()
	r.mu.Lock()
	delayWarning := r.opts.DelayWarning
	r.mu.Unlock()
	for {
		err := r.store.record(context.Background(), it.id, it.idx, res, r.schedule(rand.Float64()), delayWarning)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrStorage) {
			r.store.log.Error("queue: record result", "msgid", it.id, "rcpt_index", it.idx, "err", err)
			return
		}
		if !failed {
			failed = true
			r.mu.Lock()
			r.unrecorded++
			r.mu.Unlock()
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
// A deferral at least delayWarning (> 0) after acceptance also records the
// recipient's one "delayed" event.
func (s *Store) record(ctx context.Context, id string, idx int, res Result, schedule scheduleFunc, delayWarning time.Duration) error {
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
		held := rc.Status == StatusHeld
		if !rc.Status.Pending() && !held {
			return nil // finished meanwhile (a DSN, an admin action)
		}
		rc.Attempts++
		ev := Event{Time: now, Status: res.Status, Host: res.Host, Code: res.Code, EnhancedCode: res.EnhancedCode,
			Text: res.Text, Reason: res.Reason, Source: res.Source, Attempt: rc.Attempts,
			Addr: res.Addr, TLS: res.TLS, TLSCipher: res.TLSCipher, Duration: Duration(res.Duration)}
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
		if held && ev.Status == StatusDeferred {
			// Held while this attempt was in flight: the attempt counts and
			// its reply is kept, but the recipient stays held; release
			// makes it deferred.
			ev.Status, rc.HeldFrom, next = StatusHeld, StatusDeferred, time.Time{}
			ev.Note = "attempt in flight when held: deferred; stays held"
		} else if held {
			rc.HeldFrom = "" // the attempt that was in flight when held ended it
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
		if ev.Status == StatusDeferred && delayWarning > 0 && !rc.Delayed && now.Sub(m.Received) >= delayWarning {
			rc.Delayed = true
			dl := Event{Time: now, Status: StatusDeferred, Type: EventDelayed, Source: "queue", Attempt: rc.Attempts,
				Host: ev.Host, Code: ev.Code, EnhancedCode: ev.EnhancedCode, Text: ev.Text, Reason: ev.Reason,
				Note: fmt.Sprintf("not delivered after %s (%d attempts); next attempt %s", delayWarning, rc.Attempts,
					next.UTC().Format(time.RFC3339))}
			if _, err := s.appendEvent(tx, st, m, idx, rc, dl); err != nil {
				return err
			}
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
