package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// v0 (hermod's first version) kept each message, all its recipients and all
// their events in one JSON value of the bucket "messages", and marked bodies
// kept in files with this value in "bodies".
var (
	v0BucketMessages = []byte("messages")
	v0FileMarker     = []byte("\x00file")
)

// metaMigratedSeq records the last event sequence number at the v0
// migration: v0 applied suppressions and the webhook outbox inside its own
// transactions, so consumers of the log start after it.
var metaMigratedSeq = []byte("v0_last_seq")

// migrateV0 moves every v0 message into the schema 1 records, a batch of
// messages per transaction; each message moves atomically (its v0 value is
// deleted in the transaction that writes its records), so an interrupted
// migration resumes where it stopped at the next start.
func (s *Store) migrateV0() error {
	start := time.Now()
	moved := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range spoolBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if meta.Get(metaMigratedSeq) == nil {
			return meta.Put(metaMigratedSeq, seqKey(tx.Bucket(bucketEvents).Sequence()))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: migrate v0 store: %w", err)
	}
	for {
		n, err := s.migrateV0Batch(500)
		if err != nil {
			return fmt.Errorf("queue: migrate v0 store: %w", err)
		}
		moved += n
		if n == 0 {
			break
		}
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(v0BucketMessages); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put([]byte("schema"), []byte(schemaVersion))
	})
	if err != nil {
		return fmt.Errorf("queue: migrate v0 store: %w", err)
	}
	s.log.Info("queue: migrated a v0 store to schema "+schemaVersion, "messages", moved, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (s *Store) migrateV0Batch(limit int) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		old := tx.Bucket(v0BucketMessages)
		var keys [][]byte
		c := old.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := s.migrateV0Message(tx, k, old.Get(k)); err != nil {
				return fmt.Errorf("message %s: %w", k, err)
			}
			if err := old.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	return n, err
}

func (s *Store) migrateV0Message(tx *bolt.Tx, id, v []byte) error {
	var m Message
	if err := json.Unmarshal(v, &m); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	rec := newMsgRecord(&m)
	mr := &rec
	bodies := tx.Bucket(bucketBodies)
	body := bodies.Get(id)
	switch {
	case bytes.Equal(body, v0FileMarker):
		mr.BodyFile = true
		crc, size, err := fileCRC(s.bodyPath(m.ID))
		if err != nil {
			return fmt.Errorf("body file: %w", err)
		}
		mr.BodyCRC, mr.Size = crc, int(size)
		if err := bodies.Delete(id); err != nil {
			return err
		}
	case body != nil:
		mr.BodyCRC, mr.Size = crc32.Checksum(body, castagnoli), len(body)
	default:
		return fmt.Errorf("no body")
	}
	for i, r := range m.Recipients {
		rr := &rcptRecord{Address: r.Address, EnvelopeFrom: r.EnvelopeFrom, Status: r.Status, Reason: r.Reason,
			Attempts: r.Attempts, NextAttempt: r.NextAttempt}
		if r.Last != nil {
			rr.LastSeq = r.Last.Seq
		}
		for _, ev := range r.Events {
			if err := tx.Bucket(bucketMsgEvents).Put(msgEventKey(m.ID, ev.Seq), nil); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketByStatus).Put(statusKey(rr.Status, m.ID, i), nil); err != nil {
			return err
		}
		if rr.Status.Pending() && !rr.NextAttempt.IsZero() {
			// v0's due entries had no value; the scheduler wants the destination.
			if err := putDue(tx, rr.NextAttempt, m.ID, i, rr.Address); err != nil {
				return err
			}
		}
		if err := putRcpt(tx, m.ID, i, rr); err != nil {
			return err
		}
	}
	return putMsg(tx, mr)
}

func fileCRC(path string) (uint32, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, f)
	return h.Sum32(), n, err
}

// MigratedSeq returns the last event sequence number of the v0 store this
// store was migrated from (0 for a store created by this version): a
// consumer of the log that has no cursor yet starts after it.
func (s *Store) MigratedSeq() uint64 {
	var seq uint64
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(metaMigratedSeq); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return seq
}
