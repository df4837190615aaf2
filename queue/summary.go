package queue

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Summary groupings: what `queue summary -by` accepts.
const (
	SummaryByDomain  = "domain"
	SummaryByAccount = "account"
	SummaryByMX      = "mx"
)

// summaryChunk is how many recipients Summary reads per read transaction.
const summaryChunk = 2000

// SummaryRow is one destination (domain, account or MX host) of the queue
// summary: its recipients still waiting, by status, how long the oldest has
// waited and the most frequent last error among them.
type SummaryRow struct {
	// Key is the recipient domain (A-label form), the account, or the MX
	// host of the last attempt; "-" when there is none (no account, never
	// tried).
	Key      string `json:"key"`
	Queued   int    `json:"queued"`
	Deferred int    `json:"deferred"`
	Held     int    `json:"held"`
	// Total is Queued + Deferred + Held.
	Total int `json:"total"`
	// Oldest is when the oldest of these recipients was accepted, and
	// OldestAge how long ago that was when the summary was made.
	Oldest    time.Time `json:"oldest"`
	OldestAge Duration  `json:"oldest_age"`
	// TopError is the most frequent last error ("451 4.7.1 text"; the text
	// is cut at 200 bytes), TopErrorCount how many recipients have it.
	TopError      string `json:"top_error,omitempty"`
	TopErrorCount int    `json:"top_error_count,omitempty"`
}

// Summary returns one row per destination of the recipients still waiting
// (queued, deferred or held), grouped by by (SummaryByDomain by default,
// SummaryByAccount, SummaryByMX), largest first. It only reads: one read
// transaction over the status index, the records and each recipient's last
// event, so its cost is the number of waiting recipients.
func (s *Store) Summary(by string) ([]SummaryRow, error) { return s.summary(by, summaryChunk) }

// summary is Summary reading chunk recipients per read transaction.
func (s *Store) summary(by string, chunk int) ([]SummaryRow, error) {
	if by == "" {
		by = SummaryByDomain
	}
	if by != SummaryByDomain && by != SummaryByAccount && by != SummaryByMX {
		return nil, fmt.Errorf("queue: summary by %q: want %s, %s or %s", by, SummaryByDomain, SummaryByAccount, SummaryByMX)
	}
	now := s.now()
	rows := map[string]*SummaryRow{}
	errs := map[string]map[string]int{}
	msgs := map[string]*msgRecord{}
	add := func(tx *bolt.Tx, st Status, id string, idx int) error {
		m := msgs[id]
		if m == nil {
			var err error
			if m, err = getMsg(tx, id); err != nil {
				return err
			}
			msgs[id] = m
		}
		r, err := getRcpt(tx, id, idx)
		if err != nil {
			return err
		}
		var last *Event
		if st != StatusQueued && r.LastSeq != 0 { // a queued recipient was never tried
			if ev, err := getEvent(tx, r.LastSeq); err == nil {
				last = &ev
			}
		}
		key := summaryKey(by, m, r, last)
		row := rows[key]
		if row == nil {
			row = &SummaryRow{Key: key}
			rows[key] = row
			errs[key] = map[string]int{}
		}
		switch st {
		case StatusQueued:
			row.Queued++
		case StatusDeferred:
			row.Deferred++
		default:
			row.Held++
		}
		row.Total++
		if row.Oldest.IsZero() || m.Received.Before(row.Oldest) {
			row.Oldest = m.Received
		}
		if e := lastError(last); e != "" {
			errs[key][e]++
		}
		return nil
	}
	// The status index is read in chunks, each in its own short read
	// transaction, so that a large queue never holds one open for long
	// (which would stall the file's growth). A recipient that changes
	// status between chunks may be counted under both or neither: a
	// summary is a glance, not a ledger.
	for _, st := range []Status{StatusQueued, StatusDeferred, StatusHeld} {
		p := indexKey(string(st), "")
		from := p
		for from != nil {
			err := s.db.View(func(tx *bolt.Tx) error {
				c := tx.Bucket(bucketByStatus).Cursor()
				k, _ := c.Seek(from)
				from = nil
				for n := 0; k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
					if n++; n > chunk {
						from = bytes.Clone(k) // the first key of the next chunk
						return nil
					}
					id, idx, ok := parseStatusKey(p, k)
					if !ok {
						continue
					}
					if err := add(tx, st, id, idx); err != nil && !errors.Is(err, ErrNotFound) {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
	}
	out := make([]SummaryRow, 0, len(rows))
	for key, row := range rows {
		row.OldestAge = Duration(now.Sub(row.Oldest))
		for e, n := range errs[key] {
			if n > row.TopErrorCount || n == row.TopErrorCount && e < row.TopError {
				row.TopError, row.TopErrorCount = e, n
			}
		}
		out = append(out, *row)
	}
	slices.SortFunc(out, func(a, b SummaryRow) int {
		if c := cmp.Compare(b.Total, a.Total); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	return out, nil
}

// summaryKey is the destination recipient r of message m counts under.
func summaryKey(by string, m *msgRecord, r *rcptRecord, last *Event) string {
	switch by {
	case SummaryByAccount:
		if m.Account != "" {
			return m.Account
		}
	case SummaryByMX:
		if last != nil && last.Host != "" {
			// The relay's Host is "name[ip:port]"; the name is the MX.
			if name, _, ok := strings.Cut(last.Host, "["); ok && name != "" {
				return lowerASCII(name)
			}
			return lowerASCII(last.Host)
		}
	default:
		return Destination(r.Address)
	}
	return "-"
}

// lastError is the error a recipient's last event reports, "" if it is not
// a failure (never tried, a note without text).
func lastError(ev *Event) string {
	if ev == nil || ev.Status != StatusDeferred && ev.Status != StatusHeld {
		return ""
	}
	var parts []string
	if ev.Code != 0 {
		parts = append(parts, fmt.Sprint(ev.Code))
	}
	if ev.EnhancedCode != "" {
		parts = append(parts, ev.EnhancedCode)
	}
	text := strings.Join(strings.Fields(ev.Text), " ")
	if len(text) > 200 {
		text = strings.ToValidUTF8(text[:200], "")
	}
	if text != "" {
		parts = append(parts, text)
	}
	return strings.Join(parts, " ")
}
