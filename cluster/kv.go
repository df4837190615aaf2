// Package cluster keeps hermod's control data (control.Store) in etcd, for
// several nodes that make one relay, with a local replica on each node that
// every read is served from.
//
// Layout in etcd: the value of key K of bucket B is at
//
//	Prefix + "/c/" + B + "/" + hex(K)
//
// (hex keeps binary keys intact and preserves their byte order). Values of
// secret buckets (control.BucketSpec.Secret: DKIM private keys) are sealed
// with KVOptions.Seal before they leave the node; the replica holds them
// opened, as a single node's bbolt file does, so it is created mode 0600.
//
// The replica is a bbolt file with one bucket per control bucket, each value
// stored behind the 8-byte big-endian etcd ModRevision of its key, and a meta
// bucket with the etcd revision applied, the etcd cluster ID and the prefix.
// It is loaded from a snapshot of the prefix at one revision and kept
// current by a watch from the next revision; a watch that reports compaction
// reloads the whole snapshot.
package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	"github.com/hermod-mta/hermod/control"
)

const (
	// metaBucket is the replica's own bucket (no control bucket starts
	// with "_").
	metaBucket = "_replica"
	// pageSize is how many keys one range read of a full load returns.
	// etcd 3.4 walks the whole rest of the range on every limited read
	// (to count it), so a full load reads ranges small enough to be a
	// few pages each: a range that holds more than splitAt keys is split
	// by the next hex digit of its keys (loadRange).
	pageSize = 5000
	splitAt  = 4 * pageSize
	// maxSplitDepth bounds the splitting: 16^8 ranges is far past any
	// list etcd holds.
	maxSplitDepth = 8
	// MaxTxnOps is etcd's default --max-txn-ops: an Update may write at
	// most this many keys, and compare at most this many keys it read.
	MaxTxnOps = 128
	// maxAttempts bounds how often Update runs fn after losing a race.
	maxAttempts = 20
	// revLen is the length of the ModRevision stored before each value.
	revLen = 8
)

var (
	metaRevision  = []byte("revision")
	metaClusterID = []byte("cluster_id")
	metaPrefix    = []byte("prefix")
)

// KVOptions configure OpenKV.
type KVOptions struct {
	// Prefix is the etcd key prefix of this relay's data, e.g. "/hermod".
	Prefix string
	// ReplicaPath is the bbolt file of the local replica, owned by the
	// KV (e.g. data_dir/control.db); created mode 0600.
	ReplicaPath string
	// Seal seals the values of secret buckets; required when a bucket of
	// control.Buckets is secret.
	Seal Sealer
	// Logger gets reloads, reconnections and staleness; nil discards.
	Logger *slog.Logger
	// RequestTimeout bounds each etcd request of an Update and of a full
	// load, and how long an Update waits for the replica to apply its
	// write. Default 5s.
	RequestTimeout time.Duration
	// StaleAfter is how long the replica may go without hearing from etcd
	// (an event or a progress notification, asked for every StaleAfter/3)
	// before Stale reports it stale. Default 10s.
	StaleAfter time.Duration
	// Now is the clock of Stale; nil means time.Now.
	Now func() time.Time

	// pageSize and splitAt replace the constants of the same names
	// (tests of the range splitting).
	pageSize, splitAt int64
}

// KV is a control.Store on etcd with a local replica.
type KV struct {
	cli    *clientv3.Client
	w      clientv3.Watcher
	db     *bbolt.DB
	opts   KVOptions
	keyPfx string // Prefix + "/c/"
	secret map[string]bool
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	kick   chan struct{} // cuts the follower's reconnect backoff short

	mu      sync.Mutex
	applied int64
	// resume is the revision up to which every event is known to be in
	// the replica: the snapshot's, then the events' own. A watch is
	// resumed from it, never from applied, which progress notifications
	// also advance: etcd before 3.4.24 may answer a progress request
	// with a revision past events still on their way on the same stream
	// (etcd-io/etcd#15220), and a watch resumed from there would skip
	// them. The replica's meta records resume.
	resume    int64
	clusterID uint64
	verified  bool // clusterID and applied were checked against etcd
	advanced  chan struct{}
	lastHeard time.Time
	following bool
	wctx      context.Context
	subs      []func([]control.Change)
	reloads   int64
}

var _ control.Store = (*KV)(nil)

// OpenKV opens (or creates) the replica and loads it from etcd. When etcd
// does not answer within the request timeout, it opens from the replica if
// that holds data of the same prefix (and keeps trying in the background),
// or fails if there is none.
func OpenKV(ctx context.Context, cli *clientv3.Client, opts KVOptions) (*KV, error) {
	opts.Prefix = strings.TrimRight(opts.Prefix, "/")
	if opts.Prefix == "" {
		return nil, errors.New("cluster: open: an etcd prefix is required (e.g. /hermod)")
	}
	if opts.ReplicaPath == "" {
		return nil, errors.New("cluster: open: a replica path is required")
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = 10 * time.Second
	}
	if opts.pageSize <= 0 {
		opts.pageSize, opts.splitAt = pageSize, splitAt
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secret := map[string]bool{}
	for _, b := range control.Buckets {
		secret[b.Name] = b.Secret
		if b.Secret && opts.Seal == nil {
			return nil, fmt.Errorf("cluster: open: bucket %s is secret and no Sealer is set", b.Name)
		}
	}
	db, err := bbolt.Open(opts.ReplicaPath, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("cluster: open replica %s: %w", opts.ReplicaPath, err)
	}
	if err := os.Chmod(opts.ReplicaPath, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("cluster: open replica: %w", err)
	}
	var rev int64
	var cid uint64
	var pfx string
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range append([]string{metaBucket}, bucketNames()...) {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		m := tx.Bucket([]byte(metaBucket))
		if v := m.Get(metaRevision); len(v) == 8 {
			rev = int64(binary.BigEndian.Uint64(v))
		}
		if v := m.Get(metaClusterID); len(v) == 8 {
			cid = binary.BigEndian.Uint64(v)
		}
		pfx = string(m.Get(metaPrefix))
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cluster: open replica %s: %w", opts.ReplicaPath, err)
	}
	k := &KV{
		cli:      cli,
		w:        clientv3.NewWatcher(cli),
		db:       db,
		opts:     opts,
		keyPfx:   opts.Prefix + "/c/",
		secret:   secret,
		log:      log,
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		advanced: make(chan struct{}),
	}
	k.ctx, k.cancel = context.WithCancel(context.Background())
	usable := rev > 0 && pfx == opts.Prefix
	err = k.reload(ctx)
	if err != nil {
		if !usable {
			k.w.Close()
			db.Close()
			why := "no copy of the control data yet"
			if rev > 0 && pfx != opts.Prefix {
				why = fmt.Sprintf("the replica %s holds prefix %q, not %q", opts.ReplicaPath, pfx, opts.Prefix)
			}
			return nil, fmt.Errorf("cluster: %s and etcd at %s does not answer: start etcd or check cluster.etcd_endpoints: %w",
				why, strings.Join(cli.Endpoints(), ","), err)
		}
		k.applied, k.resume, k.clusterID = rev, rev, cid
		log.Warn("cluster: etcd does not answer: serving the control data from the local replica, which may be stale",
			"replica", opts.ReplicaPath, "revision", rev, "endpoints", cli.Endpoints(), "err", err)
	}
	go k.follow()
	return k, nil
}

func bucketNames() []string {
	var names []string
	for _, b := range control.Buckets {
		names = append(names, b.Name)
	}
	return names
}

// etcdKey is the etcd key of key of bucket.
func (k *KV) etcdKey(bucket string, key []byte) string {
	return k.keyPfx + bucket + "/" + hex.EncodeToString(key)
}

// parseKey splits an etcd key into its bucket and key; ok is false for a
// key that is not a control key of a known bucket.
func (k *KV) parseKey(ek []byte) (bucket string, key []byte, ok bool) {
	rest, found := bytes.CutPrefix(ek, []byte(k.keyPfx))
	if !found {
		return "", nil, false
	}
	i := bytes.IndexByte(rest, '/')
	if i < 0 {
		return "", nil, false
	}
	bucket = string(rest[:i])
	if _, known := k.secret[bucket]; !known {
		return "", nil, false
	}
	key, err := hex.DecodeString(string(rest[i+1:]))
	if err != nil || len(key) == 0 {
		return "", nil, false
	}
	return bucket, key, true
}

// replicaValue is what the replica stores for an etcd key: its ModRevision
// and its (opened) value.
func (k *KV) replicaValue(bucket string, key []byte, kv *mvccpb.KeyValue) ([]byte, error) {
	v := kv.Value
	if k.secret[bucket] {
		var err error
		if v, err = k.opts.Seal.Open(bucket, key, v); err != nil {
			return nil, err
		}
	}
	out := make([]byte, revLen, revLen+len(v))
	binary.BigEndian.PutUint64(out, uint64(kv.ModRevision))
	return append(out, v...), nil
}

func putMeta(tx *bbolt.Tx, rev int64, cid uint64, prefix string) error {
	m := tx.Bucket([]byte(metaBucket))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	if err := m.Put(metaRevision, b[:]); err != nil {
		return err
	}
	if cid != 0 {
		var c [8]byte
		binary.BigEndian.PutUint64(c[:], cid)
		if err := m.Put(metaClusterID, c[:]); err != nil {
			return err
		}
	}
	return m.Put(metaPrefix, []byte(prefix))
}

// reload replaces the replica's contents with a snapshot of the prefix at
// one revision, read in pages, in one bbolt transaction.
func (k *KV) reload(ctx context.Context) error {
	start := time.Now()
	// The revision of the snapshot: one cheap read of a single key.
	rctx, cancel := context.WithTimeout(ctx, k.opts.RequestTimeout)
	head, err := k.cli.Get(rctx, k.keyPfx)
	cancel()
	if err != nil {
		return fmt.Errorf("cluster: full load: read the revision of %s: %w", k.keyPfx, err)
	}
	rev, cid := head.Header.Revision, head.Header.ClusterId
	n := 0
	err = k.db.Update(func(tx *bbolt.Tx) error {
		n = 0
		for _, name := range bucketNames() {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return fmt.Errorf("empty bucket %s: %w", name, err)
			}
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		for _, name := range bucketNames() {
			m, err := k.loadRange(ctx, tx, k.keyPfx+name+"/", rev, 0)
			n += m
			if err != nil {
				return err
			}
		}
		return putMeta(tx, rev, cid, k.opts.Prefix)
	})
	if err != nil {
		return fmt.Errorf("cluster: full load: %w", err)
	}
	k.mu.Lock()
	k.applied, k.resume, k.clusterID, k.verified = rev, rev, cid, true
	k.lastHeard = k.opts.Now()
	k.reloads++
	reloads := k.reloads
	k.signalLocked()
	subs := append([]func([]control.Change){}, k.subs...)
	k.mu.Unlock()
	k.log.Info("cluster: loaded the control data from a snapshot", "revision", rev, "keys", n,
		"took", time.Since(start), "loads", reloads)
	for _, fn := range subs {
		fn([]control.Change{{Reload: true}})
	}
	return nil
}

// loadRange copies every key under the etcd prefix p at rev into tx and
// returns how many it copied. Each read has its own timeout. A range
// holding more than splitAt keys is loaded as the 16 ranges of its next hex
// digit (the keys below a bucket's prefix are hex), so that no read makes
// etcd 3.4 walk much more than a page.
func (k *KV) loadRange(ctx context.Context, tx *bbolt.Tx, p string, rev int64, depth int) (int, error) {
	end := clientv3.GetPrefixRangeEnd(p)
	from, n := p, 0
	for first := true; ; first = false {
		rctx, cancel := context.WithTimeout(ctx, k.opts.RequestTimeout)
		resp, err := k.cli.Get(rctx, from, clientv3.WithRange(end), clientv3.WithLimit(k.opts.pageSize), clientv3.WithRev(rev))
		cancel()
		if err != nil {
			return n, fmt.Errorf("read %s at revision %d: %w", p, rev, err)
		}
		if first && resp.Count > k.opts.splitAt && depth < maxSplitDepth {
			total := 0
			for _, digit := range "0123456789abcdef" {
				m, err := k.loadRange(ctx, tx, p+string(digit), rev, depth+1)
				total += m
				if err != nil {
					return n + total, err
				}
			}
			return n + total, nil
		}
		for _, kv := range resp.Kvs {
			bucket, key, ok := k.parseKey(kv.Key)
			if !ok {
				continue
			}
			v, err := k.replicaValue(bucket, key, kv)
			if err != nil {
				k.log.Error("cluster: a control value does not open: left out of the replica", "key", string(kv.Key), "err", err)
				continue
			}
			if err := tx.Bucket([]byte(bucket)).Put(key, v); err != nil {
				return n, fmt.Errorf("replica put: %w", err)
			}
			n++
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return n, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// signalLocked wakes everyone waiting for the applied revision to advance.
func (k *KV) signalLocked() {
	close(k.advanced)
	k.advanced = make(chan struct{})
}

// follow keeps the replica current until Close: watch, and after an error
// watch again from the last applied revision, with backoff.
func (k *KV) follow() {
	defer close(k.done)
	backoff := 100 * time.Millisecond
	for k.ctx.Err() == nil {
		progressed, err := k.watchOnce()
		k.mu.Lock()
		k.following, k.wctx = false, nil
		k.mu.Unlock()
		if k.ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = 100 * time.Millisecond
		}
		if err == nil {
			continue
		}
		k.log.Warn("cluster: the watch of etcd ended: reconnecting", "from_revision", k.Revision()+1, "in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-k.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-k.kick:
			// An Update waits for the replica: etcd answered it, so
			// try now.
			t.Stop()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watchOnce checks the replica against etcd if that was not done, then
// watches from the next revision until the watch fails. progressed tells
// whether anything was applied.
func (k *KV) watchOnce() (progressed bool, err error) {
	k.mu.Lock()
	verified, applied, cid := k.verified, k.resume, k.clusterID
	k.mu.Unlock()
	// Before watching from applied+1, read at applied: etcd lets a watch
	// start at the compaction revision itself, but compaction has dropped
	// that revision's deletions, so a watch from there would miss them.
	// A read at applied fails with ErrCompacted in that case too.
	ctx, cancel := context.WithTimeout(k.ctx, k.opts.RequestTimeout)
	resp, err := k.cli.Get(ctx, k.keyPfx, clientv3.WithRev(applied), clientv3.WithCountOnly())
	cancel()
	var why string
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		why = "etcd compacted past the replica's revision"
	case errors.Is(err, rpctypes.ErrFutureRev):
		why = "the replica is ahead of etcd"
	case err != nil:
		return false, fmt.Errorf("etcd at %s: %w", strings.Join(k.cli.Endpoints(), ","), err)
	case !verified && resp.Header.ClusterId != cid:
		why = fmt.Sprintf("the replica is of etcd cluster %x, not %x", cid, resp.Header.ClusterId)
	}
	if why != "" {
		k.log.Warn("cluster: reloading the full snapshot: "+why, "replica_revision", applied)
		return true, k.reload(k.ctx)
	}
	if !verified {
		k.mu.Lock()
		k.verified = true
		k.mu.Unlock()
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(k.ctx))
	defer cancel()
	ch := k.w.Watch(wctx, k.keyPfx, clientv3.WithPrefix(), clientv3.WithRev(applied+1),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	k.mu.Lock()
	k.wctx = wctx
	k.mu.Unlock()
	tick := time.NewTicker(max(k.opts.StaleAfter/3, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return progressed, nil
		case <-tick.C:
			_ = k.w.RequestProgress(wctx)
		case resp, ok := <-ch:
			if !ok {
				return progressed, errors.New("the watch channel closed")
			}
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				k.log.Warn("cluster: etcd compacted past the replica's revision: reloading the full snapshot",
					"replica_revision", k.Revision(), "compact_revision", resp.CompactRevision)
				return true, k.reload(k.ctx)
			}
			if err := resp.Err(); err != nil {
				return progressed, err
			}
			if resp.Canceled {
				return progressed, errors.New("etcd canceled the watch")
			}
			if resp.Created {
				k.mu.Lock()
				k.following, k.lastHeard = true, k.opts.Now()
				k.mu.Unlock()
				continue
			}
			if err := k.apply(&resp); err != nil {
				return progressed, err
			}
			progressed = true
		}
	}
}

// apply writes one watch response's events to the replica in one bbolt
// transaction with the revision they bring it to, then tells subscribers.
func (k *KV) apply(resp *clientv3.WatchResponse) error {
	k.mu.Lock()
	rev, resume := k.applied, k.resume
	k.mu.Unlock()
	next, nextResume := rev, resume
	for _, ev := range resp.Events {
		next = max(next, ev.Kv.ModRevision)
		nextResume = max(nextResume, ev.Kv.ModRevision)
	}
	if len(resp.Events) == 0 {
		// A progress notification: every event up to the header
		// revision has been sent, if the server is right (see resume).
		// (A response with events may carry a header revision past
		// events still to come, so only the events' own revisions count
		// there.)
		next = max(next, resp.Header.Revision)
	}
	var changes []control.Change
	if len(resp.Events) > 0 {
		err := k.db.Update(func(tx *bbolt.Tx) error {
			for _, ev := range resp.Events {
				bucket, key, ok := k.parseKey(ev.Kv.Key)
				if !ok {
					continue
				}
				b := tx.Bucket([]byte(bucket))
				// Events replayed after a resume may be older than what
				// the replica has: a key never goes back in time.
				if cur := b.Get(key); cur != nil && modRevision(cur) > ev.Kv.ModRevision {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					if err := b.Delete(key); err != nil {
						return err
					}
				} else {
					v, err := k.replicaValue(bucket, key, ev.Kv)
					if err != nil {
						k.log.Error("cluster: a control value does not open: left out of the replica", "key", string(ev.Kv.Key), "err", err)
						if err := b.Delete(key); err != nil {
							return err
						}
					} else if err := b.Put(key, v); err != nil {
						return err
					}
				}
				changes = append(changes, control.Change{Bucket: bucket, Key: key})
			}
			return putMeta(tx, nextResume, 0, k.opts.Prefix)
		})
		if err != nil {
			return fmt.Errorf("cluster: apply to the replica: %w", err)
		}
	}
	k.mu.Lock()
	k.applied, k.resume = next, nextResume
	k.lastHeard = k.opts.Now()
	k.following = true
	k.signalLocked()
	subs := append([]func([]control.Change){}, k.subs...)
	k.mu.Unlock()
	if len(changes) > 0 {
		for _, fn := range subs {
			fn(changes)
		}
	}
	return nil
}

// Revision is the etcd revision the replica has applied.
func (k *KV) Revision() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.applied
}

// Reloads counts the full loads from a snapshot, the one at open included.
func (k *KV) Reloads() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reloads
}

// Stale reports whether the replica may be behind etcd: not watching, or
// nothing heard from etcd (an event or a progress notification) for longer
// than StaleAfter. since is when etcd was last heard (zero if never).
func (k *KV) Stale() (since time.Time, stale bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastHeard, !k.following || k.opts.Now().Sub(k.lastHeard) > k.opts.StaleAfter
}

// Subscribe implements control.Store: fn is called from the goroutine that
// applies the watch, after the changes are visible to View, for every
// change (this node's own writes included) and with Reload after a full
// load.
func (k *KV) Subscribe(fn func([]control.Change)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.subs = append(k.subs, fn)
}

// Close stops following etcd and closes the replica. It does not close the
// etcd client.
func (k *KV) Close() error {
	var err error
	k.once.Do(func() {
		k.cancel()
		k.w.Close()
		<-k.done
		err = k.db.Close()
	})
	return err
}

// waitApplied waits until the replica has applied rev, asking etcd for a
// progress notification while it waits (the revision may be of a write
// outside the prefix, which brings no event).
//
// With own, rev is the revision of this node's own committed write, whose
// events are sure to come: the wait is for the events themselves (resume),
// not for a progress notification that may run ahead of them (see resume).
func (k *KV) waitApplied(rev int64, d time.Duration, own bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		k.mu.Lock()
		applied, ch, wctx, following := k.applied, k.advanced, k.wctx, k.following
		if own {
			applied = k.resume
		}
		k.mu.Unlock()
		if applied >= rev {
			return nil
		}
		if !following {
			select {
			case k.kick <- struct{}{}:
			default:
			}
		}
		select {
		case <-ch:
		case <-tick.C:
			if wctx != nil {
				_ = k.w.RequestProgress(wctx)
			}
		case <-deadline.C:
			return fmt.Errorf("the replica is at revision %d after %v, waiting for %d", applied, d, rev)
		case <-k.ctx.Done():
			return errors.New("cluster: closed")
		}
	}
}

// View implements control.Store. It reads only the replica.
func (k *KV) View(fn func(control.Tx) error) error {
	return k.db.View(func(tx *bbolt.Tx) error { return fn(viewTx{tx}) })
}

// Update implements control.Store, optimistically: fn runs against the
// replica with its writes buffered, and the writes are committed as one etcd
// transaction that requires every key fn read with Get to still have the
// ModRevision the replica had (0 for a key it did not have). Keys seen only
// through ForEach or a Cursor are not compared. When another writer got
// there first, Update waits for the replica to catch up and runs fn again
// (at most 20 times). After a commit it waits (up to RequestTimeout) until
// the replica has the write, so a View that follows sees it. An fn that
// writes nothing commits nothing and does not touch etcd.
func (k *KV) Update(fn func(control.Tx) error) error {
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		t := &writeTx{buckets: map[string]*writeBucket{}}
		err := k.db.View(func(tx *bbolt.Tx) error {
			t.btx = tx
			return fn(t)
		})
		if err != nil {
			return err
		}
		cmps, ops, err := k.txnOps(t)
		if err != nil {
			return err
		}
		if len(ops) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), k.opts.RequestTimeout)
		resp, err := k.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil {
			var ee rpctypes.EtcdError
			if errors.As(err, &ee) && ee.Code() == codes.InvalidArgument {
				return fmt.Errorf("cluster: update: etcd refused the transaction: %w", err)
			}
			return k.unavailable("update", err)
		}
		if resp.Succeeded {
			if err := k.waitApplied(resp.Header.Revision, k.opts.RequestTimeout, true); err != nil {
				k.log.Warn("cluster: an update was committed but the replica has not applied it yet", "revision", resp.Header.Revision, "err", err)
			}
			return nil
		}
		if err := k.waitApplied(resp.Header.Revision, k.opts.RequestTimeout, false); err != nil {
			return k.unavailable("update (catching up after a conflict)", err)
		}
	}
	return fmt.Errorf("cluster: update: gave up after %d tries: the keys it reads kept changing", maxAttempts)
}

func (k *KV) unavailable(what string, err error) error {
	return fmt.Errorf("cluster: %s: etcd at %s: %w: %w", what, strings.Join(k.cli.Endpoints(), ","), control.ErrUnavailable, err)
}

// txnOps turns a transaction's reads into compares and its buffered writes
// into operations, in bucket and key order.
func (k *KV) txnOps(t *writeTx) ([]clientv3.Cmp, []clientv3.Op, error) {
	names := make([]string, 0, len(t.buckets))
	for n := range t.buckets {
		names = append(names, n)
	}
	sort.Strings(names)
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, n := range names {
		b := t.buckets[n]
		read := make([]string, 0, len(b.reads))
		for key := range b.reads {
			read = append(read, key)
		}
		sort.Strings(read)
		for _, key := range read {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k.etcdKey(n, []byte(key))), "=", b.reads[key]))
		}
		for _, key := range b.keys {
			w := b.writes[key]
			ek := k.etcdKey(n, []byte(key))
			if w.del {
				ops = append(ops, clientv3.OpDelete(ek))
				continue
			}
			v := w.val
			if k.secret[n] {
				var err error
				if v, err = k.opts.Seal.Seal(n, []byte(key), v); err != nil {
					return nil, nil, fmt.Errorf("cluster: update: %w", err)
				}
			}
			ops = append(ops, clientv3.OpPut(ek, string(v)))
		}
	}
	if len(ops) > MaxTxnOps || len(cmps) > MaxTxnOps {
		return nil, nil, fmt.Errorf("cluster: update: %d writes and %d keys read by Get in one transaction; etcd takes at most %d of each",
			len(ops), len(cmps), MaxTxnOps)
	}
	return cmps, ops, nil
}
