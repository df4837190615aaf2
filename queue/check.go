package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// LockFile is the file in the data directory that the running hermod holds
// locked, with its process id inside.
const LockFile = "hermod.lock"

// lockDir takes the data directory's lock for this process, or says which
// process has it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b))
			if pid == "" {
				pid = "unknown"
			}
			return nil, fmt.Errorf("%w: data_dir %s is in use by hermod pid %s (it holds %s); stop it first, or give this one another data_dir", ErrRefused, dir, pid, path)
		}
		return nil, fmt.Errorf("queue: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// checkStoreFile decides whether the store file may be opened. It reports
// whether the store is new. A missing file is a new store, unless body files
// exist that only a lost store could refer to; an empty file is damage (bbolt
// would silently start afresh); a file shorter than its own meta page says is
// truncated (bbolt would die of SIGBUS reading past its end).
func checkStoreFile(path, bodyDir string) (fresh bool, err error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if n := countBodyFiles(bodyDir); n > 0 {
			return false, fmt.Errorf("%w: %s has %d body files but the store %s does not exist: acknowledged mail may be lost; restore %s from a backup, or move %s aside to start with an empty queue",
				ErrRefused, filepath.Dir(path), n, path, filepath.Base(path), bodyDir)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("queue: %w", err)
	case fi.Size() == 0:
		return false, fmt.Errorf("%w: the store %s is empty (0 bytes): it was damaged or truncated; restore it from a backup, or remove it (and move %s aside) to start with an empty queue",
			ErrRefused, path, bodyDir)
	}
	need, err := storeSizeFromMeta(path)
	if err != nil {
		return false, fmt.Errorf("%w: the store %s is damaged (%v); run `hermod store check` and restore it from a backup", ErrRefused, path, err)
	}
	if fi.Size() < need {
		return false, fmt.Errorf("%w: the store %s is truncated: %d bytes, its own header says at least %d; restore it from a backup",
			ErrRefused, path, fi.Size(), need)
	}
	return false, nil
}

func countBodyFiles(dir string) int {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if !e.IsDir() && ValidID(e.Name()) {
			n++
		}
	}
	return n
}

// bbolt's on-disk meta page (go.etcd.io/bbolt internal/common): a 16-byte
// page header, then magic, version, page size, flags, the root bucket (root
// page id, sequence), the freelist page id, the high-water page id, the
// transaction id and a checksum.
const (
	boltMagic      = 0xED0CDAED
	metaOffset     = 16
	metaPgidOffset = metaOffset + 4 + 4 + 4 + 4 + 16 + 8
)

// storeSizeFromMeta returns the smallest size the file must have: the
// high-water page id of its newest valid meta page times the page size.
func storeSizeFromMeta(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var hdr [metaPgidOffset + 8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return 0, fmt.Errorf("read first meta page: %w", err)
	}
	if binary.LittleEndian.Uint32(hdr[metaOffset:]) != boltMagic {
		return 0, errors.New("not a bbolt file (bad magic)")
	}
	pageSize := int64(binary.LittleEndian.Uint32(hdr[metaOffset+8:]))
	if pageSize < 512 || pageSize > 1<<16 {
		return 0, fmt.Errorf("implausible page size %d", pageSize)
	}
	var need int64
	for i := int64(0); i < 2; i++ {
		var m [metaPgidOffset + 8]byte
		if _, err := f.ReadAt(m[:], i*pageSize); err != nil {
			continue
		}
		if binary.LittleEndian.Uint32(m[metaOffset:]) != boltMagic {
			continue
		}
		need = max(need, int64(binary.LittleEndian.Uint64(m[metaPgidOffset:]))*pageSize)
	}
	if need == 0 {
		return 0, errors.New("no valid meta page")
	}
	return need, nil
}

// moveOrphans moves body files that no stored message refers to (the
// leftovers of a crash between writing a file and committing its message)
// into BodyDir/orphans, never deleting what it cannot account for.
func (s *Store) moveOrphans() error {
	entries, err := os.ReadDir(s.opts.BodyDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: read body dir: %w", err)
	}
	var orphans []string
	err = s.db.View(func(tx *bolt.Tx) error {
		for _, e := range entries {
			if e.IsDir() || !ValidID(e.Name()) {
				continue
			}
			m, err := getMsg(tx, e.Name())
			if err != nil || !m.BodyFile {
				orphans = append(orphans, e.Name())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(orphans) == 0 {
		return nil
	}
	aside := filepath.Join(s.opts.BodyDir, "orphans")
	if err := os.MkdirAll(aside, 0o700); err != nil {
		return fmt.Errorf("queue: create %s: %w", aside, err)
	}
	for _, name := range orphans {
		if err := os.Rename(filepath.Join(s.opts.BodyDir, name), filepath.Join(aside, name)); err != nil {
			return fmt.Errorf("queue: move orphan body file aside: %w", err)
		}
		s.log.Warn("queue: body file of no stored message moved aside (a crash before its commit?)", "file", filepath.Join(aside, name))
	}
	return nil
}
