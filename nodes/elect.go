package nodes

import (
	"context"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Background runs work that must happen on one node at a time (domain
// verification and its owner notices, the purge of expired suppressions)
// under an etcd election: the node elected runs it until its session ends
// (it stops, dies, or loses etcd for longer than the session TTL), and then
// another node is elected and runs it.
type Background struct {
	cli    *clientv3.Client
	prefix string
	node   string
	ttl    int
	log    *slog.Logger
}

// NewBackground returns the election of node under prefix, with sessions
// of ttl (rounded to seconds, at least 2).
func NewBackground(cli *clientv3.Client, prefix, node string, ttl time.Duration, log *slog.Logger) *Background {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Background{cli: cli, prefix: prefix, node: node, ttl: max(int(ttl/time.Second), 2), log: log}
}

func (b *Background) key() string { return b.prefix + "/leader" }

// Run campaigns until ctx is done; each time this node is elected it calls
// work with a context that ends when the leadership does, and waits for
// work to return before campaigning again.
func (b *Background) Run(ctx context.Context, work func(ctx context.Context)) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := b.term(ctx, work)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			b.log.Warn("cluster: background election", "node", b.node, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (b *Background) term(ctx context.Context, work func(ctx context.Context)) error {
	sess, err := concurrency.NewSession(b.cli, concurrency.WithTTL(b.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, b.key())
	if err := el.Campaign(ctx, b.node); err != nil {
		return err
	}
	b.log.Info("cluster: this node runs the background work", "node", b.node)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		work(wctx)
	}()
	select {
	case <-sess.Done():
		b.log.Warn("cluster: lost the background lease; another node takes over", "node", b.node)
	case <-ctx.Done():
	}
	cancel()
	<-done
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	_ = el.Resign(rctx)
	return nil
}

// Leader returns the node that holds the background lease, "" if none.
func Leader(ctx context.Context, cli *clientv3.Client, prefix string) (string, error) {
	resp, err := cli.Get(ctx, prefix+"/leader/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}
