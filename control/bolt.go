package control

import (
	"fmt"

	"go.etcd.io/bbolt"
)

// Bolt keeps the control buckets in a bbolt file owned by the caller (a
// single node's hermod.db). It is the embedded default.
type Bolt struct {
	db *bbolt.DB
}

// OpenBolt creates the control buckets in db if they are missing.
func OpenBolt(db *bbolt.DB) (*Bolt, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range Buckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b.Name)); err != nil {
				return fmt.Errorf("create bucket %s: %w", b.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("control: open: %w", err)
	}
	return &Bolt{db: db}, nil
}

// View implements Store.
func (b *Bolt) View(fn func(Tx) error) error {
	return b.db.View(func(tx *bbolt.Tx) error { return fn(boltTx{tx}) })
}

// Update implements Store. bbolt runs fn exactly once.
func (b *Bolt) Update(fn func(Tx) error) error {
	return b.db.Update(func(tx *bbolt.Tx) error { return fn(boltTx{tx}) })
}

// Subscribe implements Store: a single node has no other writers.
func (b *Bolt) Subscribe(func([]Change)) {}

type boltTx struct{ tx *bbolt.Tx }

func (t boltTx) Bucket(name string) Bucket {
	b := t.tx.Bucket([]byte(name))
	if b == nil {
		panic("control: undeclared bucket " + name)
	}
	return boltBucket{b}
}

type boltBucket struct{ *bbolt.Bucket }

func (b boltBucket) Cursor() Cursor { return b.Bucket.Cursor() }
