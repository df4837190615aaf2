package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ReserveFile is the file in the data directory that holds the spool's
// free-space reserve.
const ReserveFile = "reserve"

// reserve keeps free space for the spool's own bookkeeping. A file of the
// reserve's size sits in the data directory; new mail is refused while the
// file system has less than that free besides it, and when a write fails for
// lack of space anyway the file is removed, so that outcomes of deliveries
// can still be recorded and finished mail deleted (bbolt needs free pages
// even to delete). The file is made again once space has come back.
type reserve struct {
	path string
	size int64
	log  *slog.Logger

	mu       sync.Mutex
	released bool      // the file is gone: refuse new mail
	checked  time.Time // last statfs
	lowFree  bool      // last statfs found less than size free
}

func newReserve(dir string, size int64, log *slog.Logger) (*reserve, error) {
	r := &reserve{path: filepath.Join(dir, ReserveFile), size: size, log: log}
	if size <= 0 {
		os.Remove(r.path)
		return r, nil
	}
	if fi, err := os.Stat(r.path); err == nil && fi.Size() == size {
		return r, nil
	}
	if err := r.fill(); err != nil {
		// Not fatal: hermod runs, but refuses new mail until there is room.
		log.Warn("queue: cannot make the free-space reserve; refusing new mail until there is room", "file", r.path, "size", size, "err", err)
		r.released = true
	}
	return r, nil
}

// fill writes the reserve file in full (allocated blocks, not a sparse file).
func (r *reserve) fill() error {
	tmp := r.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	left := r.size
	for left > 0 && err == nil {
		n := min(left, int64(len(buf)))
		_, err = f.Write(buf[:n])
		left -= n
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write reserve file: %w", err)
	}
	return nil
}

// release frees the reserve after a write failed for lack of space.
func (r *reserve) release() {
	if r.size <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return
	}
	if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Error("queue: cannot release the free-space reserve", "file", r.path, "err", err)
	}
	r.released = true
	r.log.Warn("queue: disk full: released the free-space reserve; new mail is refused until there is room again", "size", r.size)
}

// free returns the bytes available to this process on the reserve's file system.
func (r *reserve) free() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(r.path), &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// admit reports whether new mail of n bytes may be accepted: the reserve is
// in place and the file system has room for the message besides it. When
// the reserve was released it tries to make it again first. While space is
// plentiful statfs runs at most every 100 ms; while it is short, every time.
func (r *reserve) admit(n int) error {
	if r.size <= 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.checked) >= 100*time.Millisecond || r.released || r.lowFree {
		r.checked = now
		free, err := r.free()
		if err != nil {
			return fmt.Errorf("%w: statfs: %w", ErrStorage, err)
		}
		if r.released && free >= 2*r.size+int64(n) {
			if err := r.fill(); err == nil {
				r.released = false
				r.log.Info("queue: free-space reserve restored; accepting new mail", "size", r.size)
				free -= r.size
			}
		}
		r.lowFree = free < r.size+int64(n)
	}
	if r.released || r.lowFree {
		return fmt.Errorf("%w: disk nearly full (the spool keeps %d bytes in reserve)", ErrStorage, r.size)
	}
	return nil
}
