// Package control is where hermod keeps its control data: accounts, sending
// domains and their DKIM keys, and the suppression list. The data is a set
// of named buckets of ordered keys, read and written in transactions, so
// that the packages that own it (domain, suppress) do not care where it
// lives:
//
//   - on one node, in buckets of the node's own bbolt file (Bolt);
//   - on a cluster, in etcd, with a local replica every read is served from
//     (package cluster).
//
// A transaction function may run more than once (a cluster write that lost a
// race is run again on fresher data), so it must be pure: everything it
// decides comes from what it reads through the Tx, and it reports results
// only through variables it sets afresh on each run.
package control

import (
	"errors"
)

// Store holds the control buckets.
type Store interface {
	// View runs fn in a read-only transaction on a consistent snapshot.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits what it
	// wrote, or nothing when fn returns an error (returned as is). fn may
	// be run again; see the package comment. An Update that cannot reach
	// the store's authority returns an error matching ErrUnavailable.
	Update(fn func(Tx) error) error
	// Subscribe registers fn to be told of changes made by others (other
	// nodes of a cluster), after they are visible to View. Changes made
	// by this process's own Update calls may be reported too. fn must not
	// call Update. A Store with no other writers never calls fn.
	Subscribe(fn func([]Change))
}

// Change names a key that changed (was written or deleted). Reload means
// everything may have changed (a replica reloaded from a fresh snapshot):
// Bucket and Key are empty then.
type Change struct {
	Bucket string
	Key    []byte
	Reload bool
}

// Tx is a transaction over the control buckets.
type Tx interface {
	// Bucket returns the named bucket. Buckets are declared when the
	// store is opened; an undeclared name panics.
	Bucket(name string) Bucket
}

// Bucket is an ordered key/value namespace. Returned slices are valid only
// during the transaction; copy them to keep them.
type Bucket interface {
	// Get returns the value of k, or nil if there is none.
	Get(k []byte) []byte
	// Put sets k to v. It fails in a read-only transaction.
	Put(k, v []byte) error
	// Delete removes k; removing a missing key is not an error.
	Delete(k []byte) error
	// ForEach calls fn for every key in order until fn returns an error.
	ForEach(fn func(k, v []byte) error) error
	// Cursor iterates the bucket in key order.
	Cursor() Cursor
}

// Cursor walks a bucket's keys in order. A nil key means the end.
type Cursor interface {
	First() (k, v []byte)
	Seek(seek []byte) (k, v []byte)
	Next() (k, v []byte)
}

// ErrUnavailable is matched by the error of an Update that could not be
// committed because the store's authority (etcd) cannot be reached. Nothing
// was written; the caller should tell its user to try again later (HTTP 503).
var ErrUnavailable = errors.New("control data store unavailable")

// Buckets lists every control bucket of hermod, with whether its values
// are secret (DKIM private keys): a cluster encrypts those before they
// leave the node.
var Buckets = []BucketSpec{
	{Name: "account"},
	{Name: "domain"},
	{Name: "domain.account"},
	{Name: "domain.due"},
	{Name: "domainkeys", Secret: true},
	{Name: "domain.claims"},
	{Name: "suppress"},
	{Name: "suppress-soft"},
	{Name: "suppress-cursors"},
	// cluster holds what every node of a cluster must agree on, e.g. the
	// fingerprints of the shared secrets.
	{Name: "cluster"},
}

// BucketSpec describes one control bucket.
type BucketSpec struct {
	Name   string
	Secret bool
}
