package domain

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/dkim"
)

// DKIM key rollover without a gap. RotateKey makes a new key under a new
// selector and keeps it beside the current one (bucket domainkeys, key
// "<domain>\x00<selector>"); the current key keeps signing. Each check
// looks the new record up through the same resolver as verification; once
// it is seen, the new key becomes the domain's key (it signs from then on)
// and the old record may be removed after the grace period, which
// Domain.Rotation states.

// DefaultRotationGrace is how long the old record must stay published after
// the new key starts signing: mail signed with the old key may still be in
// the queue (relay.max_age) and be verified on arrival.
const DefaultRotationGrace = 7 * 24 * time.Hour

// everyRotating is how often a pending rotation's new record is looked up.
const everyRotating = time.Minute

// Rotation is a key rollover of a domain, pending or done.
type Rotation struct {
	// Selector, Algorithm and PublicTXT are the new key's; Record the
	// findings of the last look-up of its TXT record (zone text in Value
	// and Zone, as for Domain records).
	Selector  string    `json:"selector"`
	Algorithm string    `json:"algorithm"`
	PublicTXT string    `json:"public_txt"`
	Record    Record    `json:"record"`
	Started   time.Time `json:"started"`
	// Switched is when the new record was seen and the new key started
	// signing; zero while pending.
	Switched time.Time `json:"switched,omitzero"`
	// OldSelector is the selector that signed before; its record may be
	// removed from DNS after RemoveOldAfter.
	OldSelector    string    `json:"old_selector"`
	RemoveOldAfter time.Time `json:"remove_old_after,omitzero"`
}

// Pending reports whether the new key does not sign yet.
func (r *Rotation) Pending() bool { return r != nil && r.Switched.IsZero() }

func nextKeyName(name, selector string) []byte { return []byte(name + "\x00" + selector) }

// RotateKey starts a key rollover of the account's domain: a new key under
// a new selector, whose TXT record (Rotation.Record) the customer publishes
// beside the current one. The current key signs until the new record is
// seen. A rollover already pending is refused (CodeRotationPending).
func (s *Store) RotateKey(accountID, name string) (Domain, error) {
	pemKey, txt, selector, err := s.newKey()
	if err != nil {
		return Domain{}, err
	}
	now := s.opts.Now().UTC()
	var d stored
	err = s.update(func(tx control.Tx) error {
		var err error
		if d, err = getOwnDomain(tx, accountID, name); err != nil {
			return err
		}
		if d.Rotation.Pending() {
			return &Error{CodeRotationPending, http.StatusConflict,
				fmt.Sprintf("a key rollover of %s is already waiting for the TXT record of selector %s (started %s)",
					d.UnicodeName, d.Rotation.Selector, d.Rotation.Started.Format(time.RFC3339))}
		}
		if d.Rotation != nil { // the previous rollover's pending key, if any, is gone
			if err := tx.Bucket(bucketKeys).Delete(nextKeyName(d.Name, d.Rotation.Selector)); err != nil {
				return err
			}
		}
		old := d
		d.Rotation = &Rotation{Selector: selector, Algorithm: s.opts.Algorithm, PublicTXT: txt, Started: now, OldSelector: d.Selector}
		d.Rotation.Record = rotationRecord(d.Name, d.Rotation)
		d.Rotation.Record.Problem = "not looked up yet"
		if d.NextCheck.IsZero() || d.NextCheck.After(now) {
			d.NextCheck = now
		}
		if err := tx.Bucket(bucketKeys).Put(nextKeyName(d.Name, selector), pemKey); err != nil {
			return err
		}
		return putDomain(tx, &old, &d)
	}, nil, nil)
	if err != nil {
		if _, ok := err.(*Error); ok {
			return Domain{}, err
		}
		return Domain{}, fmt.Errorf("domain: rotate %s: %w", name, err)
	}
	s.log.Info("domain key rollover started", "account", accountID, "domain", d.Name, "old_selector", d.Selector, "new_selector", selector)
	return d.Domain, nil
}

// rotationRecord is the new key's record as the customer publishes it.
func rotationRecord(name string, r *Rotation) Record {
	rec := r.Record
	rec.Name, rec.Type = r.Selector+"._domainkey."+name, "TXT"
	rec.Value = dkim.ZoneText(r.PublicTXT)
	rec.Zone = dkim.ZoneRecord(rec.Name, r.PublicTXT)
	return rec
}

// checkRotation looks up the pending rotation's record of d (outside any
// transaction); ok says it was seen right.
func (s *Store) checkRotation(ctx context.Context, d Domain) (rec Record, ok bool) {
	if !d.Rotation.Pending() {
		return Record{}, false
	}
	f := s.lookupDKIM(ctx, Domain{Name: d.Name, Selector: d.Rotation.Selector, PublicTXT: d.Rotation.PublicTXT})
	rec = rotationRecord(d.Name, d.Rotation)
	rec.OK, rec.Found, rec.Problem = f.rec.OK, f.rec.Found, f.rec.Problem
	if f.err != nil {
		rec.Problem = "look-up failed: " + f.err.Error()
	}
	return rec, f.err == nil && f.rec.OK
}

// applyRotation records the finding in cur and, when the new record was
// seen, makes the new key the domain's (inside the check's transaction).
func (s *Store) applyRotation(tx control.Tx, cur *stored, rec Record, seen bool, now time.Time) error {
	r := cur.Rotation
	if !r.Pending() || rec.Name == "" {
		return nil
	}
	r.Record = rec
	if !seen {
		if cur.NextCheck.IsZero() || cur.NextCheck.After(now.Add(everyRotating)) {
			cur.NextCheck = now.Add(everyRotating)
		}
		return nil
	}
	keys := tx.Bucket(bucketKeys)
	pem := keys.Get(nextKeyName(cur.Name, r.Selector))
	if pem == nil {
		return fmt.Errorf("domain: the new key of %s (selector %s) is missing", cur.Name, r.Selector)
	}
	if err := keys.Put([]byte(cur.Name), append([]byte(nil), pem...)); err != nil {
		return err
	}
	if err := keys.Delete(nextKeyName(cur.Name, r.Selector)); err != nil {
		return err
	}
	r.OldSelector = cur.Selector
	cur.Selector, cur.Algorithm, cur.PublicTXT = r.Selector, r.Algorithm, r.PublicTXT
	cur.DKIM = rec
	r.Switched = now
	r.RemoveOldAfter = now.Add(s.rotationGrace())
	return nil
}

func (s *Store) rotationGrace() time.Duration {
	if s.opts.RotationGrace > 0 {
		return s.opts.RotationGrace
	}
	return DefaultRotationGrace
}

// DKIMRecordMatches reports whether the TXT record found (its strings
// joined) publishes the key of want, as verification judges it: tags parse,
// v= (if any) is DKIM1, k= and p= agree once blanks and quotes are removed.
func DKIMRecordMatches(found, want string) bool {
	return dkimMismatch(dkimTags(unescapeTXT(found)), dkimTags(want)) == ""
}
