package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"

	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/nodes"
	"github.com/hermod-mta/hermod/smtpd"
)

// A bounce may reach any node's bounce listener (the bounce host's MX
// points at all of them), but only the node that owns the message (its id
// names it) has the message and its recipients. The receiving node keeps
// the report in its own store (bucket forwardsBucket of hermod.db, written
// before the listener answers 250) and forwards it to the owner's API,
// retrying until the owner has applied it: a bounce is never dropped
// because its owner is down.

var forwardsBucket = []byte("cluster-forwards")

// forwardPath is the owner's API endpoint for forwarded bounces.
const forwardPath = "/v1/cluster/bounces"

// forwardMaxAge is how long a forward waits for its owner before it is
// dropped (logged): a node gone for good (hermod cluster forget) must not
// leave its bounces kept forever.
const forwardMaxAge = 7 * 24 * time.Hour

// forward is one report for one recipient of another node's message.
type forward struct {
	MessageID string         `json:"message_id"`
	Index     int            `json:"index"`
	Remote    string         `json:"remote"`
	Report    *bounce.Report `json:"report"`
	Received  time.Time      `json:"received"`
}

// forwarder keeps and sends forwards.
type forwarder struct {
	db     *bbolt.DB
	reg    *nodes.Registry
	auth   *nodes.Auth
	client *http.Client
	log    *slog.Logger
	now    func() time.Time
	kick   chan struct{}
	// Forwarded counts forwards the owner applied (tests, metrics).
	mu        sync.Mutex
	forwarded int
}

func newForwarder(db *bbolt.DB, reg *nodes.Registry, auth *nodes.Auth, client *http.Client, log *slog.Logger, now func() time.Time) (*forwarder, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(forwardsBucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cluster forwards: %w", err)
	}
	return &forwarder{db: db, reg: reg, auth: auth, client: client, log: log, now: now, kick: make(chan struct{}, 1)}, nil
}

// Add keeps f durably; it returns once f is on disk.
func (fw *forwarder) Add(f forward) error {
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	err = fw.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(forwardsBucket)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], seq)
		return b.Put(k[:], data)
	})
	if err != nil {
		return fmt.Errorf("keep bounce forward: %w", err)
	}
	select {
	case fw.kick <- struct{}{}:
	default:
	}
	return nil
}

// Pending returns how many forwards wait for their owner.
func (fw *forwarder) Pending() int {
	n := 0
	_ = fw.db.View(func(tx *bbolt.Tx) error {
		n = tx.Bucket(forwardsBucket).Stats().KeyN
		return nil
	})
	return n
}

// Forwarded returns how many forwards their owner applied.
func (fw *forwarder) Forwarded() int {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.forwarded
}

// Run sends pending forwards, oldest first, until ctx is done. A forward
// whose owner does not answer waits and is tried again (1 s, doubling up
// to a minute); the forwards of other owners are not held up by it.
func (fw *forwarder) Run(ctx context.Context) {
	wait := time.Second
	for ctx.Err() == nil {
		sent, failed := fw.pass(ctx)
		switch {
		case failed:
			wait = min(2*wait, time.Minute)
		case sent > 0:
			wait = time.Second
			continue
		default:
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-fw.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// pass tries every pending forward once; an owner that failed is skipped
// for the rest of the pass.
func (fw *forwarder) pass(ctx context.Context) (sent int, failed bool) {
	type item struct {
		key []byte
		f   forward
	}
	var items []item
	_ = fw.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(forwardsBucket).Cursor()
		for k, v := c.First(); k != nil && len(items) < 1000; k, v = c.Next() {
			var f forward
			if err := json.Unmarshal(v, &f); err != nil {
				fw.log.Error("cluster: unreadable bounce forward kept", "key", fmt.Sprintf("%x", k), "err", err)
				continue
			}
			items = append(items, item{bytes.Clone(k), f})
		}
		return nil
	})
	down := map[string]bool{}
	for _, it := range items {
		owner := nodeOf(it.f.MessageID)
		if down[owner] || ctx.Err() != nil {
			continue
		}
		done, err := fw.send(ctx, owner, it.f)
		if !done && fw.now().Sub(it.f.Received) > forwardMaxAge {
			fw.log.Error("cluster: bounce forward dropped: its owner did not take it for a week", "owner", owner,
				"msgid", it.f.MessageID, "received", it.f.Received, "err", err)
			done, err = true, nil
		}
		if err != nil {
			down[owner] = true
			failed = true
			fw.log.Warn("cluster: bounce forward waits for its owner", "owner", owner, "msgid", it.f.MessageID, "err", err)
			continue
		}
		if !done {
			continue
		}
		if err := fw.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(forwardsBucket).Delete(it.key) }); err != nil {
			fw.log.Error("cluster: forget a sent bounce forward", "err", err)
			return sent, true
		}
		sent++
		fw.mu.Lock()
		fw.forwarded++
		fw.mu.Unlock()
	}
	return sent, failed
}

// send posts f to owner. done is true when f is finished with: applied, or
// refused for good (4xx: the owner has no such message); err is set when
// it should be tried again.
func (fw *forwarder) send(ctx context.Context, owner string, f forward) (done bool, err error) {
	n, ok := fw.reg.Lookup(owner)
	if !ok || n.Advertise == "" {
		return false, fmt.Errorf("node %s is not in the registry (yet)", owner)
	}
	body, err := json.Marshal(f)
	if err != nil {
		return false, err
	}
	status, msg, err := askNode(ctx, fw.client, fw.auth, http.MethodPost, n.Advertise+forwardPath, body, 15*time.Second)
	if err != nil {
		return false, err
	}
	switch {
	case status == http.StatusOK:
		fw.log.Info("cluster: bounce forwarded", "owner", owner, "msgid", f.MessageID, "rcpt", f.Index)
		return true, nil
	case status >= 400 && status < 500 && status != http.StatusTooManyRequests && status != http.StatusUnauthorized:
		fw.log.Warn("cluster: bounce forward refused by its owner; dropped", "owner", owner, "msgid", f.MessageID,
			"status", status, "answer", string(msg[:min(len(msg), 4096)]))
		return true, nil
	default:
		return false, fmt.Errorf("%s answered %d: %s", owner, status, bytes.TrimSpace(msg[:min(len(msg), 4096)]))
	}
}

// forwardHandler is the owner's end: it applies a forwarded report as if
// its own bounce listener had received it, and answers 200 once the
// report is recorded (and its suppression applied, as for a local bounce).
func forwardHandler(intake *bounceIntake) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := api.PeerNode(r); !ok {
			api.WriteError(w, http.StatusForbidden, "forbidden", "only another node of the cluster may forward bounces")
			return
		}
		var f forward
		if err := json.NewDecoder(r.Body).Decode(&f); err != nil || f.Report == nil {
			api.WriteError(w, http.StatusBadRequest, "bad_json", "not a bounce forward")
			return
		}
		if !intake.local(f.MessageID) {
			api.WriteError(w, http.StatusNotFound, "not_owner", "message "+f.MessageID+" is not this node's")
			return
		}
		remote, _ := netip.ParseAddr(f.Remote)
		err := intake.apply(r.Context(), remote, smtpd.BounceRcpt{MessageID: f.MessageID, Index: f.Index}, f.Report)
		if err != nil {
			intake.log.Error("cluster: forwarded bounce not applied", "msgid", f.MessageID, "err", err)
			api.WriteError(w, http.StatusServiceUnavailable, "storage", "the bounce could not be recorded now; try again")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"applied\": %q}\n", f.MessageID)
	})
}
