package queue

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLargeBodyInFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	s, err := Open(path, Options{LargeBody: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	small, large := newMessage("a@dest.test"), newMessage("b@dest.test")
	if err := s.EnqueueParts(ctx, small, []byte("Subject: s\r\n"), []byte("\r\nsmall\r\n")); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("0123456789", 300)
	if err := s.EnqueueParts(ctx, large, []byte("Subject: l\r\n\r\n"), []byte(big[:1500]), []byte(big[1500:])); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "bodies", large.ID)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("large body file: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bodies", small.ID)); err == nil {
		t.Error("small body written to a file")
	}
	for id, want := range map[string]string{small.ID: "Subject: s\r\n\r\nsmall\r\n", large.ID: "Subject: l\r\n\r\n" + big} {
		got, err := s.Body(id)
		if err != nil || !bytes.Equal(got, []byte(want)) {
			t.Errorf("Body(%s) = %d bytes, %v; want %d bytes", id, len(got), err, len(want))
		}
	}
	if m, _ := s.Get(large.ID); m.Size != len("Subject: l\r\n\r\n")+len(big) {
		t.Errorf("size %d", m.Size)
	}

	// Delivered from the file.
	d := newScripted()
	rctx, cancel := context.WithCancel(ctx)
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(rctx); close(done) }()
	waitStatus(t, s, large.ID, 0, StatusSent)
	cancel()
	<-done

	// An orphan (a crash between the file and the commit) is moved aside at open.
	orphan := filepath.Join(dir, "bodies", NewID(time.Now()))
	os.WriteFile(orphan, []byte("x"), 0o600)
	s.Close()
	s, err = Open(path, Options{LargeBody: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(orphan); err == nil {
		t.Error("orphan body file left among the bodies")
	}
	if _, err := os.Stat(filepath.Join(dir, "bodies", "orphans", filepath.Base(orphan))); err != nil {
		t.Errorf("orphan body file not moved aside: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("body file of a stored message removed at open: %v", err)
	}
	// Deleting the message removes its file.
	if err := s.Delete(ctx, large.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("body file kept after delete")
	}
}

func TestMissingBodyFileDefers(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "q.db"), Options{LargeBody: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := newMessage("a@dest.test")
	if err := s.Enqueue(context.Background(), m, []byte("Subject: x\r\n\r\nbody body body\r\n")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "bodies", m.ID))
	d := newScripted()
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRunner(s, d, RunnerOptions{Retry: []time.Duration{time.Hour}})
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	rc := waitStatus(t, s, m.ID, 0, StatusDeferred)
	cancel()
	<-done
	if !strings.Contains(rc.Last.Text, "body") || rc.Attempts != 1 {
		t.Errorf("missing body: %+v", rc.Last)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.attempts) != 0 {
		t.Errorf("delivered without a body: %v", d.attempts)
	}
}
