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
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/internal/etcdtest"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// node opens a KV on prefix with its replica in dir.
func node(t *testing.T, cli *clientv3.Client, prefix, dir string) *KV {
	t.Helper()
	k, err := openNode(cli, prefix, dir)
	if err != nil {
		t.Fatalf("OpenKV: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func openNode(cli *clientv3.Client, prefix, dir string) (*KV, error) {
	s, err := NewSealer(testSecret)
	if err != nil {
		return nil, err
	}
	return OpenKV(context.Background(), cli, KVOptions{
		Prefix:         prefix,
		ReplicaPath:    filepath.Join(dir, "control.db"),
		Seal:           s,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		RequestTimeout: 2 * time.Second,
		StaleAfter:     time.Second,
	})
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func get(t *testing.T, k *KV, bucket, key string) []byte {
	t.Helper()
	var v []byte
	if err := k.View(func(tx control.Tx) error {
		v = append([]byte(nil), tx.Bucket(bucket).Get([]byte(key))...)
		if tx.Bucket(bucket).Get([]byte(key)) == nil {
			v = nil
		}
		return nil
	}); err != nil {
		t.Fatalf("View: %v", err)
	}
	return v
}

func put(t *testing.T, k *KV, bucket, key, val string) {
	t.Helper()
	if err := k.Update(func(tx control.Tx) error {
		return tx.Bucket(bucket).Put([]byte(key), []byte(val))
	}); err != nil {
		t.Fatalf("Update: put %s/%s: %v", bucket, key, err)
	}
}

// sharedCluster starts the 3-member cluster of one test: members are cheap
// (about a second) and the test's cleanup stops them.
func sharedCluster(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	return etcdtest.Start(t, 3)
}

// TestTwoNodesSeeEachOther: a write through one KV reaches the other's
// replica through the watch, and its subscribers are told.
func TestTwoNodesSeeEachOther(t *testing.T) {
	c := sharedCluster(t)
	a := node(t, c.Client(t), "/hermod", t.TempDir())
	b := node(t, c.Client(t), "/hermod", t.TempDir())
	var mu sync.Mutex
	var seen []control.Change
	b.Subscribe(func(ch []control.Change) {
		mu.Lock()
		seen = append(seen, ch...)
		mu.Unlock()
	})
	put(t, a, "domain", "example.org", "v1")
	waitFor(t, 5*time.Second, "b does not see a's write", func() bool {
		return string(get(t, b, "domain", "example.org")) == "v1"
	})
	// Subscribers are told after the change is visible to View.
	waitFor(t, 5*time.Second, "b's subscriber was not told", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	mu.Lock()
	if len(seen) != 1 || seen[0].Bucket != "domain" || string(seen[0].Key) != "example.org" || seen[0].Reload {
		t.Errorf("b's subscriber was told %+v", seen)
	}
	mu.Unlock()
	if err := b.Update(func(tx control.Tx) error { return tx.Bucket("domain").Delete([]byte("example.org")) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a does not see b's delete", func() bool {
		return get(t, a, "domain", "example.org") == nil
	})
	// A write outside the prefix brings no event: the replica's revision
	// still reaches it, through a progress notification.
	out, err := c.Client(t).Put(context.Background(), "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the revision does not follow writes outside the prefix", func() bool {
		return a.Revision() >= out.Header.Revision && b.Revision() >= out.Header.Revision
	})
}

// TestClaimRace: two nodes each claim the same domain if it is free, 20
// times; exactly one wins each time and the loser's last run saw the
// winner's value.
func TestClaimRace(t *testing.T) {
	c := sharedCluster(t)
	nodes := []*KV{
		node(t, c.Client(t), "/hermod", t.TempDir()),
		node(t, c.Client(t), "/hermod", t.TempDir()),
	}
	for round := 0; round < 20; round++ {
		key := []byte(fmt.Sprintf("x%d.example", round))
		won := make([]bool, 2)
		saw := make([]string, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = nodes[i].Update(func(tx control.Tx) error {
					won[i], saw[i] = false, ""
					b := tx.Bucket("domain.account")
					if v := b.Get(key); v != nil {
						saw[i] = string(v)
						return nil
					}
					won[i] = true
					return b.Put(key, []byte(fmt.Sprintf("node%d", i)))
				})
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d node %d: %v", round, i, err)
			}
		}
		if won[0] == won[1] {
			t.Fatalf("round %d: won = %v (exactly one must win)", round, won)
		}
		winner, loser := 0, 1
		if won[1] {
			winner, loser = 1, 0
		}
		if want := fmt.Sprintf("node%d", winner); saw[loser] != want {
			t.Fatalf("round %d: the loser saw %q, want %q", round, saw[loser], want)
		}
		for i := range nodes {
			if got := string(get(t, nodes[i], "domain.account", string(key))); got != fmt.Sprintf("node%d", winner) {
				t.Fatalf("round %d: node %d has %q", round, i, got)
			}
		}
	}
}

// TestViewAfterUpdate: the View right after an Update sees its write.
func TestViewAfterUpdate(t *testing.T) {
	c := sharedCluster(t)
	k := node(t, c.Client(t), "/hermod", t.TempDir())
	for i := 0; i < 50; i++ {
		key := fmt.Sprintf("a%d", i)
		put(t, k, "account", key, "v")
		if get(t, k, "account", key) == nil {
			t.Fatalf("write %d not visible to the next View", i)
		}
	}
}

// TestUpdateTx: inside an Update, reads see the transaction's own writes
// (Get and a merged cursor), an error from fn writes nothing, a read-only
// fn does not touch etcd, and binary keys keep bbolt's byte order.
func TestUpdateTx(t *testing.T) {
	c := sharedCluster(t)
	cli := c.Client(t)
	k := node(t, cli, "/hermod", t.TempDir())
	if err := k.Update(func(tx control.Tx) error {
		b := tx.Bucket("suppress")
		for _, key := range []string{"b", "d", "f"} {
			if err := b.Put([]byte(key), []byte("old-"+key)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var walk, seek []string
	var got []byte
	err := k.Update(func(tx control.Tx) error {
		walk, seek = nil, nil
		b := tx.Bucket("suppress")
		b.Put([]byte("a"), []byte("new-a"))
		b.Put([]byte("d"), []byte("new-d"))
		b.Delete([]byte("f"))
		b.Put([]byte("e"), []byte("new-e"))
		got = append([]byte(nil), b.Get([]byte("d"))...)
		if err := b.ForEach(func(k, v []byte) error {
			walk = append(walk, string(k)+"="+string(v))
			return nil
		}); err != nil {
			return err
		}
		cur := b.Cursor()
		for k, v := cur.Seek([]byte("c")); k != nil; k, v = cur.Next() {
			seek = append(seek, string(k)+"="+string(v))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "new-d" {
		t.Errorf("Get after Put in the same tx = %q", got)
	}
	if w := "a=new-a b=old-b d=new-d e=new-e"; strings.Join(walk, " ") != w {
		t.Errorf("ForEach saw %q, want %q", strings.Join(walk, " "), w)
	}
	if w := "d=new-d e=new-e"; strings.Join(seek, " ") != w {
		t.Errorf("Seek(c)+Next saw %q, want %q", strings.Join(seek, " "), w)
	}
	var after []string
	k.View(func(tx control.Tx) error {
		return tx.Bucket("suppress").ForEach(func(k, v []byte) error {
			after = append(after, string(k)+"="+string(v))
			return nil
		})
	})
	if w := "a=new-a b=old-b d=new-d e=new-e"; strings.Join(after, " ") != w {
		t.Errorf("after the commit View sees %q, want %q", strings.Join(after, " "), w)
	}

	// An error from fn writes nothing.
	boom := errors.New("boom")
	rev := k.Revision()
	if err := k.Update(func(tx control.Tx) error {
		tx.Bucket("suppress").Put([]byte("z"), []byte("z"))
		return boom
	}); err != boom {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	raw, err := cli.Get(context.Background(), "/hermod/c/suppress/"+fmt.Sprintf("%x", "z"))
	if err != nil || len(raw.Kvs) != 0 || get(t, k, "suppress", "z") != nil {
		t.Fatalf("a failed fn wrote: %v %v", raw.Kvs, err)
	}
	// A read-only Update makes no etcd write.
	if err := k.Update(func(tx control.Tx) error { tx.Bucket("suppress").Get([]byte("a")); return nil }); err != nil {
		t.Fatal(err)
	}
	if cur, _ := cli.Get(context.Background(), "x"); cur.Header.Revision != rev {
		t.Fatalf("a read-only Update or a failed fn moved etcd from %d to %d", rev, cur.Header.Revision)
	}

	// Binary keys survive and iterate in byte order.
	keys := [][]byte{{0x00}, {0x00, 0x01}, {0x7f}, {0x80}, {0xff, 0x00}, {0xff}}
	if err := k.Update(func(tx control.Tx) error {
		for i := len(keys) - 1; i >= 0; i-- {
			if err := tx.Bucket("suppress-cursors").Put(keys[i], keys[i]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	other := node(t, c.Client(t), "/hermod", t.TempDir()) // loaded from etcd
	var order [][]byte
	other.View(func(tx control.Tx) error {
		return tx.Bucket("suppress-cursors").ForEach(func(k, v []byte) error {
			if !bytes.Equal(k, v) {
				t.Errorf("key %x has value %x", k, v)
			}
			order = append(order, append([]byte(nil), k...))
			return nil
		})
	})
	want := [][]byte{{0x00}, {0x00, 0x01}, {0x7f}, {0x80}, {0xff}, {0xff, 0x00}}
	if fmt.Sprintf("%x", order) != fmt.Sprintf("%x", want) {
		t.Errorf("binary keys in order %x, want %x", order, want)
	}

	// More writes than etcd takes in one transaction: a clear error.
	err = k.Update(func(tx control.Tx) error {
		for i := 0; i <= MaxTxnOps; i++ {
			tx.Bucket("suppress").Put([]byte(fmt.Sprintf("many%d", i)), []byte("v"))
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "at most 128") {
		t.Errorf("a 129-write Update: %v", err)
	}
}

// TestSecretBucketSealed: a secret bucket's value is sealed in etcd, does
// not open under another secret or another key, and reaches another node
// in the clear.
func TestSecretBucketSealed(t *testing.T) {
	c := sharedCluster(t)
	cli := c.Client(t)
	a := node(t, cli, "/hermod", t.TempDir())
	plain := "-----BEGIN PRIVATE KEY----- secret dkim key"
	put(t, a, "domainkeys", "example.org", plain)
	put(t, a, "domain", "example.org", "public record")
	resp, err := cli.Get(context.Background(), "/hermod/c/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	raw := map[string][]byte{}
	for _, kv := range resp.Kvs {
		raw[string(kv.Key)] = kv.Value
	}
	sealed := raw["/hermod/c/domainkeys/"+fmt.Sprintf("%x", "example.org")]
	if sealed == nil {
		t.Fatalf("no domainkeys value in etcd: %q", resp.Kvs)
	}
	if bytes.Contains(sealed, []byte("secret dkim key")) {
		t.Fatalf("etcd holds the plaintext: %q", sealed)
	}
	if v := raw["/hermod/c/domain/"+fmt.Sprintf("%x", "example.org")]; string(v) != "public record" {
		t.Errorf("a non-secret bucket's value in etcd = %q", v)
	}
	same, _ := NewSealer(testSecret)
	if v, err := same.Open("domainkeys", []byte("example.org"), sealed); err != nil || string(v) != plain {
		t.Fatalf("the right secret does not open it: %q %v", v, err)
	}
	otherSecret, _ := NewSealer([]byte("another secret of 32 bytes......"))
	if _, err := otherSecret.Open("domainkeys", []byte("example.org"), sealed); err == nil {
		t.Error("another secret opens the value")
	}
	if _, err := same.Open("domainkeys", []byte("example.net"), sealed); err == nil {
		t.Error("the value opens under another key")
	}
	if _, err := same.Open("domain", []byte("example.org"), sealed); err == nil {
		t.Error("the value opens in another bucket")
	}
	b := node(t, cli, "/hermod", t.TempDir())
	if v := get(t, b, "domainkeys", "example.org"); string(v) != plain {
		t.Errorf("another node reads %q", v)
	}
	// A value moved to another key in etcd does not reach the replica.
	if _, err := cli.Put(context.Background(), "/hermod/c/domainkeys/"+fmt.Sprintf("%x", "example.net"), string(sealed)); err != nil {
		t.Fatal(err)
	}
	put(t, a, "domain", "marker", "m")
	waitFor(t, 5*time.Second, "b has not applied the marker", func() bool { return get(t, b, "domain", "marker") != nil })
	if v := get(t, b, "domainkeys", "example.net"); v != nil {
		t.Errorf("a sealed value moved to another key was accepted: %q", v)
	}
}

// TestSealer checks the AES-GCM sealer on its own.
func TestSealer(t *testing.T) {
	s, err := NewSealer(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSealer([]byte("short")); err == nil {
		t.Error("a 5-byte secret was accepted")
	}
	a, _ := s.Seal("b", []byte("k"), []byte("v"))
	b, _ := s.Seal("b", []byte("k"), []byte("v"))
	if bytes.Equal(a, b) {
		t.Error("two seals of one value are equal (nonce reuse)")
	}
	// bucket "ab" key "c" must not be the same additional data as bucket
	// "a" key "bc".
	x, _ := s.Seal("ab", []byte("c"), []byte("v"))
	if _, err := s.Open("a", []byte("bc"), x); err == nil {
		t.Error("bucket/key boundary is ambiguous")
	}
	x[len(x)-1] ^= 1
	if _, err := s.Open("ab", []byte("c"), x); err == nil {
		t.Error("a tampered value opens")
	}
}

// TestCompactionReloads: a node whose member is down while others write and
// etcd compacts past its revision reloads the whole snapshot when its watch
// comes back, and has the data written meanwhile.
func TestCompactionReloads(t *testing.T) {
	c := etcdtest.Start(t, 3)
	only0 := c.ClientOf(t, c.Endpoint(0))
	others := c.ClientOf(t, c.Endpoint(1), c.Endpoint(2))
	a := node(t, only0, "/hermod", t.TempDir())
	w := node(t, others, "/hermod", t.TempDir())
	var mu sync.Mutex
	reloadTold := false
	a.Subscribe(func(ch []control.Change) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range ch {
			reloadTold = reloadTold || c.Reload
		}
	})
	put(t, w, "domain", "before", "1")
	waitFor(t, 5*time.Second, "a does not see the first write", func() bool { return get(t, a, "domain", "before") != nil })
	loads := a.Reloads()
	c.Kill(0)
	// A write during the election that may follow (member 0 may have led)
	// can time out: try until the two members have a leader. Two
	// revisions, so that a's watch resumes below the compaction.
	waitFor(t, 20*time.Second, "no write with member 0 down", func() bool {
		return w.Update(func(tx control.Tx) error { return tx.Bucket("domain").Put([]byte("during"), []byte("2")) }) == nil
	})
	if err := w.Update(func(tx control.Tx) error { return tx.Bucket("domain").Delete([]byte("before")) }); err != nil {
		t.Fatal(err)
	}
	rev := c.CompactNow(t, others)
	c.Restart(0)
	waitFor(t, 30*time.Second, "a has not caught up after the compaction", func() bool {
		return get(t, a, "domain", "during") != nil && get(t, a, "domain", "before") == nil && a.Revision() >= rev
	})
	// The data may be there before the reload that brought it is counted
	// (the replica is committed first) and subscribers are told.
	waitFor(t, 10*time.Second, "the compaction did not cause a full reload", func() bool { return a.Reloads() > loads })
	waitFor(t, 10*time.Second, "subscribers were not told of the reload", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return reloadTold
	})
}

// TestCompactionAtResumeRevision: a node that comes back with its replica
// at revision R while etcd has compacted at R+1 (whose deletion compaction
// dropped) reloads instead of watching from R+1, where etcd would let it
// start and never send the deletion.
func TestCompactionAtResumeRevision(t *testing.T) {
	c := etcdtest.Start(t, 3)
	only0 := c.ClientOf(t, c.Endpoint(0))
	others := c.ClientOf(t, c.Endpoint(1), c.Endpoint(2))
	dir := t.TempDir()
	a, err := openNode(only0, "/hermod", dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, "domain", "gone", "1")
	a.Close()
	for i := 0; i < 3; i++ {
		c.Kill(i)
	}
	a = node(t, only0, "/hermod", dir) // from the replica: etcd is down
	loads := a.Reloads()
	c.RestartNoWait(1)
	c.Restart(2)
	c.WaitReady(1)
	if _, err := others.Delete(context.Background(), "/hermod/c/domain/"+fmt.Sprintf("%x", "gone")); err != nil {
		t.Fatal(err)
	}
	rev := c.CompactNow(t, others)
	if rev != a.Revision()+1 {
		t.Fatalf("compacted at %d, the replica is at %d: the test needs %d", rev, a.Revision(), a.Revision()+1)
	}
	c.Restart(0)
	waitFor(t, 30*time.Second, "a has not caught up after the compaction", func() bool {
		return a.Revision() >= rev && get(t, a, "domain", "gone") == nil
	})
	waitFor(t, 10*time.Second, "no full reload", func() bool { return a.Reloads() > loads })
}

// TestQuorumLoss: with 2 of 3 members down, View works from the replica,
// Update fails with ErrUnavailable within the request timeout, the KV says
// it is stale; with the quorum back, Update works again.
func TestQuorumLoss(t *testing.T) {
	c := etcdtest.Start(t, 3)
	k := node(t, c.Client(t), "/hermod", t.TempDir())
	put(t, k, "account", "alice", "owner")
	if _, stale := k.Stale(); stale {
		t.Fatal("stale while etcd is up")
	}
	// slow says it is stale only because its watch is down: it would not
	// by the time it last heard from etcd for an hour.
	slow := openSlowStale(t, c.Client(t))
	c.Kill(1)
	c.Kill(2)
	if v := get(t, k, "account", "alice"); string(v) != "owner" {
		t.Fatalf("View with the quorum lost: %q", v)
	}
	start := time.Now()
	err := k.Update(func(tx control.Tx) error { return tx.Bucket("account").Put([]byte("bob"), []byte("x")) })
	took := time.Since(start)
	if !errors.Is(err, control.ErrUnavailable) {
		t.Fatalf("Update with the quorum lost: %v", err)
	}
	if took > 4*time.Second {
		t.Errorf("Update took %v to fail (request timeout 2s)", took)
	}
	if !strings.Contains(err.Error(), c.Endpoint(0)) {
		t.Errorf("the error does not name the endpoints: %v", err)
	}
	t.Logf("Update with the quorum lost: %v after %v", err, took)
	waitFor(t, 10*time.Second, "the KV does not say it is stale", func() bool { _, s := k.Stale(); return s })
	waitFor(t, 10*time.Second, "a KV whose watch lost its leader does not say it is stale", func() bool { _, s := slow.Stale(); return s })
	c.RestartNoWait(1)
	c.Restart(2)
	c.WaitReady(1)
	waitFor(t, 20*time.Second, "Update does not work with the quorum back", func() bool {
		return k.Update(func(tx control.Tx) error { return tx.Bucket("account").Put([]byte("bob"), []byte("x")) }) == nil
	})
	if string(get(t, k, "account", "bob")) != "x" {
		t.Error("the write after the outage is not in the replica")
	}
	waitFor(t, 10*time.Second, "still stale with the quorum back", func() bool { _, s := k.Stale(); return !s })
	waitFor(t, 10*time.Second, "still stale with the quorum back", func() bool { _, s := slow.Stale(); return !s })
}

// openSlowStale opens a KV that calls itself stale after an hour of silence.
func openSlowStale(t *testing.T, cli *clientv3.Client) *KV {
	t.Helper()
	s, _ := NewSealer(testSecret)
	k, err := OpenKV(context.Background(), cli, KVOptions{
		Prefix: "/hermod", ReplicaPath: filepath.Join(t.TempDir(), "control.db"), Seal: s,
		RequestTimeout: 2 * time.Second, StaleAfter: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// TestOpenWithEtcdDown: with etcd down, a node opens from its replica (and
// catches up when etcd is back); without a replica, or with one of another
// prefix, it fails with a clear error.
func TestOpenWithEtcdDown(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	dir := t.TempDir()
	k, err := openNode(cli, "/hermod", dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, k, "domain", "example.org", "rec")
	k.Close()
	for i := 0; i < 3; i++ {
		c.Kill(i)
	}
	start := time.Now()
	k = node(t, cli, "/hermod", dir)
	t.Logf("opened from the replica in %v", time.Since(start))
	if v := get(t, k, "domain", "example.org"); string(v) != "rec" {
		t.Fatalf("reopened from the replica: %q", v)
	}
	if _, stale := k.Stale(); !stale {
		t.Error("a KV opened from its replica with etcd down does not say it is stale")
	}
	_, err = openNode(cli, "/hermod", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no copy of the control data yet and etcd at") ||
		!strings.Contains(err.Error(), "cluster.etcd_endpoints") || !strings.Contains(err.Error(), c.Endpoint(0)) {
		t.Fatalf("no replica, etcd down: %v", err)
	}
	t.Logf("no replica, etcd down: %v", err)
	// The same replica file under another prefix is refused.
	k.Close()
	_, err = openNode(cli, "/other", dir)
	if err == nil || !strings.Contains(err.Error(), `holds prefix "/hermod"`) {
		t.Fatalf("replica of another prefix, etcd down: %v", err)
	}
	// Back to the replica of the right prefix; etcd comes back.
	k = node(t, cli, "/hermod", dir)
	for i := 0; i < 3; i++ {
		c.RestartNoWait(i)
	}
	for i := 0; i < 3; i++ {
		c.WaitReady(i)
	}
	w := node(t, c.Client(t), "/hermod", t.TempDir())
	put(t, w, "domain", "example.net", "rec2")
	waitFor(t, 30*time.Second, "the KV opened from its replica does not catch up", func() bool {
		return get(t, k, "domain", "example.net") != nil
	})
	waitFor(t, 10*time.Second, "still stale", func() bool { _, s := k.Stale(); return !s })
}

// TestReplicaOfAnotherCluster: a node opened from a replica of another etcd
// cluster (etcd down at open) reloads when that etcd answers, instead of
// watching the new cluster's unrelated revisions from its own.
func TestReplicaOfAnotherCluster(t *testing.T) {
	a := etcdtest.Start(t, 1)
	dir := t.TempDir()
	k, err := openNode(a.Client(t), "/hermod", dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, k, "domain", "from-a", "1")
	k.Close()
	b := etcdtest.Start(t, 1)
	bcli := b.Client(t)
	for i := 0; i < 5; i++ {
		if _, err := bcli.Put(context.Background(), "/hermod/c/domain/"+fmt.Sprintf("%x", fmt.Sprintf("from-b%d", i)), "v"); err != nil {
			t.Fatal(err)
		}
	}
	b.Kill(0)
	k = node(t, bcli, "/hermod", dir) // from a's replica: b is down
	if get(t, k, "domain", "from-a") == nil {
		t.Fatal("not opened from the replica")
	}
	b.Restart(0)
	waitFor(t, 30*time.Second, "the replica of another cluster was not reloaded", func() bool {
		return get(t, k, "domain", "from-b0") != nil && get(t, k, "domain", "from-a") == nil
	})
}

// TestProgressDoesNotMoveResume: a progress notification moves the
// revision a node reports, but not the one its watch resumes from, nor the
// one its replica records: etcd before 3.4.24 may send a progress revision
// past events still on their way (etcd-io/etcd#15220), and a watch resumed
// from there would skip them for good. Replayed older events never put a
// key back in time.
func TestProgressDoesNotMoveResume(t *testing.T) {
	c := sharedCluster(t)
	dir := t.TempDir()
	a := node(t, c.Client(t), "/hermod-resume", dir)
	put(t, a, "domain", "example.org", "v1")
	a.mu.Lock()
	resume, applied := a.resume, a.applied
	a.mu.Unlock()
	if resume != applied || resume == 0 {
		t.Fatalf("after a write: resume %d, applied %d", resume, applied)
	}
	// A progress notification far ahead, as a buggy server may send.
	if err := a.apply(&clientv3.WatchResponse{Header: &etcdserverpb.ResponseHeader{Revision: applied + 1000}}); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	gotResume, gotApplied := a.resume, a.applied
	a.mu.Unlock()
	if gotApplied != applied+1000 || gotResume != resume {
		t.Fatalf("after a progress notification to %d: applied %d, resume %d; want applied moved, resume %d kept", applied+1000, gotApplied, gotResume, resume)
	}
	var meta int64
	if err := a.db.View(func(tx *bbolt.Tx) error {
		meta = int64(binary.BigEndian.Uint64(tx.Bucket([]byte(metaBucket)).Get(metaRevision)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if meta != resume {
		t.Fatalf("the replica records revision %d; want the events' %d", meta, resume)
	}
	// An older event for the key, replayed, does not win over the newer.
	put(t, a, "domain", "example.org", "v2")
	old := &clientv3.WatchResponse{Events: []*clientv3.Event{{Type: clientv3.EventTypePut,
		Kv: &mvccpb.KeyValue{Key: []byte(a.etcdKey("domain", []byte("example.org"))), Value: []byte("v1"), ModRevision: resume}}}}
	if err := a.apply(old); err != nil {
		t.Fatal(err)
	}
	if got := string(get(t, a, "domain", "example.org")); got != "v2" {
		t.Fatalf("after replaying an older event: %q; want v2", got)
	}
}

// TestFullLoadSplitsLargeRanges: with pages of 10 keys and ranges split
// past 40, a full load of 700 suppressions (whose keys all begin with the
// same hex digits) and a few keys of other buckets loads every key once.
func TestFullLoadSplitsLargeRanges(t *testing.T) {
	c := sharedCluster(t)
	cli := c.Client(t)
	const prefix = "/hermod-split"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string]bool{}
	var ops []clientv3.Op
	flush := func() {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := 0; i < 700; i++ {
		key := fmt.Sprintf("\x00user%d@example.org", i)
		want["suppress/"+key] = true
		ops = append(ops, clientv3.OpPut(prefix+"/c/suppress/"+hex.EncodeToString([]byte(key)), `{"reason":"user-unknown"}`))
		if len(ops) == 100 {
			flush()
		}
	}
	for _, name := range []string{"acme", "beta"} {
		want["account/"+name] = true
		ops = append(ops, clientv3.OpPut(prefix+"/c/account/"+hex.EncodeToString([]byte(name)), `{}`))
	}
	flush()
	s, err := NewSealer(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	k, err := OpenKV(ctx, cli, KVOptions{Prefix: prefix, ReplicaPath: filepath.Join(t.TempDir(), "control.db"), Seal: s,
		RequestTimeout: 5 * time.Second, pageSize: 10, splitAt: 40})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	got := map[string]bool{}
	err = k.View(func(tx control.Tx) error {
		for _, b := range []string{"suppress", "account"} {
			if err := tx.Bucket(b).ForEach(func(key, _ []byte) error {
				if got[b+"/"+string(key)] {
					return fmt.Errorf("%s %q loaded twice", b, key)
				}
				got[b+"/"+string(key)] = true
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("loaded %d keys, want %d", len(got), len(want))
	}
	for key := range want {
		if !got[key] {
			t.Fatalf("%q not loaded", key)
		}
	}
}
