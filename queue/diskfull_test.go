package queue

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestDiskFull mounts a small tmpfs (root only; skipped elsewhere), fills
// it, and checks that enqueueing fails with ErrStorage and leaves nothing
// half-written, then works again once space is freed.
func TestDiskFull(t *testing.T) {
	dir := testnet.Tmpfs(t, "4m")
	s := openStore(t, filepath.Join(dir, "q.db"), nil)
	defer s.Close()
	ctx := context.Background()
	body := make([]byte, 64<<10)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var accepted []string
	var full error
	for i := 0; i < 200; i++ {
		m := newMessage("r@dest.test")
		if err := s.Enqueue(ctx, m, body); err != nil {
			full = err
			break
		}
		accepted = append(accepted, m.ID)
	}
	if full == nil {
		t.Fatal("the disk never filled up")
	}
	if !errors.Is(full, ErrStorage) {
		t.Fatalf("enqueue on a full disk: %v, want ErrStorage", full)
	}
	// Everything acknowledged before is intact; the refused message left nothing.
	for _, id := range accepted {
		if _, err := s.Body(id); err != nil {
			t.Fatalf("acknowledged message %s lost: %v", id, err)
		}
	}
	if c := s.Counts()[StatusQueued]; c != int64(len(accepted)) {
		t.Errorf("queued count %d, want %d", c, len(accepted))
	}
	// Space comes back: work resumes by itself.
	for _, id := range accepted[:len(accepted)/2] {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("delete to free space: %v", err)
		}
	}
	m := newMessage("r@dest.test")
	if err := s.Enqueue(ctx, m, []byte("small\r\n")); err != nil {
		t.Fatalf("enqueue after space came back: %v", err)
	}
	t.Logf("%d messages fit, then: %v", len(accepted), full)
}
