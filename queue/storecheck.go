package queue

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CheckReport is what Check found in a store.
type CheckReport struct {
	Messages, Recipients, Events, BodyFiles int
	// Counts are the recipients per status, counted from the records.
	Counts map[Status]int64
	// Problems lists every inconsistency found; empty means the store is sound.
	Problems []string
}

// maxProblems bounds the problems Check lists.
const maxProblems = 100

// Check examines the store at path offline: it takes the data directory's
// lock (so it refuses while hermod runs), refuses what Open refuses, runs
// bbolt's own page consistency check, and checks every message: its
// recipient records, its body's size and checksum, the due index for
// pending recipients and the stored counters. It writes nothing.
func Check(path, bodyDir string) (*CheckReport, error) {
	dir := filepath.Dir(path)
	if bodyDir == "" {
		bodyDir = filepath.Join(dir, "bodies")
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if _, err := checkStoreFile(path, bodyDir); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("%w: %s cannot be opened: %v", ErrRefused, path, err)
	}
	defer db.Close()
	s := &Store{db: db, opts: Options{BodyDir: bodyDir}, log: slog.New(slog.DiscardHandler)}
	rep := &CheckReport{Counts: map[Status]int64{}}
	var ids []string
	problem := func(format string, args ...any) {
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		}
	}
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			problem("bbolt: %v", err)
		}
		if tx.Bucket([]byte("messages")) != nil {
			problem("the store is in hermod v0's format: start hermod once to migrate it")
			return nil
		}
		for _, b := range spoolBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("%w: bucket %q is missing: not a hermod store", ErrRefused, b)
			}
		}
		rep.Events = tx.Bucket(bucketEvents).Stats().KeyN
		return tx.Bucket(bucketMsgs).ForEach(func(k, _ []byte) error {
			rep.Messages++
			ids = append(ids, string(k))
			m, err := getMsg(tx, string(k))
			if err != nil {
				problem("message %s: %v", k, err)
				return nil
			}
			n := 0
			if err := forEachRcpt(tx, m.ID, func(idx int, r *rcptRecord) error {
				n++
				rep.Counts[r.Status]++
				if r.Status.Pending() && tx.Bucket(bucketDue).Get(dueKey(r.NextAttempt, m.ID, idx)) == nil {
					problem("message %s recipient %d is %s but not in the due index", m.ID, idx, r.Status)
				}
				return nil
			}); err != nil {
				problem("message %s: %v", m.ID, err)
			}
			rep.Recipients += n
			if n != m.Rcpts {
				problem("message %s has %d recipient records, its envelope says %d", m.ID, n, m.Rcpts)
			}
			if m.BodyFile {
				rep.BodyFiles++
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	// Bodies are read after the walk, one message at a time.
	for _, id := range ids {
		b, err := s.OpenBody(id)
		if err != nil {
			problem("%v", err)
			continue
		}
		b.Close()
	}
	_ = db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCounts)
		for _, st := range Statuses {
			var stored int64
			if v := c.Get([]byte(st)); len(v) == 8 {
				stored = int64(binary.BigEndian.Uint64(v))
			}
			if stored != rep.Counts[st] {
				problem("the stored count of %s recipients is %d; the records have %d", st, stored, rep.Counts[st])
			}
		}
		return nil
	})
	return rep, nil
}
