package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// TestClientAgainstServer checks that the Go client (v3.7) does, against the
// Debian server (3.4), everything package cluster relies on.
func TestClientAgainstServer(t *testing.T) {
	c := Start(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Maintenance.Status and MemberList.
	for _, ep := range c.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Fatalf("Status(%s): %v", ep, err)
		}
		if st.Leader == 0 || st.Version == "" {
			t.Fatalf("Status(%s) = leader %d version %q", ep, st.Leader, st.Version)
		}
		t.Logf("member %s: version %s", ep, st.Version)
	}
	ml, err := cli.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("MemberList: %v members, %v", len(ml.Members), err)
	}

	// Put/Get, Txn with compares on ModRevision and CreateRevision.
	put, err := cli.Put(ctx, "/p/a", "1")
	if err != nil {
		t.Fatal(err)
	}
	r1 := put.Header.Revision
	txn, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision("/p/a"), "=", r1),
		clientv3.Compare(clientv3.ModRevision("/p/absent"), "=", 0),
		clientv3.Compare(clientv3.CreateRevision("/p/absent"), "=", 0),
	).Then(clientv3.OpPut("/p/b", "2"), clientv3.OpDelete("/p/none")).Commit()
	if err != nil || !txn.Succeeded {
		t.Fatalf("txn on fresh revisions: succeeded=%v err=%v", txn != nil && txn.Succeeded, err)
	}
	txn, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/p/a"), "=", r1-1)).
		Then(clientv3.OpPut("/p/c", "x")).Commit()
	if err != nil || txn.Succeeded {
		t.Fatalf("txn on a stale revision: succeeded=%v err=%v", txn != nil && txn.Succeeded, err)
	}
	if txn.Header.Revision != r1+1 {
		t.Fatalf("failed txn header revision %d, want %d", txn.Header.Revision, r1+1)
	}

	// Range Get with prefix, paging and WithRev.
	cli.Put(ctx, "/p/a", "changed")
	g, err := cli.Get(ctx, "/p/", clientv3.WithPrefix(), clientv3.WithRev(r1+1), clientv3.WithLimit(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "1" || !g.More {
		t.Fatalf("Get at rev %d = %v more=%v", r1+1, g.Kvs, g.More)
	}

	// Watch with WithRev/WithPrefix/WithProgressNotify, RequestProgress.
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	w := clientv3.NewWatcher(cli)
	defer w.Close()
	wch := w.Watch(wctx, "/p/", clientv3.WithPrefix(), clientv3.WithRev(r1), clientv3.WithProgressNotify())
	resp := <-wch
	if resp.Err() != nil || len(resp.Events) == 0 || resp.Events[0].Kv.ModRevision != r1 {
		t.Fatalf("watch from %d: %+v err %v", r1, resp.Events, resp.Err())
	}
	var evs int
	for _, ev := range resp.Events {
		evs++
		_ = ev
	}
	for evs < 3 {
		resp = <-wch
		evs += len(resp.Events)
	}
	if err := w.RequestProgress(wctx); err != nil {
		t.Fatalf("RequestProgress: %v", err)
	}
	select {
	case resp = <-wch:
		if !resp.IsProgressNotify() {
			t.Fatalf("after RequestProgress: %+v", resp)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no progress notification after RequestProgress")
	}

	// Compact, and the watch error for a compacted revision.
	cur, _ := cli.Get(ctx, "x")
	if _, err := cli.Compact(ctx, cur.Header.Revision); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	cresp := <-cli.Watch(ctx, "/p/", clientv3.WithPrefix(), clientv3.WithRev(r1))
	if cresp.CompactRevision != cur.Header.Revision || !errors.Is(cresp.Err(), rpctypes.ErrCompacted) {
		t.Fatalf("watch of a compacted revision: compact %d err %v", cresp.CompactRevision, cresp.Err())
	}
	if _, err := cli.Get(ctx, "/p/a", clientv3.WithRev(r1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("Get of a compacted revision: %v", err)
	}

	// Leases: Grant, KeepAlive.
	lease, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	ka, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		t.Fatalf("KeepAlive: %v", err)
	}
	if k := <-ka; k == nil || k.TTL <= 0 {
		t.Fatalf("KeepAlive response %+v", k)
	}

	// concurrency: Session + Election.
	s1, err := concurrency.NewSession(cli, concurrency.WithTTL(2))
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	s2, err := concurrency.NewSession(cli, concurrency.WithTTL(2))
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	e1 := concurrency.NewElection(s1, "/p/elect")
	e2 := concurrency.NewElection(s2, "/p/elect")
	if err := e1.Campaign(ctx, "n1"); err != nil {
		t.Fatalf("Campaign: %v", err)
	}
	won := make(chan error, 1)
	go func() { won <- e2.Campaign(ctx, "n2") }()
	l, err := e1.Leader(ctx)
	if err != nil || string(l.Kvs[0].Value) != "n1" {
		t.Fatalf("Leader: %v %v", l, err)
	}
	s1.Close() // hands the election over
	select {
	case err := <-won:
		if err != nil {
			t.Fatalf("second Campaign: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the election was not handed over")
	}
	s2.Close()
}

// TestKillRestart checks Kill and Restart: a killed member misses writes and
// has them after Restart.
func TestKillRestart(t *testing.T) {
	c := Start(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.Kill(2)
	// Member 2 may have led: a put during the election may time out.
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Put(pctx, "k", "v")
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put with one member down: %v", err)
		}
	}
	c.Restart(2)
	one := c.ClientOf(t, c.Endpoint(2))
	deadline = time.Now().Add(10 * time.Second)
	for {
		g, err := one.Get(ctx, "k")
		if err == nil && len(g.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted member does not have the write: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fatalTB records the first Fatalf or Skipf and ends the goroutine, as
// testing.T does.
type fatalTB struct {
	testing.TB
	mu    sync.Mutex
	fatal string
	skip  string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fatalTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skip = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func run(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// TestMemberFailsToStart: a member that does not start fails the test with
// its stderr.
func TestMemberFailsToStart(t *testing.T) {
	Require(t)
	f := &fatalTB{TB: t}
	run(func() { start(f, 1, []string{"--quota-backend-bytes", "lots"}) })
	if !strings.Contains(f.fatal, "did not start") || !strings.Contains(f.fatal, "quota-backend-bytes") {
		t.Fatalf("Start of a member that cannot start: fatal %q", f.fatal)
	}
}

// TestCallerEnvironmentIgnored: an ETCD_* variable of the caller does not
// reach the members (etcd would read it as a flag).
func TestCallerEnvironmentIgnored(t *testing.T) {
	t.Setenv("ETCD_QUOTA_BACKEND_BYTES", "lots")
	Start(t, 1)
}

// TestMissingBinary: a missing binary skips, or fails under
// HERMOD_REQUIRE_TOOLS=1.
func TestMissingBinary(t *testing.T) {
	t.Setenv("HERMOD_REQUIRE_TOOLS", "")
	f := &fatalTB{TB: t}
	run(func() { require(f, "/nonexistent/etcd") })
	if f.skip == "" || f.fatal != "" {
		t.Errorf("without HERMOD_REQUIRE_TOOLS: skip %q fatal %q", f.skip, f.fatal)
	}
	t.Setenv("HERMOD_REQUIRE_TOOLS", "1")
	f = &fatalTB{TB: t}
	run(func() { require(f, "/nonexistent/etcd") })
	if f.fatal == "" || f.skip != "" {
		t.Errorf("with HERMOD_REQUIRE_TOOLS=1: skip %q fatal %q", f.skip, f.fatal)
	}
}
