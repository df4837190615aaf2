package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNotFound is returned for an unknown message id.
var ErrNotFound = errors.New("queue: no such message")

// ErrStorage wraps failures to commit to disk (disk full, read-only file
// system, store closed): a submission must be answered 452 4.3.1 and tried
// again later.
var ErrStorage = errors.New("queue: storage unavailable")

// ErrRefused is returned by Open when the data directory is in a state
// hermod will not guess about (in use, damaged, inconsistent). Its text says
// what is wrong and what to do.
var ErrRefused = errors.New("queue: refusing to open the store")

// Options configures a Store.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per mail event; nil discards.
	Logger *slog.Logger
	// OnCommit, when set, is told the events of every committed batch, in
	// commit order, after the commit is durable (metrics, logs). It is never
	// told about writes that rolled back.
	OnCommit func(events []Event)
	// NoSync turns off fsync (benchmarks of CPU cost only; never in production).
	NoSync bool
	// BodyDir keeps bodies of LargeBody bytes or more as files ("" means
	// "bodies" beside the store file). LargeBody 0 means DefaultLargeBody;
	// a negative value keeps every body in the store.
	BodyDir   string
	LargeBody int
	// Reserve is the free space (bytes) the spool keeps for itself on its
	// file system: new mail is refused (ErrStorage) once less is free, and a
	// reserve file of this size is released when the disk fills anyway, so
	// that outcomes can still be recorded and finished mail deleted. 0 means
	// DefaultReserve; negative turns it off.
	Reserve int64
}

// DefaultReserve is the default free-space reserve.
const DefaultReserve = 32 << 20

// Store is the bbolt-backed spool. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger
	now  func() time.Time
	dir  string
	lock *os.File

	commits chan *commitReq
	stop    chan struct{}
	stopped chan struct{}

	commitCount atomic.Uint64 // transactions committed (each is an fsync)
	commitItems atomic.Uint64 // writes carried by them
	bodyErrors  atomic.Uint64 // bodies found damaged before delivery
	unwritable  atomic.Bool   // the last commit failed for lack of storage

	space *reserve

	mu       sync.Mutex
	eventsCh chan struct{} // closed and replaced when events are appended
	wakeCh   chan struct{} // buffered 1: new due work
	counts   map[Status]int64
	batchObs func(n int)
	floors   []func() uint64 // KeepEventsAfter
	dueHint  time.Time       // earliest due time committed since the scheduler last looked
	offers   []func([]Event) // followers told of each committed batch

	// backups running (backup.go), and the body files whose removal waits
	// for them to end; under mu.
	backups   int
	keptFiles []string
	// afterSnapshot, in tests, runs between a backup's read transaction and
	// its linking of the body files.
	afterSnapshot func()
}

// Open opens (creating if needed) the store file at path; its directory is
// created with mode 0700 and locked for this process. It refuses, with an
// error wrapping ErrRefused that says what to do, a directory that another
// process holds, a store file that is empty, truncated or damaged, and a new
// store beside body files that a lost store referred to. A store written by
// hermod v0 is migrated (and the migration logged).
func Open(path string, opts Options) (*Store, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: create data dir: %w", err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BodyDir == "" {
		opts.BodyDir = filepath.Join(dir, "bodies")
	}
	if opts.LargeBody == 0 {
		opts.LargeBody = DefaultLargeBody
	}
	if opts.Reserve == 0 {
		opts.Reserve = DefaultReserve
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Store{
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Now,
		dir:      dir,
		lock:     lock,
		commits:  make(chan *commitReq, 1024),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
		eventsCh: make(chan struct{}),
		wakeCh:   make(chan struct{}, 1),
		counts:   map[Status]int64{},
	}
	if err := s.open(path); err != nil {
		lock.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

func (s *Store) open(path string) error {
	fresh, err := checkStoreFile(path, s.opts.BodyDir)
	if err != nil {
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      2 * time.Second,
		FreelistType: bolt.FreelistMapType,
		NoSync:       s.opts.NoSync,
	})
	if err != nil {
		return fmt.Errorf("%w: %s cannot be opened (%v): it may be damaged; run `hermod store check` and restore it from a backup if it fails", ErrRefused, path, err)
	}
	s.db = db
	if err := s.initialise(fresh); err != nil {
		db.Close()
		return err
	}
	if err := s.moveOrphans(); err != nil {
		db.Close()
		return err
	}
	if s.space, err = newReserve(s.dir, s.opts.Reserve, s.log); err != nil {
		db.Close()
		return err
	}
	return nil
}

// initialise creates the buckets of a new store, migrates a v0 store, and
// loads the counters.
func (s *Store) initialise(fresh bool) error {
	var v0 bool
	err := s.db.View(func(tx *bolt.Tx) error {
		v0 = tx.Bucket([]byte("messages")) != nil
		if meta := tx.Bucket(bucketMeta); meta != nil && !v0 {
			if v := string(meta.Get([]byte("schema"))); v != schemaVersion {
				return fmt.Errorf("%w: the store has schema %q; this hermod reads schema %s (a newer hermod wrote it?)", ErrRefused, v, schemaVersion)
			}
		} else if !fresh && !v0 && tx.Bucket(bucketEvents) == nil {
			// Neither ours nor v0: not a hermod store.
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return fmt.Errorf("%w: %s is a bbolt file but not a hermod store", ErrRefused, s.db.Path())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if v0 {
		if err := s.migrateV0(); err != nil {
			return err
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range spoolBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("queue: initialise %s: %w", s.db.Path(), err)
			}
		}
		if err := tx.Bucket(bucketMeta).Put([]byte("schema"), []byte(schemaVersion)); err != nil {
			return err
		}
		return tx.Bucket(bucketCounts).ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				s.counts[Status(k)] = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
}

// DB returns the underlying bbolt database, for the local control data
// (suppressions, accounts and domains, the webhook outbox), which keeps its
// own buckets in the same file under its own transactions. The spool never
// calls into them inside its transactions, and they never touch its buckets.
func (s *Store) DB() *bolt.DB { return s.db }

// Close stops the committer and closes the file. Writes already handed to
// the committer finish first; later ones fail with ErrStorage.
func (s *Store) Close() error {
	s.mu.Lock()
	select {
	case <-s.stop:
		s.mu.Unlock()
		return nil
	default:
	}
	close(s.stop)
	s.mu.Unlock()
	<-s.stopped
	err := s.db.Close()
	s.lock.Close()
	return err
}

// Commits returns how many write transactions (fsyncs) the store has
// committed and how many writes they carried.
func (s *Store) Commits() (txs, writes uint64) {
	return s.commitCount.Load(), s.commitItems.Load()
}

// BodyErrors returns how many times a body was found damaged (wrong size or
// checksum) before a delivery; each such delivery was deferred instead.
func (s *Store) BodyErrors() uint64 { return s.bodyErrors.Load() }

// Writable reports whether the last commit succeeded. While it is false the
// Runner starts no delivery.
func (s *Store) Writable() bool { return !s.unwritable.Load() }

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

// Probe makes a tiny write to find out whether the store can be written
// again; it returns the commit's error.
func (s *Store) Probe(ctx context.Context) error {
	now := s.now()
	return s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		return tx.Bucket(bucketMeta).Put([]byte("probe"), []byte(now.UTC().Format(time.RFC3339Nano)))
	})
}
