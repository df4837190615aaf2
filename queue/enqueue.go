package queue

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Enqueue durably stores a new message, its body and one delivery per
// recipient, all due now unless they already carry a final status (a
// suppressed recipient). It returns once the commit is on disk; an error
// wrapping ErrStorage means the disk refused the write (or is nearly full).
func (s *Store) Enqueue(ctx context.Context, m *Message, body []byte) error {
	return s.EnqueueParts(ctx, m, body)
}

// EnqueueParts is Enqueue with the message given as consecutive parts (a
// signature, the header, body chunks), so that a large message is written
// out without first being assembled in memory. It sets m.Received (when
// zero) and m.Size; the rest of m is only read.
func (s *Store) EnqueueParts(ctx context.Context, m *Message, parts ...[]byte) error {
	if !ValidID(m.ID) {
		return fmt.Errorf("queue: invalid message id %q", m.ID)
	}
	if len(m.Recipients) == 0 {
		return fmt.Errorf("queue: message %s has no recipients", m.ID)
	}
	if len(m.Recipients) > 1<<16 {
		return fmt.Errorf("queue: message %s has %d recipients, more than the store keeps", m.ID, len(m.Recipients))
	}
	if m.Received.IsZero() {
		m.Received = s.now()
	}
	size := 0
	crc := uint32(0)
	for _, p := range parts {
		size += len(p)
		crc = crc32.Update(crc, castagnoli, p)
	}
	m.Size = size
	if err := s.space.admit(size); err != nil {
		return err
	}
	// Everything the transaction writes is built here, once, from the
	// caller's message: the function below only copies it into the store.
	rec := newMsgRecord(m)
	rec.Size, rec.BodyCRC, rec.Finished = size, crc, time.Time{}
	type newRcpt struct {
		rec     rcptRecord
		initial Status
		ev      Event
	}
	rcpts := make([]newRcpt, len(m.Recipients))
	done := true
	for i, r := range m.Recipients {
		initial := r.Status
		if initial == "" {
			initial = StatusQueued
		}
		if initial.Open() { // a recipient accepted held is not final either
			done = false
		}
		ev := Event{Time: m.Received, Status: initial, Source: "smtp"}
		if r.Last != nil { // the caller described why (suppressed)
			ev.Reason, ev.Text = r.Last.Reason, r.Last.Text
		}
		rcpts[i] = newRcpt{rec: rcptRecord{Address: r.Address, EnvelopeFrom: r.EnvelopeFrom, Reason: ev.Reason}, initial: initial, ev: ev}
	}
	var stored []byte
	rec.BodyFile = s.opts.LargeBody > 0 && size >= s.opts.LargeBody
	if rec.BodyFile {
		if err := s.writeBodyFile(m.ID, parts); err != nil {
			return err
		}
	} else if len(parts) == 1 {
		stored = parts[0]
	} else {
		stored = bytes.Join(parts, nil)
	}
	err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
		if tx.Bucket(bucketMsgs).Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("queue: message %s already exists", rec.ID)
		}
		mr := rec // the transaction's own copies
		if !mr.BodyFile {
			if err := tx.Bucket(bucketBodies).Put([]byte(mr.ID), stored); err != nil {
				return err
			}
		}
		if mr.Ref != "" {
			if err := tx.Bucket(bucketRefs).Put(indexKey(mr.Ref, mr.ID), nil); err != nil {
				return err
			}
		}
		for i := range rcpts {
			r := rcpts[i].rec
			if err := tx.Bucket(bucketAddrs).Put(indexKey(lowerASCII(r.Address), mr.ID), nil); err != nil {
				return err
			}
			if _, err := s.moveStatus(tx, st, &mr, i, &r, rcpts[i].initial, mr.Received, false); err != nil {
				return err
			}
			if _, err := s.appendEvent(tx, st, &mr, i, &r, rcpts[i].ev); err != nil {
				return err
			}
			if err := putRcpt(tx, mr.ID, i, &r); err != nil {
				return err
			}
		}
		if done {
			mr.Finished = mr.Received
			if err := tx.Bucket(bucketFinished).Put(timeKey(mr.Finished, mr.ID), nil); err != nil {
				return err
			}
		}
		return putMsg(tx, &mr)
	})
	if err != nil && rec.BodyFile {
		os.Remove(s.bodyPath(m.ID)) // the transaction did not commit
	}
	return err
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
