package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Info is what a node publishes about itself in the registry.
type Info struct {
	ID string `json:"id"`
	// Advertise is the base URL of the node's API for the other nodes.
	Advertise string    `json:"advertise"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
	// SpoolDepth is the number of recipients still to deliver.
	SpoolDepth int64 `json:"spool_depth"`
	// Revision is the control-data etcd revision the node has applied.
	Revision int64 `json:"control_revision"`
	// StaleSince is set while the node's copy of the control data is not
	// kept current (its watch is down).
	StaleSince time.Time `json:"stale_since,omitzero"`
}

// Node is a registry entry as another node sees it.
type Node struct {
	Info
	// Alive: the node's lease is held (it heartbeats).
	Alive bool `json:"alive"`
}

// Stats is what a node reports in its heartbeat.
type Stats func() (spoolDepth, revision int64, staleSince time.Time)

// RegistryOptions configures a Registry.
type RegistryOptions struct {
	Prefix string // etcd prefix, e.g. "/hermod"
	Self   Info   // ID and Advertise; Started is set by Join
	// Heartbeat is how often the entry is renewed; the lease lasts three.
	Heartbeat time.Duration
	Stats     Stats
	// LeaseFile keeps the lease of the running process, so that a node
	// restarted after a crash takes its own entry back at once instead of
	// waiting for the old lease to run out.
	LeaseFile string
	Logger    *slog.Logger
	Now       func() time.Time
}

// Registry is this node's entry in the cluster's node registry and the
// node's view of the others: every node's last known Info
// (prefix/nodes/ID, kept) and which are alive (prefix/alive/ID, on the
// node's lease).
type Registry struct {
	cli  *clientv3.Client
	opts RegistryOptions
	log  *slog.Logger

	mu    sync.Mutex
	lease clientv3.LeaseID
	known map[string]Info
	alive map[string]Info
}

// NewRegistry returns the registry of cli under opts.Prefix. Nothing is
// written until Join.
func NewRegistry(cli *clientv3.Client, opts RegistryOptions) *Registry {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Stats == nil {
		opts.Stats = func() (int64, int64, time.Time) { return 0, 0, time.Time{} }
	}
	return &Registry{cli: cli, opts: opts, log: opts.Logger, known: map[string]Info{}, alive: map[string]Info{}}
}

func (r *Registry) knownKey(id string) string { return r.opts.Prefix + "/nodes/" + id }
func (r *Registry) aliveKey(id string) string { return r.opts.Prefix + "/alive/" + id }

// ErrNodeIDInUse is matched when another running process holds the node id.
var ErrNodeIDInUse = errors.New("node id in use")

// Join puts this node in the registry on a new lease. It fails with
// ErrNodeIDInUse when another live process has the same node id (two
// nodes configured alike), and with an etcd error when etcd does not
// answer.
func (r *Registry) Join(ctx context.Context) error {
	ttl := int64(3 * r.opts.Heartbeat / time.Second)
	if ttl < 2 {
		ttl = 2
	}
	id := r.opts.Self.ID
	r.dropOwnOldLease(ctx)
	grant, err := r.cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("nodes: lease: %w", err)
	}
	self := r.info()
	self.Started = r.opts.Now().UTC()
	data, _ := json.Marshal(self)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.aliveKey(id)), "=", 0)).
		Then(clientv3.OpPut(r.aliveKey(id), string(data), clientv3.WithLease(grant.ID)),
			clientv3.OpPut(r.knownKey(id), string(data))).
		Else(clientv3.OpGet(r.aliveKey(id))).Commit()
	if err != nil {
		_, _ = r.cli.Revoke(context.WithoutCancel(ctx), grant.ID)
		return fmt.Errorf("nodes: join: %w", err)
	}
	if !resp.Succeeded {
		_, _ = r.cli.Revoke(context.WithoutCancel(ctx), grant.ID)
		var other Info
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			_ = json.Unmarshal(kvs[0].Value, &other)
		}
		return fmt.Errorf("%w: cluster.node_id %q is held by a running node (advertise %s, up since %s); give every node its own node_id",
			ErrNodeIDInUse, id, other.Advertise, other.Started.Format(time.RFC3339))
	}
	r.mu.Lock()
	r.lease = grant.ID
	r.opts.Self.Started = self.Started
	r.mu.Unlock()
	if r.opts.LeaseFile != "" {
		if err := os.WriteFile(r.opts.LeaseFile, []byte(strconv.FormatInt(int64(grant.ID), 10)+"\n"), 0o600); err != nil {
			r.log.Warn("cluster: keep lease id", "file", r.opts.LeaseFile, "err", err)
		}
	}
	r.log.Info("cluster: joined", "node", id, "advertise", r.opts.Self.Advertise, "lease_ttl_s", ttl)
	return nil
}

// dropOwnOldLease revokes the lease a previous run of this node left behind
// (kill -9), found in LeaseFile, if it still holds our alive key.
func (r *Registry) dropOwnOldLease(ctx context.Context) {
	if r.opts.LeaseFile == "" {
		return
	}
	data, err := os.ReadFile(r.opts.LeaseFile)
	if err != nil {
		return
	}
	old, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return
	}
	resp, err := r.cli.Get(ctx, r.aliveKey(r.opts.Self.ID))
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].Lease != old {
		return
	}
	if _, err := r.cli.Revoke(ctx, clientv3.LeaseID(old)); err == nil {
		r.log.Info("cluster: took back this node's entry from its previous run", "node", r.opts.Self.ID)
	}
}

func (r *Registry) info() Info {
	r.mu.Lock()
	self := r.opts.Self
	r.mu.Unlock()
	self.SpoolDepth, self.Revision, self.StaleSince = r.opts.Stats()
	self.Heartbeat = r.opts.Now().UTC()
	return self
}

// Run keeps this node's entry alive (joining again if the lease was lost,
// e.g. after etcd was unreachable for longer than the lease) and the view
// of the other nodes current, until ctx is done; then it leaves.
func (r *Registry) Run(ctx context.Context) {
	go r.follow(ctx)
	t := time.NewTicker(r.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.leave()
			return
		case <-t.C:
		}
		if err := r.beat(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("cluster: heartbeat", "node", r.opts.Self.ID, "err", err)
		}
	}
}

func (r *Registry) beat(ctx context.Context) error {
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, r.opts.Heartbeat)
	defer cancel()
	if lease == 0 {
		return r.Join(cctx)
	}
	if _, err := r.cli.KeepAliveOnce(cctx, lease); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return err
		}
		r.mu.Lock()
		r.lease = 0 // expired: join again on the next beat
		r.mu.Unlock()
		return fmt.Errorf("lease lost: %w", err)
	}
	data, _ := json.Marshal(r.info())
	_, err := r.cli.Put(cctx, r.aliveKey(r.opts.Self.ID), string(data), clientv3.WithLease(lease))
	return err
}

func (r *Registry) leave() {
	r.mu.Lock()
	lease := r.lease
	r.lease = 0
	r.mu.Unlock()
	if lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, lease); err != nil {
		r.log.Warn("cluster: leave", "err", err)
	}
	if r.opts.LeaseFile != "" {
		_ = os.Remove(r.opts.LeaseFile)
	}
}

// follow keeps known and alive current from a snapshot and a watch.
func (r *Registry) follow(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.followOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("cluster: node registry watch", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *Registry) followOnce(ctx context.Context) error {
	rev, err := r.Refresh(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range r.cli.Watch(wctx, r.opts.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return err
		}
		r.mu.Lock()
		for _, ev := range resp.Events {
			r.applyLocked(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
		}
		r.mu.Unlock()
	}
	return errors.New("watch closed")
}

// Refresh reads the whole registry from etcd now and returns the revision.
func (r *Registry) Refresh(ctx context.Context) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	known, err := r.cli.Get(cctx, r.opts.Prefix+"/nodes/", clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	alive, err := r.cli.Get(cctx, r.opts.Prefix+"/alive/", clientv3.WithPrefix(), clientv3.WithRev(known.Header.Revision))
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.known, r.alive = map[string]Info{}, map[string]Info{}
	for _, kv := range append(known.Kvs, alive.Kvs...) {
		r.applyLocked(string(kv.Key), kv.Value, false)
	}
	return known.Header.Revision, nil
}

func (r *Registry) applyLocked(key string, value []byte, deleted bool) {
	var m map[string]Info
	var id string
	if rest, ok := strings.CutPrefix(key, r.opts.Prefix+"/nodes/"); ok {
		m, id = r.known, rest
	} else if rest, ok := strings.CutPrefix(key, r.opts.Prefix+"/alive/"); ok {
		m, id = r.alive, rest
	} else {
		return
	}
	if deleted {
		delete(m, id)
		return
	}
	var in Info
	if json.Unmarshal(value, &in) == nil {
		m[id] = in
	}
}

// Nodes returns every node the registry knows, by id, with the freshest
// information (the alive entry's heartbeat when the node is alive).
func (r *Registry) Nodes() []Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Node
	for id, in := range r.known {
		n := Node{Info: in}
		if a, ok := r.alive[id]; ok {
			n.Info, n.Alive = a, true
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Lookup returns the node id as last known.
func (r *Registry) Lookup(id string) (Node, bool) {
	for _, n := range r.Nodes() {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}
