package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/net/idna"
)

// BulkAction is what Store.Bulk does to the recipients a Filter selects.
type BulkAction string

// The bulk actions (hermod queue hold|release|retry|delete).
const (
	// ActionHold moves queued and deferred recipients to held.
	ActionHold BulkAction = "hold"
	// ActionRelease moves held recipients back to the status they were held
	// in (queued or deferred), due now.
	ActionRelease BulkAction = "release"
	// ActionRetry makes queued and deferred recipients due now.
	ActionRetry BulkAction = "retry"
	// ActionDelete removes every message that has a matching queued,
	// deferred or held recipient — the whole message, like postsuper -d.
	ActionDelete BulkAction = "delete"
)

// BulkActions lists the actions in display order.
var BulkActions = []BulkAction{ActionHold, ActionRelease, ActionRetry, ActionDelete}

// Valid reports whether a is one of the bulk actions.
func (a BulkAction) Valid() bool {
	for _, v := range BulkActions {
		if a == v {
			return true
		}
	}
	return false
}

// eligible reports whether a recipient in status st can be changed by a.
// Only recipients that are not final are ever changed.
func (a BulkAction) eligible(st Status) bool {
	switch a {
	case ActionHold, ActionRetry:
		return st.Pending()
	case ActionRelease:
		return st == StatusHeld
	case ActionDelete:
		return st.Open()
	}
	return false
}

// Filter selects recipients for Store.Bulk. Every field that is set must
// match (AND); a Filter with no field set is refused (ErrEmptyFilter), so
// that a forgotten argument never acts on the whole queue.
type Filter struct {
	// IDs keeps only these messages.
	IDs []string
	// Account keeps only messages sent for this account.
	Account string
	// Domain keeps only recipients in this domain (U-label or A-label, any case).
	Domain string
	// Status keeps only recipients in this status.
	Status Status
	// OlderThan keeps only messages accepted at least this long ago.
	OlderThan time.Duration
	// Rcpt keeps only this recipient address (case-insensitive).
	Rcpt string
	// Ref keeps only messages submitted with this X-Hermod-Ref.
	Ref string
}

// ErrEmptyFilter is returned by Bulk for a Filter with no field set.
var ErrEmptyFilter = errors.New("queue: bulk action needs message ids or at least one filter")

// ErrBadFilter wraps every other reason Bulk refuses a Filter.
var ErrBadFilter = errors.New("queue: bad filter")

func (f *Filter) empty() bool {
	return len(f.IDs) == 0 && f.Account == "" && f.Domain == "" && f.Status == "" && f.OlderThan == 0 &&
		f.Rcpt == "" && f.Ref == ""
}

// compiled is a checked Filter in the form the matcher compares.
type compiled struct {
	Filter
	ids    map[string]bool
	domain string // A-label form, lower case
	rcpt   string // lower case
	cutoff time.Time
}

func (f Filter) compile(now time.Time) (*compiled, error) {
	if f.empty() {
		return nil, ErrEmptyFilter
	}
	c := &compiled{Filter: f}
	if len(f.IDs) > 0 {
		c.ids = make(map[string]bool, len(f.IDs))
		for _, id := range f.IDs {
			if !ValidID(id) {
				return nil, fmt.Errorf("%w: message id %q is not a message id (16 characters 0-9a-v, optionally after a node id and \"-\")", ErrBadFilter, id)
			}
			c.ids[id] = true
		}
	}
	if f.Status != "" && !f.Status.Valid() {
		return nil, fmt.Errorf("%w: unknown status %q", ErrBadFilter, f.Status)
	}
	if f.OlderThan < 0 {
		return nil, fmt.Errorf("%w: older-than %s is negative", ErrBadFilter, f.OlderThan)
	}
	if f.OlderThan > 0 {
		c.cutoff = now.Add(-f.OlderThan)
	}
	if f.Domain != "" {
		d, err := domainKey(strings.TrimSuffix(f.Domain, "."))
		if err != nil {
			return nil, fmt.Errorf("%w: domain %q: %w", ErrBadFilter, f.Domain, err)
		}
		c.domain = d
	}
	if f.Rcpt != "" {
		c.rcpt = strings.ToLower(f.Rcpt)
	}
	return c, nil
}

// domainKey is the form domains are compared in: the IDNA A-label form,
// lower case, so that "bücher.example", "BÜCHER.example" and
// "xn--bcher-kva.example" are one domain.
func domainKey(d string) (string, error) {
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", err
	}
	return strings.ToLower(a), nil
}

// matchMsg checks the message-level fields.
func (c *compiled) matchMsg(m *msgRecord) bool {
	if c.ids != nil && !c.ids[m.ID] {
		return false
	}
	if c.Account != "" && m.Account != c.Account {
		return false
	}
	if c.Ref != "" && m.Ref != c.Ref {
		return false
	}
	if !c.cutoff.IsZero() && m.Received.After(c.cutoff) {
		return false
	}
	return true
}

// matchRcpt checks the recipient-level fields.
func (c *compiled) matchRcpt(r *rcptRecord) bool {
	if c.Status != "" && r.Status != c.Status {
		return false
	}
	if c.rcpt != "" && strings.ToLower(r.Address) != c.rcpt {
		return false
	}
	if c.domain != "" {
		d, err := domainKey(Destination(r.Address))
		if err != nil {
			d = Destination(r.Address) // not a valid IDN: compare as stored
		}
		if d != c.domain {
			return false
		}
	}
	return true
}

// ParseAge reads an age for Filter.OlderThan: a Go duration ("90m",
// "6h30m") or a whole number of days ("2d").
func ParseAge(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 3650 {
			return 0, fmt.Errorf("%w: age %q: days must be a whole number from 0 to 3650", ErrBadFilter, s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: age %q: %w", ErrBadFilter, s, err)
	}
	return d, nil
}

// BulkItem is one recipient a bulk action changed (or would change).
type BulkItem struct {
	ID      string `json:"id"`
	Index   int    `json:"rcpt_index"`
	Address string `json:"address"`
	Account string `json:"account,omitempty"`
	// Status is the recipient's status before the action.
	Status   Status    `json:"status"`
	Received time.Time `json:"received"`
}

// BulkResult says what a bulk action changed, or with DryRun what it would.
type BulkResult struct {
	Action BulkAction `json:"action"`
	DryRun bool       `json:"dry_run"`
	// Recipients is how many recipients changed; for delete, how many open
	// recipients the deleted messages had.
	Recipients int `json:"recipients"`
	// Messages is how many messages those recipients belong to.
	Messages int `json:"messages"`
	// Sample is the first recipients changed, in queue order (at most the
	// sample size asked for).
	Sample []BulkItem `json:"sample"`
}

// bulkChunk bounds how many messages one bulk transaction changes, so that
// a large action never holds the committer for long.
const bulkChunk = 256

// Bulk applies action to every recipient that filter selects and that the
// action can change (hold: queued and deferred; release: held; retry:
// queued and deferred; delete: the messages of queued, deferred and held
// ones). With dryRun it changes nothing and reports what it would change.
// Each change is an event with source "admin". sample bounds
// BulkResult.Sample (0: 10).
func (s *Store) Bulk(ctx context.Context, action BulkAction, filter Filter, dryRun bool, sample int) (*BulkResult, error) {
	if !action.Valid() {
		return nil, fmt.Errorf("%w: unknown action %q", ErrBadFilter, action)
	}
	if sample <= 0 {
		sample = 10
	}
	now := s.now()
	c, err := filter.compile(now)
	if err != nil {
		return nil, err
	}
	if c.Status != "" && !action.eligible(c.Status) {
		return nil, fmt.Errorf("%w: %s never changes a recipient that is %s", ErrBadFilter, action, c.Status)
	}
	targets, err := s.bulkTargets(action, c)
	if err != nil {
		return nil, err
	}
	res := &BulkResult{Action: action, DryRun: dryRun, Sample: []BulkItem{}}
	if dryRun {
		seen := map[string]bool{}
		for _, t := range targets {
			if !seen[t.ID] {
				seen[t.ID] = true
				res.Messages++
			}
			res.Recipients++
			if len(res.Sample) < sample {
				res.Sample = append(res.Sample, t)
			}
		}
		return res, nil
	}
	// Group the targets by message (they are in id order) and change at
	// most bulkChunk messages per transaction; each transaction reads every
	// record again and checks the filter again, so a recipient that
	// changed since the scan is left alone.
	var groups [][]BulkItem
	for i, t := range targets {
		if i == 0 || targets[i-1].ID != t.ID {
			groups = append(groups, nil)
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], t)
	}
	for len(groups) > 0 {
		n := min(len(groups), bulkChunk)
		chunk := groups[:n]
		groups = groups[n:]
		var changed []BulkItem
		var msgs int
		err := s.update(ctx, func(tx *bolt.Tx, st *txState) error {
			changed, msgs = nil, 0
			for _, g := range chunk {
				items, err := s.bulkMessage(tx, st, action, c, g[0].ID, now)
				if err != nil {
					return err
				}
				if len(items) > 0 {
					msgs++
					changed = append(changed, items...)
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("queue: %s: %w", action, err)
		}
		res.Messages += msgs
		res.Recipients += len(changed)
		for _, it := range changed {
			if len(res.Sample) < sample {
				res.Sample = append(res.Sample, it)
			}
		}
	}
	return res, nil
}

// bulkTargets reads the recipients the action would change, in message id
// order: the candidate ids from the status index in one read transaction
// (keys only), then the records in read transactions of bulkChunk
// messages each, so that a large queue never holds one open for long.
func (s *Store) bulkTargets(action BulkAction, c *compiled) ([]BulkItem, error) {
	var ids []string
	if c.ids != nil {
		ids = sortedKeys(c.ids)
	} else {
		// Every recipient an action changes is open, so the status index
		// of the open statuses finds every candidate message.
		set := map[string]bool{}
		err := s.db.View(func(tx *bolt.Tx) error {
			for _, st := range []Status{StatusQueued, StatusDeferred, StatusHeld} {
				if !action.eligible(st) || (c.Status != "" && c.Status != st) {
					continue
				}
				p := indexKey(string(st), "")
				cur := tx.Bucket(bucketByStatus).Cursor()
				for k, _ := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = cur.Next() {
					if id, _, ok := parseStatusKey(p, k); ok {
						set[id] = true
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		ids = sortedKeys(set)
	}
	var out []BulkItem
	for len(ids) > 0 {
		n := min(len(ids), bulkChunk)
		page := ids[:n]
		ids = ids[n:]
		err := s.db.View(func(tx *bolt.Tx) error {
			for _, id := range page {
				m, err := getMsg(tx, id)
				if errors.Is(err, ErrNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if !c.matchMsg(m) {
					continue
				}
				err = forEachRcpt(tx, id, func(idx int, r *rcptRecord) error {
					if action.eligible(r.Status) && c.matchRcpt(r) {
						out = append(out, BulkItem{ID: id, Index: idx, Address: r.Address, Account: m.Account,
							Status: r.Status, Received: m.Received})
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	// ids are fixed-length base32hex: byte order is time order.
	slices.Sort(out)
	return out
}

// bulkMessage applies action to the matching recipients of message id
// inside a write transaction and returns what it changed.
func (s *Store) bulkMessage(tx *bolt.Tx, st *txState, action BulkAction, c *compiled, id string, now time.Time) ([]BulkItem, error) {
	m, err := getMsg(tx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // deleted since the scan
	} else if err != nil {
		return nil, err
	}
	if !c.matchMsg(m) {
		return nil, nil
	}
	type rc struct {
		idx int
		r   *rcptRecord
	}
	var match, open []rc
	if err := forEachRcpt(tx, id, func(idx int, r *rcptRecord) error {
		if action.eligible(r.Status) && c.matchRcpt(r) {
			match = append(match, rc{idx, r})
		}
		if r.Status.Open() {
			open = append(open, rc{idx, r})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if len(match) == 0 {
		return nil, nil
	}
	item := func(x rc) BulkItem {
		return BulkItem{ID: id, Index: x.idx, Address: x.r.Address, Account: m.Account, Status: x.r.Status, Received: m.Received}
	}
	var out []BulkItem
	if action == ActionDelete {
		// The audit trail outlives the message: the events stay in the log
		// (deleteMessage removes only their per-message index).
		for _, x := range open {
			out = append(out, item(x))
			ev := Event{Time: now, Status: x.r.Status, Source: "admin", Note: "message deleted by the postmaster (queue delete)"}
			if _, err := s.appendEvent(tx, st, m, x.idx, x.r, ev); err != nil {
				return nil, err
			}
		}
		return out, s.deleteMessage(tx, st, m)
	}
	msgChanged := false
	for _, x := range match {
		out = append(out, item(x))
		var to Status
		var next time.Time
		var note string
		switch action {
		case ActionHold:
			to, note = StatusHeld, "held by the postmaster (queue hold)"
			x.r.HeldFrom = x.r.Status
		case ActionRelease:
			to, next, note = x.r.HeldFrom, now, "released by the postmaster (queue release)"
			if !to.Pending() {
				to = StatusQueued
			}
			x.r.HeldFrom = ""
		case ActionRetry:
			to, next, note = x.r.Status, now, "due now: retry asked by the postmaster (queue retry)"
		}
		changed, err := s.setStatus(tx, st, m, x.idx, x.r, to, next)
		if err != nil {
			return nil, err
		}
		msgChanged = msgChanged || changed
		if _, err := s.appendEvent(tx, st, m, x.idx, x.r, Event{Time: now, Status: to, Source: "admin", Note: note}); err != nil {
			return nil, err
		}
		if err := putRcpt(tx, id, x.idx, x.r); err != nil {
			return nil, err
		}
	}
	if msgChanged {
		if err := putMsg(tx, m); err != nil {
			return nil, err
		}
	}
	return out, nil
}
