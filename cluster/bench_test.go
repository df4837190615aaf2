package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/internal/etcdtest"
)

// BenchmarkView is the hot path: one View with one Get from the replica.
func BenchmarkView(b *testing.B) {
	c := etcdtest.Start(b, 3)
	s, _ := NewSealer(testSecret)
	k, err := OpenKV(context.Background(), c.Client(b), KVOptions{Prefix: "/hermod", ReplicaPath: filepath.Join(b.TempDir(), "r.db"), Seal: s})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	if err := k.Update(func(tx control.Tx) error {
		return tx.Bucket("suppress").Put([]byte("rcpt@example.org"), []byte("hard bounce"))
	}); err != nil {
		b.Fatal(err)
	}
	key := []byte("rcpt@example.org")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := k.View(func(tx control.Tx) error {
			if tx.Bucket("suppress").Get(key) == nil {
				return fmt.Errorf("missing")
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdate is one Get-then-Put Update against the 3-member cluster,
// replica caught up included.
func BenchmarkUpdate(b *testing.B) {
	c := etcdtest.Start(b, 3)
	s, _ := NewSealer(testSecret)
	k, err := OpenKV(context.Background(), c.Client(b), KVOptions{Prefix: "/hermod", ReplicaPath: filepath.Join(b.TempDir(), "r.db"), Seal: s})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		key := []byte(fmt.Sprintf("d%d.example", i%100))
		if err := k.Update(func(tx control.Tx) error {
			bk := tx.Bucket("domain")
			_ = bk.Get(key)
			return bk.Put(key, []byte("record"))
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFullLoad100k times opening a node (a full load) on a prefix of
// 100,000 keys.
func BenchmarkFullLoad100k(b *testing.B) {
	c := etcdtest.Start(b, 3)
	cli := c.Client(b)
	const n = 100000
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	for i := 0; i < n; i += MaxTxnOps {
		var ops []clientv3.Op
		for j := i; j < i+MaxTxnOps && j < n; j++ {
			key := fmt.Sprintf("/hermod/c/suppress/%x", fmt.Sprintf("rcpt%07d@example.org", j))
			ops = append(ops, clientv3.OpPut(key, "hard bounce 5.1.1 at 2026-12-01T21:00:00Z from mx.example.org"))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("wrote %d keys in %v", n, time.Since(start))
	s, _ := NewSealer(testSecret)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k, err := OpenKV(ctx, cli, KVOptions{Prefix: "/hermod", ReplicaPath: filepath.Join(b.TempDir(), "r.db"), Seal: s, RequestTimeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var count int
		k.View(func(tx control.Tx) error {
			return tx.Bucket("suppress").ForEach(func(_, _ []byte) error { count++; return nil })
		})
		if count != n {
			b.Fatalf("loaded %d keys, want %d", count, n)
		}
		k.Close()
		b.StartTimer()
	}
}
