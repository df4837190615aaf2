package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// gateWriter holds the first Write until open is closed, so that a test can
// act while a backup's read transaction is open.
type gateWriter struct {
	w       io.Writer
	started chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.once.Do(func() {
		close(g.started)
		<-g.open
	})
	return g.w.Write(p)
}

func backupBody(i int, large bool) []byte {
	n := 200
	if large {
		n = 3000
	}
	return []byte(fmt.Sprintf("Subject: m%d\r\n\r\n%s\r\n", i, strings.Repeat(fmt.Sprintf("%04d", i), n/4)))
}

// TestBackupUnderLoadRestores backs up a store while submissions go on and
// messages whose body files the snapshot refers to are deleted, restores
// into a new directory, and delivers from there: every message acknowledged
// before the backup is present, intact and delivered.
func TestBackupUnderLoadRestores(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "hermod.db"), Options{LargeBody: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	bodies := map[string][]byte{}
	var doomed []string
	for i := 0; i < 120; i++ {
		m := newMessage(fmt.Sprintf("r%d@dest.test", i), fmt.Sprintf("s%d@dest.test", i))
		b := backupBody(i, i%2 == 0)
		if err := s.Enqueue(ctx, m, b); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			doomed = append(doomed, m.ID) // large (i even) ones have body files
		} else {
			bodies[m.ID] = b
		}
	}
	secret := filepath.Join(dir, "api.token")
	if err := os.WriteFile(secret, []byte("s3cret-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := os.MkdirAll(filepath.Join(dir, "backup-crashed.tmp"), 0o700); err != nil { // left by a crash
		t.Fatal(err)
	}
	subCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// Between the snapshot and the linking of its body files, delete
	// messages it refers to: their files must survive until the links exist.
	s.afterSnapshot = func() {
		for _, id := range doomed {
			if err := s.Delete(subCtx, id); err != nil {
				t.Error(err)
			}
		}
	}
	var archive bytes.Buffer
	g := &gateWriter{w: &archive, started: make(chan struct{}), open: make(chan struct{})}
	type result struct {
		man *BackupManifest
		err error
	}
	done := make(chan result, 1)
	go func() {
		man, err := s.Backup(g, BackupOptions{Secrets: map[string]string{"api.token": secret}})
		done <- result{man, err}
	}()
	select {
	case <-g.started:
	case res := <-done:
		t.Fatalf("backup ended before writing: %v", res.err)
	case <-time.After(10 * time.Second):
		t.Fatal("backup did not start writing")
	}
	// The client does not read yet: submissions go on meanwhile.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				m := newMessage(fmt.Sprintf("late%d-%d@dest.test", w, i))
				if err := s.Enqueue(subCtx, m, backupBody(i, i%3 == 0)); err != nil {
					errs <- fmt.Errorf("submission during backup: %w", err)
					return
				}
			}
		}(w)
	}
	wg.Wait() // submissions complete while the backup waits for its client
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(g.open)
	res := <-done
	if res.err != nil {
		t.Fatalf("backup: %v", res.err)
	}
	if res.man.Messages != 120 || res.man.BodyFiles != 60 {
		t.Fatalf("manifest: %d messages, %d body files; want 120 and 60 (the snapshot before the deletions)", res.man.Messages, res.man.BodyFiles)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "backup-*.tmp")); len(left) > 0 {
		t.Fatalf("backup copies left in the data directory: %v", left)
	}
	// The deferred removals happened once the backup ended.
	for _, id := range doomed {
		if _, err := os.Stat(filepath.Join(dir, "bodies", id)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("body file of deleted %s still there after the backup: %v", id, err)
		}
	}

	// Restore refuses a non-empty directory and a truncated archive.
	busy := t.TempDir()
	os.WriteFile(filepath.Join(busy, "x"), nil, 0o600)
	if _, _, err := Restore(bytes.NewReader(archive.Bytes()), busy); !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a non-empty dir: %v", err)
	}
	cut := archive.Bytes()[:archive.Len()-2048]
	if _, _, err := Restore(bytes.NewReader(cut), filepath.Join(t.TempDir(), "cut")); !errors.Is(err, ErrRestoreRefused) {
		t.Fatalf("restore of a truncated archive: %v", err)
	}

	rdir := filepath.Join(t.TempDir(), "restored")
	man, rep, err := Restore(bytes.NewReader(archive.Bytes()), rdir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 || rep.Messages != 120 || man.Secrets[0] != "api.token" {
		t.Fatalf("restored: %d messages, problems %v, secrets %v", rep.Messages, rep.Problems, man.Secrets)
	}
	err = filepath.WalkDir(rdir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700 | fs.ModeDir
		}
		if strings.HasSuffix(p, ".lock") || filepath.Base(p) == "lock" {
			return nil
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tok, _ := os.ReadFile(filepath.Join(rdir, "api.token")); string(tok) != "s3cret-token-0123456789\n" {
		t.Fatalf("restored secret: %q", tok)
	}

	r, err := Open(filepath.Join(rdir, "hermod.db"), Options{LargeBody: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for id, want := range bodies {
		got, err := r.Body(id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("restored body of %s: %v (%d bytes, want %d)", id, err, len(got), len(want))
		}
	}
	d := newScripted()
	stop := runRunner(t, r, d)
	defer stop()
	for id := range bodies {
		for idx := 0; idx < 2; idx++ {
			waitStatus(t, r, id, idx, StatusSent)
		}
	}
}
