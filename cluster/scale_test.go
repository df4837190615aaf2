package cluster

// The scale measurements behind docs/scale.md. They run a real three-member
// etcd cluster (internal/etcdtest) on loopback and take minutes, so they are
// skipped unless HERMOD_SCALE=1:
//
//	HERMOD_SCALE=1 go test -run TestScale -v -timeout 20m ./cluster
//
// HERMOD_SCALE_N overrides the list sizes (comma-separated, ascending,
// default "10000,100000"). Every figure is printed as a line starting with
// "SCALE"; HERMOD_SCALE_LOOKUPS sets the number of hot-path lookups
// (default 100,000) and HERMOD_SCALE_LOOKUPS_ONLY=1 stops after them. A few
// promises (the hot path asks etcd nothing, every watcher
// gets every change) are checked and fail the test when broken.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/internal/etcdtest"
	"github.com/hermod-mta/hermod/suppress"
)

// scaleBatch is how many suppressions one batched Update writes: each is a
// put of the entry and a delete of the address's soft-bounce run, so 50
// entries are 100 operations, under etcd's 128.
const scaleBatch = 50

// scaleEntry is a realistic hard-bounce suppression of the i-th address of
// writer w.
func scaleEntry(w, i int, now time.Time) suppress.Entry {
	addr := fmt.Sprintf("user.%d.%07d@mail%03d.example.com", w, i, i%997)
	return suppress.Entry{
		Address:   addr,
		Reason:    "user-unknown",
		Source:    "dsn",
		MessageID: fmt.Sprintf("n%d-01jbx7k2q9%014d", w%8, i),
		Detail:    "smtp; 550 5.1.1 <" + addr + ">: Recipient address rejected: User unknown in virtual mailbox table",
		Created:   now,
	}
}

// scaleNode opens a KV on prefix with its own etcd client and replica
// directory, as one hermod node does.
func scaleNode(t *testing.T, c *etcdtest.Cluster, prefix string) *KV {
	t.Helper()
	k, err := openNode(c.Client(t), prefix, t.TempDir())
	if err != nil {
		t.Fatalf("OpenKV: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// openTimed opens a KV with the given RequestTimeout (0: the default).
func openTimed(cli *clientv3.Client, prefix, dir string, timeout time.Duration) (*KV, error) {
	s, err := NewSealer(testSecret)
	if err != nil {
		return nil, err
	}
	return OpenKV(context.Background(), cli, KVOptions{
		Prefix:         prefix,
		ReplicaPath:    filepath.Join(dir, "control.db"),
		Seal:           s,
		RequestTimeout: timeout,
	})
}

// etcdRequests sums, over every member, the gRPC calls etcd has started,
// by method (from the /metrics page each member serves on its client URL).
func etcdRequests(t *testing.T, c *etcdtest.Cluster) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	cl := &http.Client{Timeout: 5 * time.Second}
	for _, ep := range c.Endpoints() {
		resp, err := cl.Get(ep + "/metrics")
		if err != nil {
			t.Fatalf("metrics of %s: %v", ep, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "grpc_server_started_total{") {
				continue
			}
			i := strings.Index(line, `grpc_method="`)
			sp := strings.LastIndexByte(line, ' ')
			if i < 0 || sp < 0 {
				continue
			}
			m := line[i+len(`grpc_method="`):]
			m = m[:strings.IndexByte(m, '"')]
			v, err := strconv.ParseFloat(line[sp+1:], 64)
			if err != nil {
				t.Fatalf("metrics of %s: %q: %v", ep, line, err)
			}
			out[m] += v
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err := sc.Err(); err != nil {
			t.Fatalf("metrics of %s: %v", ep, err)
		}
	}
	if len(out) == 0 {
		t.Fatal("no grpc_server_started_total in etcd's /metrics")
	}
	return out
}

// dbSizes returns the largest DbSize and DbSizeInUse over the members.
func dbSizes(t *testing.T, c *etcdtest.Cluster, cli *clientv3.Client) (size, inUse int64) {
	t.Helper()
	for _, ep := range c.Endpoints() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err != nil {
			t.Fatalf("status of %s: %v", ep, err)
		}
		size, inUse = max(size, st.DbSize), max(inUse, st.DbSizeInUse)
	}
	return size, inUse
}

// compactDefrag compacts at the current revision and defragments every
// member, as an operator (or --auto-compaction-retention plus a defrag
// cron) would.
func compactDefrag(t *testing.T, c *etcdtest.Cluster, cli *clientv3.Client) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resp, err := cli.Get(ctx, "scale-compact", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("read the revision to compact: %v", err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact at %d: %v", resp.Header.Revision, err)
	}
	for _, ep := range c.Endpoints() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		_, err := cli.Defragment(ctx, ep)
		cancel()
		if err != nil {
			t.Fatalf("defragment %s: %v", ep, err)
		}
	}
	return time.Since(start)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// pct is the p-th percentile (0..100) of sorted d.
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(float64(len(d)-1) * p / 100)
	return d[i]
}

func scaleSizes(t *testing.T) []int {
	s := os.Getenv("HERMOD_SCALE_N")
	if s == "" {
		return []int{10_000, 100_000}
	}
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > 2_000_000 {
			t.Fatalf("HERMOD_SCALE_N: %q is not a size in 1..2000000", f)
		}
		ns = append(ns, n)
	}
	if !slices.IsSorted(ns) {
		t.Fatalf("HERMOD_SCALE_N: %v is not ascending", ns)
	}
	return ns
}

// fill adds suppressions from..to-1 of writer w through list in Updates of
// batch entries each and returns the Update latencies.
func fill(t *testing.T, list *suppress.List, kv *KV, w, from, to, batch int, deadline time.Time) []time.Duration {
	t.Helper()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var lat []time.Duration
	for i := from; i < to; i += batch {
		if time.Now().After(deadline) {
			t.Fatalf("fill: the time budget ran out at %d of %d entries", i, to)
		}
		end := min(i+batch, to)
		start := time.Now()
		err := kv.Update(func(tx control.Tx) error {
			for j := i; j < end; j++ {
				if _, err := list.AddTx(tx, scaleEntry(w, j, now)); err != nil {
					return err
				}
			}
			return nil
		})
		lat = append(lat, time.Since(start))
		if err != nil {
			t.Fatalf("fill: entries %d..%d: %v", i, end, err)
		}
	}
	return lat
}

func TestScale(t *testing.T) {
	if os.Getenv("HERMOD_SCALE") != "1" || testing.Short() {
		t.Skip("the scale measurements take minutes: set HERMOD_SCALE=1 to run them")
	}
	budget := time.Now().Add(15 * time.Minute)
	c := etcdtest.Start(t, 3)
	admin := c.Client(t)
	t.Logf("SCALE machine: %d CPUs, etcd 3-member cluster on loopback (%s)", runtime.NumCPU(), etcdtest.Binary)

	w := scaleNode(t, c, "/hermod")
	list, err := suppress.Open(w, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	compactDefrag(t, c, admin)
	baseSize, baseUse := dbSizes(t, c, admin)
	t.Logf("SCALE db empty (after defrag): size %d bytes, in use %d bytes", baseSize, baseUse)

	// The sizes up to 100,000 first, then the hot path, write rates and
	// fan-out, then the larger sizes, which take most of the time.
	have := 0
	var large []int
	for _, n := range scaleSizes(t) {
		if n > 100_000 {
			large = append(large, n)
			continue
		}
		have = scaleSize(t, c, admin, list, w, have, n, baseSize, budget)
	}
	scaleLookups(t, c, list, w, have)
	if os.Getenv("HERMOD_SCALE_LOOKUPS_ONLY") == "1" {
		return
	}
	scaleWriteRates(t, c, budget)
	for _, k := range []int{10, 25, 50} {
		if time.Now().After(budget) {
			t.Logf("SCALE fan-out K=%d: skipped, the time budget ran out", k)
			continue
		}
		scaleFanOut(t, c, k)
	}
	for _, n := range large {
		have = scaleSize(t, c, admin, list, w, have, n, baseSize, budget)
	}
}

// scaleSize fills the list from have to n entries and measures etcd's size
// and a full reload of a new replica; it returns n.
func scaleSize(t *testing.T, c *etcdtest.Cluster, admin *clientv3.Client, list *suppress.List, w *KV, have, n int, baseSize int64, budget time.Time) int {
	{
		start := time.Now()
		lat := fill(t, list, w, 0, have, n, scaleBatch, budget)
		took := time.Since(start)
		slices.Sort(lat)
		t.Logf("SCALE fill %d→%d: %d Updates of %d, %.0f suppressions/s, Update p50 %v p99 %v",
			have, n, len(lat), scaleBatch, float64(n-have)/took.Seconds(), pct(lat, 50), pct(lat, 99))
		size, use := dbSizes(t, c, admin)
		dt := compactDefrag(t, c, admin)
		dsize, duse := dbSizes(t, c, admin)
		t.Logf("SCALE db N=%d: before compaction size %s in use %s; after compact+defrag (%v) size %s in use %s; %.0f bytes/entry (defragmented size over the empty db)",
			n, mib(size), mib(use), dt.Round(time.Millisecond), mib(dsize), mib(duse), float64(dsize-baseSize)/float64(n))

		// A node joining with an empty replica: the full load.
		// OpenKV bounds the whole load by RequestTimeout: try the
		// default (5s) first, then a long one to measure it.
		dir := t.TempDir()
		start = time.Now()
		k, err := openTimed(c.Client(t), "/hermod", dir, 0)
		if err != nil {
			t.Logf("SCALE reload N=%d: OpenKV on an empty replica FAILS with the default 5s request timeout after %v: %v",
				n, time.Since(start).Round(time.Millisecond), err)
			dir = t.TempDir()
			start = time.Now()
			if k, err = openTimed(c.Client(t), "/hermod", dir, 3*time.Minute); err != nil {
				t.Errorf("SCALE reload N=%d: OpenKV on an empty replica does not finish in 3 minutes either: %v", n, err)
				return n
			}
		}
		load := time.Since(start)
		var got int
		if err := k.View(func(tx control.Tx) error {
			return tx.Bucket("suppress").ForEach(func(_, _ []byte) error { got++; return nil })
		}); err != nil {
			t.Fatal(err)
		}
		k.Close()
		if got != n {
			t.Errorf("the reloaded replica has %d suppressions, want %d", got, n)
		}
		fi, err := os.Stat(filepath.Join(dir, "control.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("SCALE reload N=%d: OpenKV on an empty replica %v (%.0f entries/s), replica file %s (%.0f bytes/entry)",
			n, load.Round(time.Millisecond), float64(n)/load.Seconds(), mib(fi.Size()), float64(fi.Size())/float64(n))
	}
	scalePages(t, admin, n)
	return n
}

// scalePages reads the prefix in pages of pageSize keys at one revision, as
// a full load does, and reports the first and last pages' latencies: etcd
// 3.4 collects every remaining key of the range for each limited page, so
// the early pages of a large range are the slow ones.
func scalePages(t *testing.T, cli *clientv3.Client, n int) {
	pfx := "/hermod/c/"
	end := clientv3.GetPrefixRangeEnd(pfx)
	from := pfx
	var rev int64
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < 3*time.Minute {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t0 := time.Now()
		resp, err := cli.Get(ctx, from, opts...)
		cancel()
		if err != nil {
			t.Errorf("paged read at N=%d: %v", n, err)
			return
		}
		lat = append(lat, time.Since(t0))
		rev = resp.Header.Revision
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	took := time.Since(start)
	if len(lat) == 0 {
		return
	}
	t.Logf("SCALE pages N=%d: %d pages of %d read in %v; first page %v, last page %v",
		n, len(lat), pageSize, took.Round(time.Millisecond), lat[0].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}

// scaleLookups measures the hot path, View+Get from the replica, and checks
// that it asks etcd nothing.
func scaleLookups(t *testing.T, c *etcdtest.Cluster, list *suppress.List, kv *KV, n int) {
	lookups := 100_000
	if v, err := strconv.Atoi(os.Getenv("HERMOD_SCALE_LOOKUPS")); err == nil && v > 0 {
		lookups = v
	}
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([][]byte, 1000)
	addrs := make([]string, len(keys))
	now := time.Now()
	for i := range keys {
		e := scaleEntry(0, rng.IntN(n), now)
		addrs[i] = e.Address
		keys[i] = []byte("\x00" + e.Address)
	}
	before := etcdRequests(t, c)
	start := time.Now()
	hits := 0
	for i := 0; i < lookups; i++ {
		if err := kv.View(func(tx control.Tx) error {
			if tx.Bucket("suppress").Get(keys[i%len(keys)]) != nil {
				hits++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	raw := time.Since(start)
	start = time.Now()
	for i := 0; i < lookups; i++ {
		_, ok, err := list.Lookup("", addrs[i%len(addrs)])
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			hits++
		}
	}
	full := time.Since(start)
	after := etcdRequests(t, c)
	if hits != 2*lookups {
		t.Errorf("%d of %d lookups found their entry", hits, 2*lookups)
	}
	var delta float64
	var methods []string
	for m, v := range after {
		if d := v - before[m]; d != 0 {
			delta += d
			methods = append(methods, fmt.Sprintf("%s+%.0f", m, d))
		}
	}
	t.Logf("SCALE lookup N=%d: View+Get %.0f ns/op, suppress.List.Lookup (View+Get+JSON) %.0f ns/op; etcd gRPC calls started during %d lookups: %.0f %v",
		n, float64(raw.Nanoseconds())/float64(lookups), float64(full.Nanoseconds())/float64(lookups), 2*lookups, delta, methods)
	if delta != 0 {
		t.Errorf("the hot path asked etcd %.0f times (%v): it must read only the replica", delta, methods)
	}
}

// scaleWriteRates measures suppressions/s through KV.Update, one per Update
// and in batches, with 1 and 4 writers, each writer its own node.
func scaleWriteRates(t *testing.T, c *etcdtest.Cluster, budget time.Time) {
	nodes := make([]*KV, 4)
	lists := make([]*suppress.List, 4)
	for i := range nodes {
		nodes[i] = scaleNode(t, c, "/rate")
		l, err := suppress.Open(nodes[i], suppress.Options{})
		if err != nil {
			t.Fatal(err)
		}
		lists[i] = l
	}
	next := make([]int, 4) // next entry index per writer
	for _, batch := range []int{1, scaleBatch} {
		for _, writers := range []int{1, 4} {
			if time.Now().After(budget) {
				t.Logf("SCALE write batch=%d writers=%d: skipped, the time budget ran out", batch, writers)
				continue
			}
			const runFor = 8 * time.Second
			maxUpdates := 4000 / batch * 10 / writers
			var wg sync.WaitGroup
			lats := make([][]time.Duration, writers)
			counts := make([]int, writers)
			start := time.Now()
			stop := start.Add(runFor)
			for wi := 0; wi < writers; wi++ {
				wg.Add(1)
				go func(wi int) {
					defer wg.Done()
					now := time.Now()
					for u := 0; u < maxUpdates && time.Now().Before(stop); u++ {
						from := next[wi]
						t0 := time.Now()
						err := nodes[wi].Update(func(tx control.Tx) error {
							for j := from; j < from+batch; j++ {
								if _, err := lists[wi].AddTx(tx, scaleEntry(wi+1, j, now)); err != nil {
									return err
								}
							}
							return nil
						})
						lats[wi] = append(lats[wi], time.Since(t0))
						if err != nil {
							t.Errorf("writer %d: %v", wi, err)
							return
						}
						next[wi] += batch
						counts[wi] += batch
					}
				}(wi)
			}
			wg.Wait()
			took := time.Since(start)
			var all []time.Duration
			total := 0
			for wi := range lats {
				all = append(all, lats[wi]...)
				total += counts[wi]
			}
			slices.Sort(all)
			t.Logf("SCALE write batch=%d writers=%d: %d suppressions in %d Updates in %v: %.0f suppressions/s, %.0f Updates/s, Update p50 %v p99 %v max %v",
				batch, writers, total, len(all), took.Round(time.Millisecond), float64(total)/took.Seconds(),
				float64(len(all))/took.Seconds(), pct(all, 50), pct(all, 99), pct(all, 100))
		}
	}
}

// scaleFanOut opens k nodes on one prefix, writes 1000 changes from another
// node, and measures how long each change takes to reach every node.
func scaleFanOut(t *testing.T, c *etcdtest.Cluster, k int) {
	const changes = 1000
	prefix := fmt.Sprintf("/fan%d", k)
	writer := scaleNode(t, c, prefix)
	type node struct {
		kv      *KV
		arrived []atomic.Int64 // unix ns the change reached the node, by index
	}
	nodes := make([]*node, k)
	for i := range nodes {
		cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		kv, err := openNode(cli, prefix, t.TempDir())
		if err != nil {
			cli.Close()
			t.Fatalf("fan-out node %d: %v", i, err)
		}
		n := &node{kv: kv, arrived: make([]atomic.Int64, changes)}
		kv.Subscribe(func(chs []control.Change) {
			at := time.Now().UnixNano()
			for _, ch := range chs {
				if ch.Bucket != "suppress" {
					continue
				}
				idx, err := strconv.Atoi(strings.TrimPrefix(string(ch.Key), "\x00fan-"))
				if err == nil && idx >= 0 && idx < changes {
					n.arrived[idx].CompareAndSwap(0, at)
				}
			}
		})
		nodes[i] = n
		defer func() { kv.Close(); cli.Close() }()
	}
	sent := make([]int64, changes)
	start := time.Now()
	for i := 0; i < changes; i++ {
		key := []byte(fmt.Sprintf("\x00fan-%d", i))
		sent[i] = time.Now().UnixNano()
		if err := writer.Update(func(tx control.Tx) error {
			return tx.Bucket("suppress").Put(key, []byte(`{"address":"x","reason":"user-unknown","source":"dsn"}`))
		}); err != nil {
			t.Fatalf("fan-out write %d: %v", i, err)
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("fan-out K=%d: 1000 writes took more than 2 minutes", k)
		}
	}
	wrote := time.Since(start)
	lastRev := writer.Revision()
	deadline := time.Now().Add(time.Minute)
	for _, n := range nodes {
		for n.kv.Revision() < lastRev {
			if time.Now().After(deadline) {
				t.Fatalf("fan-out K=%d: a node is at revision %d after a minute, want %d", k, n.kv.Revision(), lastRev)
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}
	var lags, lastLags []time.Duration
	missing := 0
	for _, n := range nodes {
		for i := range changes {
			at := n.arrived[i].Load()
			if at == 0 {
				missing++
				continue
			}
			lags = append(lags, time.Duration(at-sent[i]))
		}
		if at := n.arrived[changes-1].Load(); at != 0 {
			lastLags = append(lastLags, time.Duration(at-sent[changes-1]))
		}
	}
	if missing != 0 {
		t.Errorf("fan-out K=%d: %d changes never reached their node", k, missing)
	}
	slices.Sort(lags)
	slices.Sort(lastLags)
	t.Logf("SCALE fan-out K=%d: 1000 writes in %v (%.0f/s); lag write→node over %d deliveries p50 %v p99 %v max %v; last write reached all %d nodes %v after it was sent (median node %v)",
		k, wrote.Round(time.Millisecond), changes/wrote.Seconds(), len(lags), pct(lags, 50).Round(10*time.Microsecond),
		pct(lags, 99).Round(10*time.Microsecond), pct(lags, 100).Round(10*time.Microsecond), k,
		pct(lastLags, 100).Round(10*time.Microsecond), pct(lastLags, 50).Round(10*time.Microsecond))
}
