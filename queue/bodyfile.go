package queue

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hermod-mta/hermod/internal/atomicfile"

	bolt "go.etcd.io/bbolt"
)

// Large bodies live in files beside the store instead of in bbolt: a bbolt
// write keeps the whole value in memory until commit and copies it again
// when the map grows, so a 25 MiB message would cost several times its size.
// The file is written and fsynced before the transaction that refers to it
// commits; a crash in between leaves an orphan file that Open removes.

// DefaultLargeBody is the size from which a body is kept in a file.
const DefaultLargeBody = 1 << 20

// fileMarker is the value stored in the bodies bucket for a body kept in a
// file. A message never starts with NUL (DATA refuses NUL bytes).
var fileMarker = []byte("\x00file")

func (s *Store) bodyPath(id string) string { return filepath.Join(s.opts.BodyDir, id) }

// writeBodyFile writes parts to the body file of id, durably.
func (s *Store) writeBodyFile(id string, parts [][]byte) error {
	if err := os.MkdirAll(s.opts.BodyDir, 0o700); err != nil {
		return fmt.Errorf("%w: create body dir: %w", ErrStorage, err)
	}
	path := s.bodyPath(id)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: create body file: %w", ErrStorage, err)
	}
	for _, p := range parts {
		if _, err = f.Write(p); err != nil {
			break
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = atomicfile.SyncDir(s.opts.BodyDir)
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("%w: write body file: %w", ErrStorage, err)
	}
	return nil
}

// readBody returns a copy of the body of id: from the bucket or its file.
func (s *Store) readBody(tx *bolt.Tx, id string) ([]byte, error) {
	v := tx.Bucket(bucketBodies).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("%w: body of %s", ErrNotFound, id)
	}
	if string(v) != string(fileMarker) {
		return append([]byte(nil), v...), nil
	}
	b, err := os.ReadFile(s.bodyPath(id))
	if err != nil {
		return nil, fmt.Errorf("queue: read body file of %s: %w", id, err)
	}
	return b, nil
}

// removeOrphans deletes body files that no stored message refers to: the
// leftovers of a crash between writing a file and committing its message.
func (s *Store) removeOrphans() error {
	entries, err := os.ReadDir(s.opts.BodyDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: read body dir: %w", err)
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBodies)
		for _, e := range entries {
			if e.IsDir() || !ValidID(e.Name()) {
				continue
			}
			if v := b.Get([]byte(e.Name())); v == nil || string(v) != string(fileMarker) {
				s.log.Warn("queue: removing orphan body file (crash before its commit)", "file", e.Name())
				os.Remove(s.bodyPath(e.Name()))
			}
		}
		return nil
	})
}
