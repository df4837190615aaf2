package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sort"

	"go.etcd.io/bbolt"

	"github.com/hermod-mta/hermod/control"
)

// errReadOnly is returned by a write in a View.
var errReadOnly = errors.New("cluster: write in a read-only transaction")

// errKeyRequired is returned by a write of an empty key.
var errKeyRequired = errors.New("cluster: a key is required")

// replicaBucket returns the replica's bucket of a control bucket, panicking
// on an undeclared name as control.Tx promises.
func replicaBucket(tx *bbolt.Tx, name string) *bbolt.Bucket {
	var b *bbolt.Bucket
	if name != metaBucket {
		b = tx.Bucket([]byte(name))
	}
	if b == nil {
		panic("cluster: undeclared bucket " + name)
	}
	return b
}

// strip returns the value of a replica entry (behind its ModRevision).
func strip(v []byte) []byte {
	if len(v) < revLen {
		return nil
	}
	return v[revLen:]
}

// modRevision is the ModRevision of a replica entry, 0 for none.
func modRevision(v []byte) int64 {
	if len(v) < revLen {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

type viewTx struct{ tx *bbolt.Tx }

func (t viewTx) Bucket(name string) control.Bucket {
	return viewBucket{replicaBucket(t.tx, name)}
}

type viewBucket struct{ b *bbolt.Bucket }

func (b viewBucket) Get(k []byte) []byte   { return strip(b.b.Get(k)) }
func (b viewBucket) Put(k, v []byte) error { return errReadOnly }
func (b viewBucket) Delete(k []byte) error { return errReadOnly }
func (b viewBucket) Cursor() control.Cursor {
	return viewCursor{b.b.Cursor()}
}
func (b viewBucket) ForEach(fn func(k, v []byte) error) error {
	return b.b.ForEach(func(k, v []byte) error { return fn(k, strip(v)) })
}

type viewCursor struct{ c *bbolt.Cursor }

func (c viewCursor) First() ([]byte, []byte) { k, v := c.c.First(); return k, strip(v) }
func (c viewCursor) Next() ([]byte, []byte)  { k, v := c.c.Next(); return k, strip(v) }
func (c viewCursor) Seek(s []byte) ([]byte, []byte) {
	k, v := c.c.Seek(s)
	return k, strip(v)
}

// writeTx is the transaction of an Update: reads come from the replica,
// writes are buffered until the etcd commit.
type writeTx struct {
	btx     *bbolt.Tx
	buckets map[string]*writeBucket
}

func (t *writeTx) Bucket(name string) control.Bucket {
	if b := t.buckets[name]; b != nil {
		return b
	}
	b := &writeBucket{
		rb:     replicaBucket(t.btx, name),
		writes: map[string]write{},
		reads:  map[string]int64{},
	}
	t.buckets[name] = b
	return b
}

type write struct {
	val []byte
	del bool
}

// writeBucket is one bucket of an Update: the replica's bucket with the
// transaction's buffered writes over it.
type writeBucket struct {
	rb     *bbolt.Bucket
	keys   []string // buffered keys, sorted
	writes map[string]write
	reads  map[string]int64 // keys read by Get from the replica → ModRevision
}

// Get returns the buffered write of k if there is one, else the replica's
// value, and records the key's ModRevision for the commit's compare.
func (b *writeBucket) Get(k []byte) []byte {
	if w, ok := b.writes[string(k)]; ok {
		if w.del {
			return nil
		}
		return w.val
	}
	raw := b.rb.Get(k)
	if _, seen := b.reads[string(k)]; !seen {
		b.reads[string(k)] = modRevision(raw)
	}
	return strip(raw)
}

func (b *writeBucket) buffer(k []byte, w write) error {
	if len(k) == 0 {
		return errKeyRequired
	}
	key := string(k)
	if _, ok := b.writes[key]; !ok {
		i := sort.SearchStrings(b.keys, key)
		b.keys = append(b.keys, "")
		copy(b.keys[i+1:], b.keys[i:])
		b.keys[i] = key
	}
	b.writes[key] = w
	return nil
}

// Put buffers k=v (both copied).
func (b *writeBucket) Put(k, v []byte) error {
	return b.buffer(k, write{val: append([]byte{}, v...)})
}

// Delete buffers the removal of k.
func (b *writeBucket) Delete(k []byte) error { return b.buffer(k, write{del: true}) }

// ForEach walks the replica's keys merged with the buffered writes, in key
// order. Writes made during the walk are seen when their key is still
// ahead.
func (b *writeBucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Cursor walks the replica's keys merged with the buffered writes in key
// order: a buffered value replaces the replica's, a buffered delete hides
// it, a buffered new key appears in its place.
func (b *writeBucket) Cursor() control.Cursor {
	return &mergeCursor{b: b, c: b.rb.Cursor()}
}

type mergeCursor struct {
	b   *writeBucket
	c   *bbolt.Cursor
	cur []byte
}

func (m *mergeCursor) First() ([]byte, []byte) { return m.from(nil, false) }
func (m *mergeCursor) Seek(s []byte) ([]byte, []byte) {
	return m.from(s, false)
}
func (m *mergeCursor) Next() ([]byte, []byte) {
	if m.cur == nil {
		return nil, nil
	}
	return m.from(m.cur, true)
}

// from returns the first key at or after seek (after it when strict).
func (m *mergeCursor) from(seek []byte, strict bool) ([]byte, []byte) {
	var rk, rv []byte
	if seek == nil {
		rk, rv = m.c.First()
	} else {
		rk, rv = m.c.Seek(seek)
		if strict && rk != nil && bytes.Equal(rk, seek) {
			rk, rv = m.c.Next()
		}
	}
	for rk != nil {
		if _, buffered := m.b.writes[string(rk)]; !buffered {
			break
		}
		rk, rv = m.c.Next()
	}
	keys := m.b.keys
	i := sort.SearchStrings(keys, string(seek))
	if strict && i < len(keys) && keys[i] == string(seek) {
		i++
	}
	for i < len(keys) && m.b.writes[keys[i]].del {
		i++
	}
	switch {
	case rk == nil && i == len(keys):
		m.cur = nil
		return nil, nil
	case i == len(keys) || (rk != nil && bytes.Compare(rk, []byte(keys[i])) < 0):
		m.cur = append(m.cur[:0], rk...)
		return rk, strip(rv)
	default:
		m.cur = append(m.cur[:0], keys[i]...)
		return []byte(keys[i]), m.b.writes[keys[i]].val
	}
}
