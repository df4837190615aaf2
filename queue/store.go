package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Bucket names. Other packages (suppress, domain, webhooks) keep their own
// buckets in the same file through Store.DB.
var (
	bucketMessages = []byte("messages") // id → Message JSON
	bucketBodies   = []byte("bodies")   // id → message bytes
	bucketDue      = []byte("due")      // dueKey(time, id, index) → nil
	bucketFinished = []byte("finished") // time(8) + id → nil, for retention purge
	bucketEvents   = []byte("events")   // seq(8) → Event JSON
	bucketRefs     = []byte("refs")     // ref + 0 + id → nil
	bucketRcpts    = []byte("rcpts")    // lower(address) + 0 + id → nil
	bucketCounts   = []byte("counts")   // status → uint64 recipients
)

// ErrNotFound is returned for an unknown message id.
var ErrNotFound = errors.New("queue: no such message")

// ErrStorage wraps failures to commit to disk (disk full, read-only file
// system): the submission must be answered 452 4.3.1 and retried later.
var ErrStorage = errors.New("queue: storage unavailable")

// Options configures a Store.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per mail event; nil discards.
	Logger *slog.Logger
	// Hook, when set, runs inside the transaction that records each event,
	// so that work derived from it (suppression, webhook outbox) commits
	// atomically with it. An error aborts that write.
	Hook func(tx *bolt.Tx, m *Message, ev *Event) error
	// NoSync turns off fsync (benchmarks of CPU cost only; never in production).
	NoSync bool
	// BodyDir keeps bodies of LargeBody bytes or more as files ("" means
	// "bodies" beside the store file). LargeBody 0 means DefaultLargeBody;
	// a negative value keeps every body in the store.
	BodyDir   string
	LargeBody int
}

// Store is the bbolt-backed queue. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger
	now  func() time.Time

	commits chan *commitReq
	stop    chan struct{}
	stopped chan struct{}

	commitCount atomic.Uint64 // transactions committed (each is an fsync)
	commitItems atomic.Uint64 // writes carried by them

	mu       sync.Mutex
	eventsCh chan struct{} // closed and replaced when events are appended
	wakeCh   chan struct{} // buffered 1: new due work
	counts   map[Status]int64
	batchObs func(n int)
}

// Open opens (creating if needed) the store file at path. The directory is
// created with mode 0700.
func Open(path string, opts Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("queue: create data dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        2 * time.Second,
		NoFreelistSync: false,
		FreelistType:   bolt.FreelistMapType,
		NoSync:         opts.NoSync,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("queue: open %s: the file is locked by another process (is hermod already running?)", path)
		}
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BodyDir == "" {
		opts.BodyDir = filepath.Join(filepath.Dir(path), "bodies")
	}
	if opts.LargeBody == 0 {
		opts.LargeBody = DefaultLargeBody
	}
	s := &Store{
		db:       db,
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Now,
		commits:  make(chan *commitReq, 1024),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
		eventsCh: make(chan struct{}),
		wakeCh:   make(chan struct{}, 1),
		counts:   map[Status]int64{},
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMessages, bucketBodies, bucketDue, bucketFinished, bucketEvents, bucketRefs, bucketRcpts, bucketCounts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketCounts).ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				s.counts[Status(k)] = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: initialise %s: %w", path, err)
	}
	if err := s.removeOrphans(); err != nil {
		db.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

// DB returns the underlying bbolt database, for packages that keep their own
// buckets in the same file. Writes through it bypass group commit.
func (s *Store) DB() *bolt.DB { return s.db }

// Close stops the committer and closes the file. Pending commits finish first.
func (s *Store) Close() error {
	close(s.stop)
	<-s.stopped
	return s.db.Close()
}

// Commits returns how many write transactions (fsyncs) the store has
// committed and how many writes they carried.
func (s *Store) Commits() (txs, writes uint64) {
	return s.commitCount.Load(), s.commitItems.Load()
}

// ObserveBatches registers f to be told the size of every committed batch (metrics).
func (s *Store) ObserveBatches(f func(n int)) {
	s.mu.Lock()
	s.batchObs = f
	s.mu.Unlock()
}

// Counts returns the number of recipients in each status.
func (s *Store) Counts() map[Status]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[Status]int64, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// EventsChanged returns a channel closed at the next commit that appends events.
func (s *Store) EventsChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eventsCh
}

func (s *Store) wake() {
	select {
	case s.wakeCh <- struct{}{}:
	default:
	}
}

// txState collects what one write transaction changed, applied to the
// in-memory view once the commit is durable.
type txState struct {
	store  *Store
	counts map[Status]int64
	events int
	due    bool
	// removeFiles are body files to delete once the transaction commits.
	removeFiles []string
}

func (st *txState) count(status Status, delta int64) {
	if st.counts == nil {
		st.counts = map[Status]int64{}
	}
	st.counts[status] += delta
}

func dueKey(t time.Time, id string, idx int) []byte {
	k := make([]byte, 8+len(id)+2)
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	copy(k[8:], id)
	binary.BigEndian.PutUint16(k[8+len(id):], uint16(idx))
	return k
}

func parseDueKey(k []byte) (t time.Time, id string, idx int, ok bool) {
	if len(k) != 8+16+2 {
		return time.Time{}, "", 0, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), string(k[8:24]), int(binary.BigEndian.Uint16(k[24:])), true
}

func finishedKey(t time.Time, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	copy(k[8:], id)
	return k
}

func indexKey(prefix, id string) []byte {
	k := make([]byte, 0, len(prefix)+1+len(id))
	k = append(k, prefix...)
	k = append(k, 0)
	return append(k, id...)
}

func getMessage(tx *bolt.Tx, id string) (*Message, error) {
	v := tx.Bucket(bucketMessages).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	m := new(Message)
	if err := json.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("queue: decode message %s: %w", id, err)
	}
	return m, nil
}

func putMessage(tx *bolt.Tx, m *Message) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("queue: encode message %s: %w", m.ID, err)
	}
	return tx.Bucket(bucketMessages).Put([]byte(m.ID), v)
}

// appendEvent stamps ev with the next sequence number, stores it in the log
// and on the recipient, and runs the hook.
func (s *Store) appendEvent(tx *bolt.Tx, st *txState, m *Message, r *Recipient, ev Event) error {
	b := tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	ev.MessageID = m.ID
	ev.Index = r.Index
	ev.Recipient = r.Address
	ev.Account = m.Account
	ev.Ref = m.Ref
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	ev.Delay = Duration(ev.Time.Sub(m.Received))
	if s.opts.Hook != nil {
		if err := s.opts.Hook(tx, m, &ev); err != nil {
			return fmt.Errorf("queue: event hook: %w", err)
		}
	}
	v, err := json.Marshal(&ev)
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	if err := b.Put(k[:], v); err != nil {
		return err
	}
	r.Events = append(r.Events, ev)
	last := ev
	r.Last = &last
	st.events++
	return nil
}

// setStatus moves recipient r to status and keeps the counters, due index and
// finished index in step. next is the due time for pending statuses.
func (s *Store) setStatus(tx *bolt.Tx, st *txState, m *Message, r *Recipient, status Status, next time.Time) error {
	due := tx.Bucket(bucketDue)
	if r.Status.Pending() && !r.NextAttempt.IsZero() {
		if err := due.Delete(dueKey(r.NextAttempt, m.ID, r.Index)); err != nil {
			return err
		}
	}
	if r.Status != "" {
		st.count(r.Status, -1)
	}
	st.count(status, +1)
	r.Status = status
	r.NextAttempt = time.Time{}
	if status.Pending() {
		r.NextAttempt = next
		if err := due.Put(dueKey(next, m.ID, r.Index), nil); err != nil {
			return err
		}
		st.due = true
		if !m.Finished.IsZero() {
			if err := tx.Bucket(bucketFinished).Delete(finishedKey(m.Finished, m.ID)); err != nil {
				return err
			}
			m.Finished = time.Time{}
		}
	} else if m.Finished.IsZero() && m.Done() {
		m.Finished = s.now()
		if err := tx.Bucket(bucketFinished).Put(finishedKey(m.Finished, m.ID), nil); err != nil {
			return err
		}
	}
	return nil
}

func (st *txState) persistCounts(tx *bolt.Tx, current map[Status]int64) error {
	b := tx.Bucket(bucketCounts)
	for status, d := range st.counts {
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

// Get returns the message with the given id.
func (s *Store) Get(id string) (*Message, error) {
	var m *Message
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		m, err = getMessage(tx, id)
		return err
	})
	return m, err
}

// Body returns a copy of the stored message bytes.
func (s *Store) Body(id string) ([]byte, error) {
	var body []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		body, err = s.readBody(tx, id)
		return err
	})
	return body, err
}

// Enqueue durably stores a new message, its body and one delivery per
// recipient, all due now unless they already carry a final status (a
// suppressed recipient). It returns once the commit is on disk; an error
// wrapping ErrStorage means the disk refused the write.
func (s *Store) Enqueue(ctx context.Context, m *Message, body []byte) error {
	return s.EnqueueParts(ctx, m, body)
}

// EnqueueParts is Enqueue with the message given as consecutive parts (a
// signature, the header, body chunks), so that a large message is written
// out without first being assembled in memory.
func (s *Store) EnqueueParts(ctx context.Context, m *Message, parts ...[]byte) error {
	if !ValidID(m.ID) {
		return fmt.Errorf("queue: invalid message id %q", m.ID)
	}
	if len(m.Recipients) == 0 {
		return fmt.Errorf("queue: message %s has no recipients", m.ID)
	}
	if m.Received.IsZero() {
		m.Received = s.now()
	}
	m.Size = 0
	for _, p := range parts {
		m.Size += len(p)
	}
	var stored []byte
	inFile := s.opts.LargeBody > 0 && m.Size >= s.opts.LargeBody
	if inFile {
		if err := s.writeBodyFile(m.ID, parts); err != nil {
			return err
		}
		stored = fileMarker
	} else if len(parts) == 1 {
		stored = parts[0]
	} else {
		stored = bytes.Join(parts, nil)
	}
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		if tx.Bucket(bucketMessages).Get([]byte(m.ID)) != nil {
			return fmt.Errorf("queue: message %s already exists", m.ID)
		}
		if err := tx.Bucket(bucketBodies).Put([]byte(m.ID), stored); err != nil {
			return err
		}
		if m.Ref != "" {
			if err := tx.Bucket(bucketRefs).Put(indexKey(m.Ref, m.ID), nil); err != nil {
				return err
			}
		}
		for i, r := range m.Recipients {
			r.Index = i
			initial := r.Status
			if initial == "" {
				initial = StatusQueued
			}
			r.Status = ""
			if err := tx.Bucket(bucketRcpts).Put(indexKey(lowerASCII(r.Address), m.ID), nil); err != nil {
				return err
			}
			if err := s.setStatus(tx, st, m, r, initial, m.Received); err != nil {
				return err
			}
			ev := Event{Time: m.Received, Status: initial, Source: "smtp"}
			if r.Last != nil { // the caller described why (suppressed)
				ev.Reason, ev.Text = r.Last.Reason, r.Last.Text
				r.Last = nil
			}
			r.Reason = ev.Reason
			if err := s.appendEvent(tx, st, m, r, ev); err != nil {
				return err
			}
		}
		return putMessage(tx, m)
	})
	if err != nil && inFile {
		os.Remove(s.bodyPath(m.ID)) // the transaction did not commit
	}
	return err
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
