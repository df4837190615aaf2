// Package suppress keeps the suppression list: addresses hermod must not send
// to, because they hard-bounced, bounced softly too many times in a row,
// complained, or were added by hand.
//
// The list lives in buckets of the control data (package control: the
// spool's bbolt file on one node, etcd on a cluster); every bucket name
// starts with "suppress", and its transactions are its own: the spool never
// writes into them. What follows from a committed bounce reaches the list through
// ApplyChanges, which records how far in the spool's event log it has got in
// the same transaction, so each event takes effect exactly once.
//
// Entries are keyed by the normalised address (see NormalizeAddress) and, in
// the "account" scope, by the account too. An entry with account "" is a
// global entry; in the "account" scope it applies to every account, in
// addition to the account's own entries.
package suppress

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/control"
)

// Scopes for Options.Scope.
const (
	// ScopeGlobal keys entries by address alone: a bounce in one account
	// suppresses the address for all.
	ScopeGlobal = "global"
	// ScopeAccount keys entries by (account, address).
	ScopeAccount = "account"
)

// ReasonSoftBounceLimit is the Reason of entries added by RecordSoftBounce.
const ReasonSoftBounceLimit = "soft-bounce-limit"

// SourceSoftBounce is the Source of entries added by RecordSoftBounce.
const SourceSoftBounce = "soft-bounce"

// Pagination limits for List.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

var (
	entriesBucket = "suppress"
	softBucket    = "suppress-soft"
)

// Entry is one suppressed address.
type Entry struct {
	// Address is normalised: local part exact, domain lower-case ASCII.
	Address string `json:"address"`
	// Account is "" for global entries.
	Account string `json:"account,omitempty"`
	// Reason is the bounce reason word: user-unknown, host-unknown,
	// not-accept, complaint, manual, soft-bounce-limit, ...
	Reason string `json:"reason"`
	// Source says where the reason came from: "smtp", "dsn", "feedback",
	// "manual", "api", "soft-bounce".
	Source    string `json:"source"`
	MessageID string `json:"message_id,omitempty"`
	// Detail is the diagnostic text.
	Detail  string    `json:"detail,omitempty"`
	Created time.Time `json:"created"`
	// Expires is the zero time for entries that never expire.
	Expires time.Time `json:"expires,omitzero"`
}

// expired reports whether e has expired at now.
func (e Entry) expired(now time.Time) bool {
	return !e.Expires.IsZero() && !now.Before(e.Expires)
}

// Options configures a List. The zero value is valid: global scope, soft
// bounces never suppress, entries never expire, wall clock.
type Options struct {
	// Scope is ScopeGlobal (the default, also for "") or ScopeAccount.
	Scope string
	// SoftBounceLimit is the number of consecutive soft bounces that
	// suppress an address; 0 means never.
	SoftBounceLimit int
	// ExpireAfter gives, by reason, how long an entry lasts; a reason that
	// is missing never expires.
	ExpireAfter map[string]time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// List is the suppression list. It is safe for concurrent use.
type List struct {
	db          control.Store
	perAccount  bool
	softLimit   int
	expireAfter map[string]time.Duration
	now         func() time.Time
}

// softRecord is the run of consecutive soft bounces of one address.
type softRecord struct {
	Count         int       `json:"count"`
	LastReason    string    `json:"last_reason,omitempty"`
	LastMessageID string    `json:"last_message_id,omitempty"`
	LastDetail    string    `json:"last_detail,omitempty"`
	Updated       time.Time `json:"updated"`
}

// Open returns the suppression list stored in db, creating its buckets if
// needed. It returns an error for an unknown scope, a negative limit or
// expiry, or if the buckets cannot be created.
func Open(db control.Store, opts Options) (*List, error) {
	if db == nil {
		return nil, errors.New("suppress: nil control store")
	}
	l := &List{db: db, softLimit: opts.SoftBounceLimit, now: opts.Now}
	switch opts.Scope {
	case "", ScopeGlobal:
	case ScopeAccount:
		l.perAccount = true
	default:
		return nil, fmt.Errorf("suppress: unknown scope %q (want %q or %q)", opts.Scope, ScopeGlobal, ScopeAccount)
	}
	if opts.SoftBounceLimit < 0 {
		return nil, fmt.Errorf("suppress: negative soft bounce limit %d", opts.SoftBounceLimit)
	}
	l.expireAfter = make(map[string]time.Duration, len(opts.ExpireAfter))
	for reason, d := range opts.ExpireAfter {
		if d <= 0 {
			return nil, fmt.Errorf("suppress: expiry for reason %q is %v, must be positive", reason, d)
		}
		l.expireAfter[reason] = d
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l, nil
}

// keyAccount is the account part of the key: always "" in the global scope.
func (l *List) keyAccount(account string) string {
	if l.perAccount {
		return account
	}
	return ""
}

// key is keyAccount NUL address. The same layout in both scopes means that
// entries made in the global scope become global entries if the scope is
// later changed to "account".
func key(keyAccount, address string) []byte {
	return []byte(keyAccount + "\x00" + address)
}

// ErrInvalidAccount is matched by the error for an account name that
// cannot be keyed (it contains NUL).
var ErrInvalidAccount = errors.New("suppress: invalid account")

func checkAccount(account string) error {
	if strings.IndexByte(account, 0) >= 0 {
		return fmt.Errorf("%w: account %q contains NUL", ErrInvalidAccount, account)
	}
	return nil
}

// normalize checks the account and normalises the address.
func normalize(account, address string) (string, error) {
	if err := checkAccount(account); err != nil {
		return "", err
	}
	return NormalizeAddress(address)
}

func buckets(tx control.Tx) (entries, soft control.Bucket, err error) {
	return tx.Bucket(entriesBucket), tx.Bucket(softBucket), nil
}

// getEntry returns the unexpired entry under k.
func (l *List) getEntry(b control.Bucket, k []byte) (Entry, bool, error) {
	v := b.Get(k)
	if v == nil {
		return Entry{}, false, nil
	}
	var e Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return Entry{}, false, fmt.Errorf("suppress: decode entry %q: %w", k, err)
	}
	if e.expired(l.now()) {
		return Entry{}, false, nil
	}
	return e, true, nil
}

// Lookup returns the unexpired entry that suppresses address for account.
// In the account scope, the account's own entry is preferred to a global
// one. Expired entries are ignored (PurgeExpired deletes them). The error
// wraps ErrInvalidAddress if address cannot be normalised.
func (l *List) Lookup(account, address string) (e Entry, ok bool, err error) {
	err = l.db.View(func(tx control.Tx) error {
		e, ok, err = l.LookupTx(tx, account, address)
		return err
	})
	return e, ok, err
}

// LookupTx is Lookup within tx, which may be read-only.
func (l *List) LookupTx(tx control.Tx, account, address string) (Entry, bool, error) {
	addr, err := normalize(account, address)
	if err != nil {
		return Entry{}, false, err
	}
	entries, _, err := buckets(tx)
	if err != nil {
		return Entry{}, false, err
	}
	return l.lookup(entries, account, addr)
}

func (l *List) lookup(entries control.Bucket, account, addr string) (Entry, bool, error) {
	ka := l.keyAccount(account)
	e, ok, err := l.getEntry(entries, key(ka, addr))
	if err != nil || ok || ka == "" {
		return e, ok, err
	}
	return l.getEntry(entries, key("", addr))
}

// Add puts e on the list and returns the entry as stored. The address is
// normalised; Created defaults to now, and Expires, if zero, is set from
// Options.ExpireAfter for e.Reason. An existing entry for the same key is
// replaced, unless it is unexpired and was created after e: stale news (a
// late DSN) does not overwrite newer, and Add then returns the existing
// entry. Adding an entry ends any run of soft bounces of the address.
//
// Add returns an error if the address is invalid (wrapping
// ErrInvalidAddress), if e.Reason is empty, or if the write fails.
func (l *List) Add(e Entry) (stored Entry, err error) {
	err = l.db.Update(func(tx control.Tx) error {
		stored, err = l.AddTx(tx, e)
		return err
	})
	return stored, err
}

// AddTx is Add within tx, which must be writable.
func (l *List) AddTx(tx control.Tx, e Entry) (Entry, error) {
	addr, err := normalize(e.Account, e.Address)
	if err != nil {
		return Entry{}, err
	}
	if e.Reason == "" {
		return Entry{}, fmt.Errorf("suppress: entry for %q has no reason", addr)
	}
	entries, soft, err := buckets(tx)
	if err != nil {
		return Entry{}, err
	}
	e.Address = addr
	if e.Created.IsZero() {
		e.Created = l.now()
	}
	e.Created = e.Created.Round(0) // drop the monotonic reading, as a round trip through JSON does
	if e.Expires.IsZero() {
		if d, ok := l.expireAfter[e.Reason]; ok {
			e.Expires = e.Created.Add(d)
		}
	}
	e.Expires = e.Expires.Round(0)
	k := key(l.keyAccount(e.Account), addr)
	old, ok, err := l.getEntry(entries, k)
	if err != nil {
		return Entry{}, err
	}
	if ok && old.Created.After(e.Created) {
		return old, nil
	}
	v, err := json.Marshal(e)
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: encode entry: %w", err)
	}
	if err := entries.Put(k, v); err != nil {
		return Entry{}, fmt.Errorf("suppress: add %q: %w", addr, err)
	}
	if err := soft.Delete(k); err != nil {
		return Entry{}, fmt.Errorf("suppress: add %q: %w", addr, err)
	}
	return e, nil
}

// Remove deletes the entry for (account, address), and the address's run of
// soft bounces, and reports whether an unexpired entry was there. In the
// account scope, account "" names the global entry; a global entry is not
// removed by removing an account's. The error wraps ErrInvalidAddress if
// address cannot be normalised.
func (l *List) Remove(account, address string) (removed bool, err error) {
	err = l.db.Update(func(tx control.Tx) error {
		removed, err = l.RemoveTx(tx, account, address)
		return err
	})
	return removed, err
}

// RemoveTx is Remove within tx, which must be writable.
func (l *List) RemoveTx(tx control.Tx, account, address string) (bool, error) {
	addr, err := normalize(account, address)
	if err != nil {
		return false, err
	}
	entries, soft, err := buckets(tx)
	if err != nil {
		return false, err
	}
	k := key(l.keyAccount(account), addr)
	_, ok, err := l.getEntry(entries, k)
	if err != nil {
		return false, err
	}
	if err := entries.Delete(k); err != nil {
		return false, fmt.Errorf("suppress: remove %q: %w", addr, err)
	}
	if err := soft.Delete(k); err != nil {
		return false, fmt.Errorf("suppress: remove %q: %w", addr, err)
	}
	return ok, nil
}

// List returns up to limit unexpired entries of account, in byte order of
// address, whose address starts with addressPrefix and sorts after the
// cursor after ("" for the first page). The second result is the cursor for
// the next page, "" when there is none. A limit of 0 or less means
// DefaultListLimit, and more than MaxListLimit means MaxListLimit.
//
// The prefix is compared with normalised addresses; if it holds an "@", the
// text after it is lower-cased. In the global scope account is ignored and
// all entries are listed (except any an earlier account scope keyed by
// account); in the account scope, account "" lists the global entries only.
func (l *List) List(account, addressPrefix, after string, limit int) (page []Entry, next string, err error) {
	if err := checkAccount(account); err != nil {
		return nil, "", err
	}
	switch {
	case limit <= 0:
		limit = DefaultListLimit
	case limit > MaxListLimit:
		limit = MaxListLimit
	}
	if at := strings.LastIndexByte(addressPrefix, '@'); at >= 0 {
		addressPrefix = addressPrefix[:at] + strings.ToLower(addressPrefix[at:])
	}
	prefix := key(l.keyAccount(account), addressPrefix)
	err = l.db.View(func(tx control.Tx) error {
		entries, _, err := buckets(tx)
		if err != nil {
			return err
		}
		now := l.now()
		c := entries.Cursor()
		var k, v []byte
		if after != "" && after >= addressPrefix {
			start := key(l.keyAccount(account), after)
			k, v = c.Seek(start)
			if bytes.Equal(k, start) {
				k, v = c.Next()
			}
		} else {
			k, v = c.Seek(prefix)
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("suppress: decode entry %q: %w", k, err)
			}
			if e.expired(now) {
				continue
			}
			if len(page) == limit {
				next = page[len(page)-1].Address
				return nil
			}
			page = append(page, e)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return page, next, nil
}

// Count returns the number of unexpired entries stored, global and of all
// accounts, whatever the scope. It reads every entry.
func (l *List) Count() (n int, err error) {
	err = l.db.View(func(tx control.Tx) error {
		entries, _, err := buckets(tx)
		if err != nil {
			return err
		}
		now := l.now()
		return entries.ForEach(func(k, v []byte) error {
			var e struct {
				Expires time.Time `json:"expires"`
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("suppress: decode entry %q: %w", k, err)
			}
			if !(Entry{Expires: e.Expires}).expired(now) {
				n++
			}
			return nil
		})
	})
	return n, err
}

// purgeBatch bounds the deletions of one PurgeExpired transaction: a
// cluster's transaction has a bounded number of operations (etcd: 128).
const purgeBatch = 100

// PurgeExpired deletes the expired entries and returns how many it deleted.
// It reads every entry, and deletes in transactions of at most purgeBatch
// entries.
func (l *List) PurgeExpired() (n int, err error) {
	var from []byte // where the next batch's scan starts
	for {
		var dead [][]byte
		var next []byte
		err = l.db.Update(func(tx control.Tx) error {
			dead, next = nil, nil
			entries, _, err := buckets(tx)
			if err != nil {
				return err
			}
			now := l.now()
			c := entries.Cursor()
			k, v := c.First()
			if from != nil {
				k, v = c.Seek(from)
			}
			for ; k != nil; k, v = c.Next() {
				if len(dead) == purgeBatch {
					next = append([]byte(nil), k...)
					break
				}
				var e Entry
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("suppress: decode entry %q: %w", k, err)
				}
				if e.expired(now) {
					dead = append(dead, append([]byte(nil), k...))
				}
			}
			for _, k := range dead {
				if err := entries.Delete(k); err != nil {
					return fmt.Errorf("suppress: purge: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += len(dead)
		if next == nil {
			return n, nil
		}
		from = next
	}
}

// RecordSoftBounce counts a soft bounce (reason, of message msgID, with
// diagnostic detail) of address. When Options.SoftBounceLimit consecutive
// soft bounces have been counted, it adds an entry with Reason
// ReasonSoftBounceLimit and Source SourceSoftBounce, whose Detail gives the
// count and the last reason and diagnostic, and returns it with suppressed
// true. If the address is already suppressed, it returns the existing entry
// and counts nothing. With a limit of 0 it does nothing.
//
// The error wraps ErrInvalidAddress if address cannot be normalised.
func (l *List) RecordSoftBounce(account, address, reason, msgID, detail string) (suppressed bool, e Entry, err error) {
	err = l.db.Update(func(tx control.Tx) error {
		suppressed, e, err = l.RecordSoftBounceTx(tx, account, address, reason, msgID, detail)
		return err
	})
	return suppressed, e, err
}

// RecordSoftBounceTx is RecordSoftBounce within tx, which must be writable.
func (l *List) RecordSoftBounceTx(tx control.Tx, account, address, reason, msgID, detail string) (bool, Entry, error) {
	addr, err := normalize(account, address)
	if err != nil {
		return false, Entry{}, err
	}
	if l.softLimit == 0 {
		return false, Entry{}, nil
	}
	entries, soft, err := buckets(tx)
	if err != nil {
		return false, Entry{}, err
	}
	if e, ok, err := l.lookup(entries, account, addr); err != nil || ok {
		return ok, e, err
	}
	k := key(l.keyAccount(account), addr)
	var rec softRecord
	if v := soft.Get(k); v != nil {
		if err := json.Unmarshal(v, &rec); err != nil {
			return false, Entry{}, fmt.Errorf("suppress: decode soft bounces of %q: %w", addr, err)
		}
	}
	rec.Count++
	rec.LastReason, rec.LastMessageID, rec.LastDetail = reason, msgID, detail
	rec.Updated = l.now().Round(0)
	if rec.Count >= l.softLimit {
		d := fmt.Sprintf("%d consecutive soft bounces, last %s", rec.Count, reason)
		if detail != "" {
			d += ": " + detail
		}
		e, err := l.AddTx(tx, Entry{
			Address:   addr,
			Account:   account,
			Reason:    ReasonSoftBounceLimit,
			Source:    SourceSoftBounce,
			MessageID: msgID,
			Detail:    d,
			Created:   rec.Updated,
		})
		if err != nil {
			return false, Entry{}, err
		}
		return true, e, nil // AddTx ended the run
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return false, Entry{}, fmt.Errorf("suppress: encode soft bounces: %w", err)
	}
	if err := soft.Put(k, v); err != nil {
		return false, Entry{}, fmt.Errorf("suppress: record soft bounce of %q: %w", addr, err)
	}
	return false, Entry{}, nil
}

// RecordSuccess ends the run of soft bounces of address: the next soft
// bounce counts from one again. The error wraps ErrInvalidAddress if address
// cannot be normalised.
func (l *List) RecordSuccess(account, address string) error {
	return l.db.Update(func(tx control.Tx) error {
		return l.RecordSuccessTx(tx, account, address)
	})
}

// RecordSuccessTx is RecordSuccess within tx, which must be writable.
func (l *List) RecordSuccessTx(tx control.Tx, account, address string) error {
	addr, err := normalize(account, address)
	if err != nil {
		return err
	}
	_, soft, err := buckets(tx)
	if err != nil {
		return err
	}
	k := key(l.keyAccount(account), addr)
	if soft.Get(k) == nil {
		return nil // do not dirty the transaction for the common case
	}
	if err := soft.Delete(k); err != nil {
		return fmt.Errorf("suppress: record success of %q: %w", addr, err)
	}
	return nil
}

// ChangeKind says what a status event does to the list.
type ChangeKind int

// The kinds of Change.
const (
	// ChangeAdd puts the address on the list (a hard bounce, a complaint).
	ChangeAdd ChangeKind = iota + 1
	// ChangeSoftBounce counts one soft bounce of the address.
	ChangeSoftBounce
	// ChangeSuccess ends the address's run of soft bounces.
	ChangeSuccess
)

// Change is one effect of a committed status event on the list. For
// ChangeAdd, Entry is the entry to add; for the others only its Account,
// Address, Reason, MessageID and Detail are read.
type Change struct {
	Kind  ChangeKind
	Entry Entry
}

// cursorLag is how far the stored cursor may fall behind while events
// change nothing.
const cursorLag = 10000

// cursorsBucket holds, per consumer name, the sequence number of the last
// queue event whose changes were applied.
const cursorsBucket = "suppress-cursors"

// Cursor returns the sequence number of the last event applied by the
// consumer name (0 if none).
func (l *List) Cursor(name string) (uint64, error) {
	var seq uint64
	err := l.db.View(func(tx control.Tx) error {
		if b := tx.Bucket(cursorsBucket); b != nil {
			if v := b.Get([]byte(name)); len(v) == 8 {
				seq = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return seq, err
}

// ApplyChanges applies changes, derived from queue events up to seq, and
// records seq as the cursor of the consumer name, in one transaction: a
// crash cannot apply them twice or lose them. Changes for addresses that
// cannot be keyed (ErrInvalidAddress) are skipped.
func (l *List) ApplyChanges(name string, seq uint64, changes []Change) error {
	// Most events change nothing (a delivery to an address with no run of
	// soft bounces): then only the cursor would move, and it is written at
	// most every cursorLag events: replaying events that change nothing
	// after a crash is harmless.
	effective, lagging := false, true
	err := l.db.View(func(tx control.Tx) error {
		var cur uint64
		if b := tx.Bucket(cursorsBucket); b != nil {
			if v := b.Get([]byte(name)); len(v) == 8 {
				cur = binary.BigEndian.Uint64(v)
			}
		}
		lagging = seq-min(cur, seq) >= cursorLag
		soft := tx.Bucket(softBucket)
		for _, c := range changes {
			if c.Kind != ChangeSuccess {
				effective = true
				return nil
			}
			addr, err := normalize(c.Entry.Account, c.Entry.Address)
			if err == nil && soft != nil && soft.Get(key(l.keyAccount(c.Entry.Account), addr)) != nil {
				effective = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("suppress: apply changes: %w", err)
	}
	if !effective && !lagging {
		return nil
	}
	return l.db.Update(func(tx control.Tx) error {
		b := tx.Bucket(cursorsBucket)
		var err error
		if v := b.Get([]byte(name)); len(v) == 8 && binary.BigEndian.Uint64(v) >= seq {
			return nil // already applied
		}
		for _, c := range changes {
			e := c.Entry
			switch c.Kind {
			case ChangeAdd:
				_, err = l.AddTx(tx, e)
			case ChangeSoftBounce:
				_, _, err = l.RecordSoftBounceTx(tx, e.Account, e.Address, e.Reason, e.MessageID, e.Detail)
			case ChangeSuccess:
				err = l.RecordSuccessTx(tx, e.Account, e.Address)
			default:
				err = fmt.Errorf("suppress: unknown change kind %d", c.Kind)
			}
			if err != nil && !errors.Is(err, ErrInvalidAddress) {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], seq)
		return b.Put([]byte(name), v[:])
	})
}
