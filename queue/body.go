package queue

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/hermod-mta/hermod/internal/atomicfile"

	bolt "go.etcd.io/bbolt"
)

// Large bodies live in files beside the store instead of in bbolt: a bbolt
// write keeps the whole value in memory until commit and copies it again
// when the map grows, so a 25 MiB message would cost several times its size.
// The file is written and fsynced before the transaction that refers to it
// commits; a crash in between leaves an orphan file that Open moves aside.

// DefaultLargeBody is the size from which a body is kept in a file.
const DefaultLargeBody = 1 << 20

// ErrBodyDamaged is wrapped by OpenBody when a stored body does not have the
// size and checksum it was accepted with. Such a body is never sent.
var ErrBodyDamaged = errors.New("queue: stored body is damaged")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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
		if isNoSpace(err) && s.space != nil {
			s.space.release()
		}
		return fmt.Errorf("%w: write body file: %w", ErrStorage, err)
	}
	return nil
}

// Body is a stored message as it leaves, checked against the size and
// checksum it was accepted with. It reads from the store's copy or the body
// file without holding the whole message in memory again. Close it.
type Body struct {
	r    io.ReaderAt
	size int64
	file *os.File
}

// Size is the message's length in bytes.
func (b *Body) Size() int64 { return b.size }

// ReadAt implements io.ReaderAt.
func (b *Body) ReadAt(p []byte, off int64) (int, error) { return b.r.ReadAt(p, off) }

// Reader returns a reader of the whole message from its start.
func (b *Body) Reader() io.Reader { return io.NewSectionReader(b.r, 0, b.size) }

// Close releases the body file, if any.
func (b *Body) Close() error {
	if b.file != nil {
		return b.file.Close()
	}
	return nil
}

// OpenBody returns the body of message id, verified. A body whose size or
// CRC-32C differs from what was accepted returns an error wrapping
// ErrBodyDamaged (and is counted in BodyErrors).
func (s *Store) OpenBody(id string) (*Body, error) {
	var m *msgRecord
	var small []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if m, err = getMsg(tx, id); err != nil {
			return err
		}
		if !m.BodyFile {
			v := tx.Bucket(bucketBodies).Get([]byte(id))
			if v == nil {
				return fmt.Errorf("%w: the body of %s is missing from the store", ErrBodyDamaged, id)
			}
			small = bytes.Clone(v) // bbolt's bytes are valid only inside the transaction
		}
		return nil
	})
	if err != nil {
		return nil, s.bodyError(id, err)
	}
	if !m.BodyFile {
		if len(small) != m.Size || crc32.Checksum(small, castagnoli) != m.BodyCRC {
			return nil, s.bodyError(id, fmt.Errorf("%w: the body of %s has %d bytes and checksum %08x, accepted with %d and %08x",
				ErrBodyDamaged, id, len(small), crc32.Checksum(small, castagnoli), m.Size, m.BodyCRC))
		}
		return &Body{r: bytes.NewReader(small), size: int64(len(small))}, nil
	}
	f, err := os.Open(s.bodyPath(id))
	if err != nil {
		return nil, s.bodyError(id, fmt.Errorf("%w: the body file of %s cannot be read: %v", ErrBodyDamaged, id, err))
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() != int64(m.Size) {
		err = fmt.Errorf("%w: the body file of %s has %d bytes, accepted with %d", ErrBodyDamaged, id, fi.Size(), m.Size)
	}
	if err == nil {
		h := crc32.New(castagnoli)
		if _, rerr := io.Copy(h, io.NewSectionReader(f, 0, int64(m.Size))); rerr != nil {
			err = fmt.Errorf("%w: reading the body file of %s: %v", ErrBodyDamaged, id, rerr)
		} else if h.Sum32() != m.BodyCRC {
			err = fmt.Errorf("%w: the body file of %s has checksum %08x, accepted with %08x", ErrBodyDamaged, id, h.Sum32(), m.BodyCRC)
		}
	}
	if err != nil {
		f.Close()
		return nil, s.bodyError(id, err)
	}
	return &Body{r: f, size: int64(m.Size), file: f}, nil
}

func (s *Store) bodyError(id string, err error) error {
	if errors.Is(err, ErrBodyDamaged) {
		s.bodyErrors.Add(1)
		s.log.Error("queue: damaged body", "msgid", id, "err", err)
	}
	return err
}

// Body returns a copy of the stored message bytes, verified (OpenBody).
func (s *Store) Body(id string) ([]byte, error) {
	b, err := s.OpenBody(id)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	out := make([]byte, b.Size())
	if _, err := io.ReadFull(b.Reader(), out); err != nil {
		return nil, fmt.Errorf("queue: read body of %s: %w", id, err)
	}
	return out, nil
}
