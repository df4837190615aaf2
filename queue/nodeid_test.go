package queue

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/vocab"
)

func TestNewNodeIDFormSortsAndNode(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	single := NewNodeID("", t0)
	if len(single) != CoreIDLen || !ValidID(single) || IDNode(single) != "" {
		t.Fatalf("NewNodeID(\"\") = %q (node %q), want a 16-char single-node id", single, IDNode(single))
	}
	for _, node := range []vocab.NodeID{"a", "n1", "node0001"} {
		a, b := NewNodeID(node, t0), NewNodeID(node, t0.Add(time.Millisecond))
		core, ok := strings.CutPrefix(a, string(node)+"-")
		if !ok || len(core) != CoreIDLen || len(a) > MaxIDLen {
			t.Errorf("NewNodeID(%q) = %q, want %q-<16 chars>", node, a, node)
		}
		if !ValidID(a) || !ValidID(b) {
			t.Errorf("ValidID refuses %q or %q", a, b)
		}
		if a >= b {
			t.Errorf("ids of node %q do not sort by time: %q >= %q", node, a, b)
		}
		if IDNode(a) != node {
			t.Errorf("IDNode(%q) = %q, want %q", a, IDNode(a), node)
		}
		// A spool that joins a cluster keeps its single-node ids: they sort
		// before the node's new ids, as they were accepted before.
		if old := NewID(t0.Add(-time.Hour)); old >= a {
			t.Errorf("single-node id %q sorts after node id %q", old, a)
		}
	}
	const core = "0123456789abcdef"
	for _, bad := range []string{
		"", "-" + core, "N1-" + core, "1a-" + core, "abcdefghi-" + core, "n_1-" + core,
		"n1-" + core[:15], "n1-" + core + "0", "n1-0123456789ABCDEF", "n1-0123456789abcdew",
		"n1--" + core, "n1-" + core + "-", "n1-" + core[:8] + "-" + core[8:], "n1_" + core, "n1" + core,
		core[:15], core + "0",
	} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
		if n := IDNode(bad); n != "" {
			t.Errorf("IDNode(%q) = %q for an invalid id", bad, n)
		}
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("NewNodeID with an invalid node id did not panic")
			}
		}()
		NewNodeID("Bad", t0)
	}()
}

// TestNodeIDsThroughTheStore runs messages with ids of every length (single
// node, a one-letter node, an eight-letter node) through every index that
// parses ids out of its keys: the time index and the per-destination index
// (delivery), the status index (List, Summary, Bulk), body files (and the
// orphan check at open).
func TestNodeIDsThroughTheStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	s, err := Open(path, Options{LargeBody: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	ctx := context.Background()
	now := time.Now()
	var msgs []*Message
	for i, node := range []vocab.NodeID{"", "a", "node0001"} {
		m := newMessage("x@dest.test", "y@dest.test", "z@other.test")
		m.ID = NewNodeID(node, now.Add(time.Duration(i)*time.Millisecond))
		body := "Subject: " + m.ID + "\r\n\r\n" + strings.Repeat("b", 2000) + "\r\n"
		if err := s.Enqueue(ctx, m, []byte(body)); err != nil {
			t.Fatalf("enqueue %s: %v", m.ID, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "bodies", m.ID)); err != nil {
			t.Errorf("body file of %s: %v", m.ID, err)
		}
		msgs = append(msgs, m)
	}
	want := []string{msgs[0].ID, msgs[1].ID, msgs[2].ID}
	sort.Sort(sort.Reverse(sort.StringSlice(want)))
	listed := func(st Status) []string {
		t.Helper()
		page, _, err := s.List(ListOptions{Status: st})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range page {
			ids = append(ids, m.ID)
		}
		return ids
	}
	if got := listed(StatusQueued); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("List(queued) = %v, want %v", got, want)
	}
	rows, err := s.Summary("domain")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, r := range rows {
		total += r.Queued
	}
	if total != 9 {
		t.Errorf("Summary counts %d queued recipients, want 9: %+v", total, rows)
	}
	res, err := s.Bulk(ctx, ActionHold, Filter{IDs: []string{msgs[1].ID, msgs[2].ID}}, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != 2 || res.Recipients != 6 {
		t.Errorf("Bulk hold of two node ids: %d messages, %d recipients; want 2, 6", res.Messages, res.Recipients)
	}
	if got := listed(StatusHeld); strings.Join(got, ",") != strings.Join(want[:2], ",") {
		t.Errorf("List(held) = %v, want %v", got, want[:2])
	}
	if res, err := s.Bulk(ctx, ActionRelease, Filter{Status: StatusHeld}, false, 0); err != nil || res.Recipients != 6 {
		t.Fatalf("Bulk release: %+v, %v", res, err)
	}

	d := newScripted()
	rctx, cancel := context.WithCancel(ctx)
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(rctx); close(done) }()
	for _, m := range msgs {
		for idx := range m.Recipients {
			waitStatus(t, s, m.ID, idx, StatusSent)
		}
	}
	cancel()
	<-done
	if n := len(d.done); n != 9 {
		t.Errorf("%d deliveries, want 9 (one per recipient)", n)
	}

	// The orphan check at open knows node ids: a stored message's body file
	// stays, an orphan of a node id is moved aside.
	orphan := NewNodeID("node0001", now)
	if err := os.WriteFile(filepath.Join(dir, "bodies", orphan), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(path, Options{LargeBody: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bodies", "orphans", orphan)); err != nil {
		t.Errorf("orphan body file of a node id not moved aside: %v", err)
	}
	for _, m := range msgs {
		if _, err := os.Stat(filepath.Join(dir, "bodies", m.ID)); err != nil {
			t.Errorf("body file of stored %s: %v", m.ID, err)
		}
	}
}
