// Package webhook sends every recipient status change to the application as
// signed JSON POSTs, from a durable outbox kept in the queue's bbolt file.
//
// The outbox follows the queue's event log (queue.Follower): AppendEvents
// copies committed events into the outbox and records how far it has read
// in the same transaction, so nothing is sent for an event that did not
// commit and nothing is lost or copied twice for one that did. Each
// endpoint has its own ordered list of entries; Flush POSTs the oldest batch
// of each endpoint and deletes it only after a 2xx answer. A failing batch
// blocks the later ones of that endpoint, so events arrive in the order they
// were recorded, and the endpoint is retried with a doubling, jittered
// backoff for as long as it takes. Delivery is at least once: a 2xx lost on
// the way back means the batch is sent again under the same X-Hermod-Delivery
// id, and every event carries its store-wide Seq.
//
// Wire format (a Stripe-like scheme):
//
//	POST <url>
//	Content-Type: application/json
//	X-Hermod-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//	X-Hermod-Delivery: <batch id>
//
//	{"events":[<queue.Event JSON>, …]}
package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/hermod-mta/hermod/queue"
	bolt "go.etcd.io/bbolt"
)

// Defaults for zero Options fields.
const (
	DefaultBatchSize  = 100
	DefaultMaxBackoff = 10 * time.Minute
	DefaultTimeout    = 10 * time.Second
	// minBackoff is the delay after the first failure; it doubles per failure.
	minBackoff = time.Second
	// idlePoll bounds how long Run sleeps without a Notify.
	idlePoll = time.Second
)

// bucketRoot holds one nested bucket per endpoint (named by endpointID) whose
// keys are 8-byte big-endian outbox sequence numbers (the root bucket's
// NextSequence) and whose values are queue.Event JSON.
var bucketRoot = []byte("webhook")

// Endpoint is one receiver of events.
type Endpoint struct {
	// Name labels the endpoint in logs and Depth; empty means its position
	// in the list ("0", "1", …). Names must be unique.
	Name string
	// URL is the absolute http or https URL POSTed to. It identifies the
	// endpoint's pending entries across restarts and reloads.
	URL string
	// Secret is the HMAC key of X-Hermod-Signature. Required.
	Secret []byte
	// Events lists the statuses sent (queued, deferred, sent, bounced,
	// suppressed), "delayed" (the one delay warning of a recipient), or "*"
	// for all; empty means all.
	Events []string
}

// Options configures an Outbox. Zero values mean the defaults.
type Options struct {
	Endpoints []Endpoint
	// Client sends the POSTs; nil means a client with a 10s timeout.
	// Redirects are never followed (a 301 would turn the POST into a GET);
	// a 3xx counts as a failure.
	Client *http.Client
	// BatchSize is the maximum number of events per POST (default 100).
	BatchSize int
	// MaxBackoff caps the delay between attempts to a failing endpoint
	// (default 10m). The delay starts at 1s and doubles per consecutive
	// failure, each drawn at random from [d/2, d].
	MaxBackoff time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per failed or delivered batch; nil discards.
	Logger *slog.Logger
}

// Outbox is the durable webhook sender. It is safe for concurrent use.
type Outbox struct {
	db         *bolt.DB
	client     *http.Client
	batchSize  int
	maxBackoff time.Duration
	now        func() time.Time
	log        *slog.Logger
	notify     chan struct{}

	flushMu sync.Mutex // one Flush at a time, so no batch is sent twice at once

	// mu guards endpoints and their retry state. Lock order: a bbolt write
	// transaction first, then mu (EnqueueTx runs inside one); never call
	// into the database while holding mu.
	mu        sync.Mutex
	endpoints []*endpoint
}

// endpoint is the configuration and in-memory retry state of one Endpoint.
type endpoint struct {
	Endpoint
	id       []byte // bucket name: stable hash of the URL
	match    map[queue.Status]bool
	all      bool
	failures int       // consecutive failed attempts
	next     time.Time // no attempt before this
}

// Open returns an Outbox that keeps its entries in db, creating its buckets.
// Entries of endpoints no longer in opts.Endpoints are dropped. It returns an
// error for an invalid endpoint (relative or non-http URL, duplicate URL or
// name, no secret, unknown status) or when the database refuses the write.
func Open(db *bolt.DB, opts Options) (*Outbox, error) {
	o := &Outbox{
		db:         db,
		batchSize:  opts.BatchSize,
		maxBackoff: opts.MaxBackoff,
		now:        opts.Now,
		log:        opts.Logger,
		notify:     make(chan struct{}, 1),
	}
	if o.batchSize <= 0 {
		o.batchSize = DefaultBatchSize
	}
	if o.maxBackoff <= 0 {
		o.maxBackoff = DefaultMaxBackoff
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	client := http.Client{Timeout: DefaultTimeout}
	if opts.Client != nil {
		client = *opts.Client
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.client = &client
	if err := o.SetEndpoints(opts.Endpoints); err != nil {
		return nil, err
	}
	return o, nil
}

// endpointID is the bucket name of the endpoint with this URL.
func endpointID(u string) []byte {
	h := sha256.Sum256([]byte(u))
	return []byte(hex.EncodeToString(h[:8]))
}

// SetEndpoints replaces the endpoints (a config reload). An endpoint whose URL
// is unchanged keeps its pending entries and retry state; the entries of
// removed endpoints are deleted. On error (see Open) nothing changes.
func (o *Outbox) SetEndpoints(eps []Endpoint) error {
	next := make([]*endpoint, 0, len(eps))
	names, urls := map[string]bool{}, map[string]bool{}
	for i, e := range eps {
		if e.Name == "" {
			e.Name = strconv.Itoa(i)
		}
		u, err := url.Parse(e.URL)
		if err != nil {
			return fmt.Errorf("webhook: endpoint %s: %w", e.Name, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("webhook: endpoint %s: URL %q is not an absolute http(s) URL", e.Name, redact(u))
		}
		if names[e.Name] {
			return fmt.Errorf("webhook: duplicate endpoint name %q", e.Name)
		}
		if urls[e.URL] {
			return fmt.Errorf("webhook: endpoint %s: duplicate URL %q", e.Name, redact(u))
		}
		names[e.Name], urls[e.URL] = true, true
		if len(e.Secret) == 0 {
			return fmt.Errorf("webhook: endpoint %s: no secret", e.Name)
		}
		ep := &endpoint{Endpoint: e, id: endpointID(e.URL), match: map[queue.Status]bool{}, all: len(e.Events) == 0}
		ep.Secret = bytes.Clone(e.Secret)
		ep.Events = append([]string(nil), e.Events...)
		for _, s := range e.Events {
			switch {
			case s == "*":
				ep.all = true
			case queue.Status(s).Valid() || s == queue.EventDelayed:
				ep.match[queue.Status(s)] = true
			default:
				return fmt.Errorf("webhook: endpoint %s: unknown event %q", e.Name, s)
			}
		}
		next = append(next, ep)
	}
	var dropped []string
	err := o.db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(bucketRoot)
		if err != nil {
			return err
		}
		keep := map[string]bool{}
		for _, ep := range next {
			keep[string(ep.id)] = true
			if _, err := root.CreateBucketIfNotExists(ep.id); err != nil {
				return err
			}
		}
		var stale [][]byte
		err = root.ForEachBucket(func(k []byte) error {
			if !keep[string(k)] {
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			n := root.Bucket(k).Stats().KeyN
			if err := root.DeleteBucket(k); err != nil {
				return err
			}
			dropped = append(dropped, fmt.Sprintf("%s (%d entries)", k, n))
		}
		// Swapped inside the write transaction, so that any EnqueueTx
		// commits either before (its entries were just dropped) or after
		// (it sees the new set): removed endpoints leave no orphans.
		o.mu.Lock()
		defer o.mu.Unlock()
		old := map[string]*endpoint{}
		for _, ep := range o.endpoints {
			old[string(ep.id)] = ep
		}
		for _, ep := range next {
			if prev := old[string(ep.id)]; prev != nil {
				ep.failures, ep.next = prev.failures, prev.next
			}
		}
		o.endpoints = next
		return nil
	})
	if err != nil {
		return fmt.Errorf("webhook: set endpoints: %w", err)
	}
	for _, d := range dropped {
		o.log.Warn("webhook: dropped the outbox of a removed endpoint", "endpoint", d)
	}
	return nil
}

// redact keeps a URL's password and query out of errors and logs.
func redact(u *url.URL) string {
	c := *u
	c.RawQuery = ""
	return c.Redacted()
}

// EnqueueTx appends ev to the outbox of every endpoint whose Events match its
// status, inside tx (the transaction that records the event), so that the
// event and its entries commit or roll back together. Call Notify after the
// commit. It returns an error only when tx refuses the write.
func (o *Outbox) EnqueueTx(tx *bolt.Tx, ev queue.Event) error {
	o.mu.Lock()
	var ids [][]byte
	for _, ep := range o.endpoints {
		if ep.all || ep.match[matchKey(ev)] {
			ids = append(ids, ep.id)
		}
	}
	o.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	v, err := json.Marshal(&ev)
	if err != nil {
		return fmt.Errorf("webhook: encode event %d: %w", ev.Seq, err)
	}
	root, err := tx.CreateBucketIfNotExists(bucketRoot)
	if err != nil {
		return fmt.Errorf("webhook: outbox: %w", err)
	}
	seq, err := root.NextSequence()
	if err != nil {
		return fmt.Errorf("webhook: outbox sequence: %w", err)
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	for _, id := range ids {
		b, err := root.CreateBucketIfNotExists(id)
		if err != nil {
			return fmt.Errorf("webhook: outbox %s: %w", id, err)
		}
		if err := b.Put(k[:], v); err != nil {
			return fmt.Errorf("webhook: outbox %s: %w", id, err)
		}
	}
	return nil
}

// cursorLag is how far the stored cursor may fall behind while no endpoint
// takes the events.
const cursorLag = 10000

// cursorKey, in bucketRoot, holds the Seq of the last queue event appended.
var cursorKey = []byte("cursor")

// Cursor returns the Seq of the last queue event AppendEvents took (0 if none).
func (o *Outbox) Cursor() (uint64, error) {
	var seq uint64
	err := o.db.View(func(tx *bolt.Tx) error {
		if root := tx.Bucket(bucketRoot); root != nil {
			if v := root.Get(cursorKey); len(v) == 8 {
				seq = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return seq, err
}

// AppendEvents copies committed queue events (in order) into the outbox of
// every endpoint they match and moves the cursor past them, in one
// transaction; events at or below the cursor are skipped, so a repeated
// call adds nothing. It implements queue.Consumer with Cursor.
func (o *Outbox) AppendEvents(events []queue.Event) error {
	if len(events) == 0 {
		return nil
	}
	// Events no endpoint takes only move the cursor, which is then written
	// at most every cursorLag events (a replay of them adds nothing).
	o.mu.Lock()
	matched := false
	for _, ev := range events {
		for _, ep := range o.endpoints {
			if ep.all || ep.match[matchKey(ev)] {
				matched = true
			}
		}
	}
	o.mu.Unlock()
	if !matched {
		cur, err := o.Cursor()
		if err != nil {
			return fmt.Errorf("webhook: append events: %w", err)
		}
		if last := events[len(events)-1].Seq; last-min(cur, last) < cursorLag {
			return nil
		}
	}
	err := o.db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(bucketRoot)
		if err != nil {
			return err
		}
		var cur uint64
		if v := root.Get(cursorKey); len(v) == 8 {
			cur = binary.BigEndian.Uint64(v)
		}
		for _, ev := range events {
			if ev.Seq <= cur {
				continue
			}
			if err := o.EnqueueTx(tx, ev); err != nil {
				return err
			}
			cur = ev.Seq
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], cur)
		return root.Put(cursorKey, v[:])
	})
	if err != nil {
		return fmt.Errorf("webhook: append events: %w", err)
	}
	o.Notify()
	return nil
}

// Consume is AppendEvents (queue.Consumer).
func (o *Outbox) Consume(events []queue.Event) error { return o.AppendEvents(events) }

// Notify wakes Run after a commit that added entries. It never blocks.
func (o *Outbox) Notify() {
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// Depth returns the number of pending entries per endpoint name, or an error
// when the database cannot be read.
func (o *Outbox) Depth() (map[string]int, error) {
	eps := o.snapshot()
	depth := make(map[string]int, len(eps))
	err := o.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketRoot)
		for _, ep := range eps {
			n := 0
			if root != nil {
				if b := root.Bucket(ep.id); b != nil {
					n = b.Stats().KeyN
				}
			}
			depth[ep.cfg.Name] = n
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("webhook: depth: %w", err)
	}
	return depth, nil
}

// target is a copy of an endpoint's configuration taken for one Flush.
type target struct {
	ep  *endpoint // for the retry state, under mu
	cfg Endpoint
	id  []byte
}

// snapshot copies the endpoints' configuration.
func (o *Outbox) snapshot() []target {
	o.mu.Lock()
	defer o.mu.Unlock()
	ts := make([]target, len(o.endpoints))
	for i, ep := range o.endpoints {
		ts[i] = target{ep: ep, cfg: ep.Endpoint, id: ep.id}
	}
	return ts
}

// Flush makes one pass: every endpoint that is not waiting out a backoff gets
// its oldest pending batch POSTed (endpoints in parallel). A 2xx deletes the
// batch; anything else keeps it and pushes the endpoint's next attempt back.
// It returns the number of events delivered and the failures, joined.
func (o *Outbox) Flush(ctx context.Context) (sent int, err error) {
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	now := o.now()
	var due []target
	o.mu.Lock()
	for _, ep := range o.endpoints {
		if !now.Before(ep.next) {
			due = append(due, target{ep: ep, cfg: ep.Endpoint, id: ep.id})
		}
	}
	o.mu.Unlock()
	counts := make([]int, len(due))
	errs := make([]error, len(due))
	var wg sync.WaitGroup
	for i, t := range due {
		wg.Go(func() { counts[i], errs[i] = o.flushOne(ctx, t) })
	}
	wg.Wait()
	for _, n := range counts {
		sent += n
	}
	return sent, errors.Join(errs...)
}

// entry is one pending event of an endpoint.
type entry struct {
	key []byte
	val json.RawMessage
}

// flushOne POSTs the oldest batch of one endpoint.
func (o *Outbox) flushOne(ctx context.Context, t target) (int, error) {
	var batch []entry
	err := o.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketRoot)
		if root == nil {
			return nil
		}
		b := root.Bucket(t.id)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(batch) < o.batchSize; k, v = c.Next() {
			batch = append(batch, entry{bytes.Clone(k), bytes.Clone(v)})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("webhook: %s: read outbox: %w", t.cfg.Name, err)
	}
	if len(batch) == 0 {
		return 0, nil
	}
	// The batch id is the range of outbox keys it holds: a retry of the
	// same entries has the same id, a different set a different one.
	first, last := binary.BigEndian.Uint64(batch[0].key), binary.BigEndian.Uint64(batch[len(batch)-1].key)
	delivery := fmt.Sprintf("%s-%d-%d", t.id, first, last)
	body, err := json.Marshal(struct {
		Events []json.RawMessage `json:"events"`
	}{eventsOf(batch)})
	if err != nil {
		return 0, fmt.Errorf("webhook: %s: encode batch: %w", t.cfg.Name, err)
	}
	if err := o.post(ctx, t, delivery, body); err != nil {
		if ctx.Err() != nil {
			// Shutting down is not the endpoint's fault.
			return 0, fmt.Errorf("webhook: %s: %w", t.cfg.Name, err)
		}
		return 0, o.fail(t, delivery, len(batch), err)
	}
	err = o.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketRoot)
		if root == nil {
			return nil
		}
		b := root.Bucket(t.id)
		if b == nil {
			return nil // removed by SetEndpoints meanwhile
		}
		for _, e := range batch {
			if err := b.Delete(e.key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The batch goes again later under the same delivery id.
		return 0, fmt.Errorf("webhook: %s: delivered batch %s but could not delete it: %w", t.cfg.Name, delivery, err)
	}
	o.mu.Lock()
	t.ep.failures, t.ep.next = 0, time.Time{}
	o.mu.Unlock()
	o.log.Debug("webhook: delivered", "endpoint", t.cfg.Name, "delivery", delivery, "events", len(batch))
	return len(batch), nil
}

func eventsOf(batch []entry) []json.RawMessage {
	evs := make([]json.RawMessage, len(batch))
	for i, e := range batch {
		evs[i] = e.val
	}
	return evs
}

// statusError is a non-2xx answer.
type statusError struct {
	code    int
	snippet string
}

func (e *statusError) Error() string {
	if e.snippet == "" {
		return fmt.Sprintf("HTTP %d", e.code)
	}
	return fmt.Sprintf("HTTP %d: %q", e.code, e.snippet)
}

// receiverFault reports whether the answer says the receiver is
// misconfigured (a 3xx or a 4xx other than 408 and 429) rather than busy or
// down. Such batches are still retried, since dropping them would lose
// events the application cannot get back, but they are logged as errors.
func (e *statusError) receiverFault() bool {
	return e.code < 500 && e.code != http.StatusRequestTimeout && e.code != http.StatusTooManyRequests
}

// post sends one signed batch; a nil error means a 2xx answer.
func (o *Outbox) post(ctx context.Context, t target, delivery string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hermod-webhook")
	req.Header.Set(SignatureHeader, signatureHeader(t.cfg.Secret, o.now().Unix(), body))
	req.Header.Set(DeliveryHeader, delivery)
	resp, err := o.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return &statusError{code: resp.StatusCode, snippet: string(bytes.TrimSpace(snippet))}
}

// fail records a failed attempt, schedules the next and logs it.
func (o *Outbox) fail(t target, delivery string, n int, cause error) error {
	now := o.now()
	o.mu.Lock()
	t.ep.failures++
	attempt := t.ep.failures
	wait := o.backoff(attempt)
	t.ep.next = now.Add(wait)
	o.mu.Unlock()
	level := slog.LevelWarn
	var se *statusError
	if errors.As(cause, &se) && se.receiverFault() {
		level = slog.LevelError
	}
	o.log.Log(context.Background(), level, "webhook: delivery failed, will retry", "endpoint", t.cfg.Name,
		"delivery", delivery, "events", n, "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", cause)
	return fmt.Errorf("webhook: %s: batch %s: %w", t.cfg.Name, delivery, cause)
}

// backoff returns the delay after the given number of consecutive failures:
// 1s doubling up to maxBackoff, drawn from [d/2, d] so that many hermod
// nodes do not retry a recovering receiver in step.
func (o *Outbox) backoff(failures int) time.Duration {
	d := o.maxBackoff
	if failures < 40 { // beyond, the shift overflows; the cap applies anyway
		d = min(minBackoff<<(failures-1), o.maxBackoff)
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Run flushes until ctx is done: after a pass that delivered something it
// goes again at once (more may be pending), otherwise it waits for Notify,
// the earliest backoff expiry, or at most a second.
func (o *Outbox) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for ctx.Err() == nil {
		if sent, _ := o.Flush(ctx); sent > 0 {
			continue // failures were logged by Flush
		}
		timer.Reset(o.idleWait())
		select {
		case <-ctx.Done():
		case <-o.notify:
		case <-timer.C:
		}
	}
}

// idleWait is how long Run may sleep: until the earliest retry, at most idlePoll.
func (o *Outbox) idleWait() time.Duration {
	now := o.now()
	wait := idlePoll
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ep := range o.endpoints {
		if d := ep.next.Sub(now); ep.failures > 0 && d < wait {
			wait = max(d, 0)
		}
	}
	return wait
}

// matchKey is what an endpoint's Events are matched against: the event's
// Type ("delayed") when it has one, else its status.
func matchKey(ev queue.Event) queue.Status {
	if ev.Type != "" {
		return queue.Status(ev.Type)
	}
	return ev.Status
}
