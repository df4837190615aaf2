package domain

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/mail"
	"strings"
	"time"
	"unicode"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/dkim"
)

// PutAccount creates the account a.ID or updates its Owner and
// CustomDomain, and returns it as stored (Created kept, Updated set). The
// error is an *Error with CodeInvalidAccount when the ID is empty, too long
// or has control characters, or Owner is not a bare address
// (taro@example.com, no display name).
func (s *Store) PutAccount(a Account) (Account, error) {
	if a.ID == "" || len(a.ID) > 128 || strings.IndexFunc(a.ID, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
		return Account{}, &Error{CodeInvalidAccount, http.StatusBadRequest, fmt.Sprintf("invalid account ID %q", a.ID)}
	}
	owner := strings.TrimSpace(a.Owner)
	addr, err := mail.ParseAddress(owner)
	if err != nil || addr.Name != "" || addr.Address != owner || !strings.Contains(owner[strings.LastIndexByte(owner, '@'):], ".") {
		return Account{}, &Error{CodeInvalidAccount, http.StatusBadRequest, fmt.Sprintf("invalid owner address %q: want a bare address such as taro@example.com", a.Owner)}
	}
	a.Owner = owner
	now := s.opts.Now().UTC()
	err = s.update(func(tx control.Tx) error {
		b := tx.Bucket(bucketAccount)
		var old Account
		if v := b.Get([]byte(a.ID)); v != nil {
			if err := json.Unmarshal(v, &old); err != nil {
				return fmt.Errorf("account %q: %w", a.ID, err)
			}
			a.Created = old.Created
		} else {
			a.Created = now
		}
		a.Updated = now
		return putJSON(b, []byte(a.ID), a)
	}, []string{a.ID}, nil)
	if err != nil {
		return Account{}, fmt.Errorf("domain: put account: %w", err)
	}
	return a, nil
}

// Account returns the account id, or an error matching ErrAccountNotFound.
func (s *Store) Account(id string) (Account, error) {
	var a Account
	err := s.db.View(func(tx control.Tx) error {
		var err error
		a, err = getAccount(tx, id)
		return err
	})
	return a, err
}

func getAccount(tx control.Tx, id string) (Account, error) {
	var a Account
	v := tx.Bucket(bucketAccount).Get([]byte(id))
	if v == nil {
		return a, &Error{CodeAccountNotFound, http.StatusNotFound, fmt.Sprintf("account %q not found", id)}
	}
	if err := json.Unmarshal(v, &a); err != nil {
		return a, fmt.Errorf("domain: account %q: %w", id, err)
	}
	return a, nil
}

// AddDomain registers the domain typed by the user (the part after "@";
// Unicode, upper case and a trailing dot are accepted) on the account,
// creates its DKIM key and returns it pending. Refusals are *Error values:
// CodeAccountNotFound, CodeOptionRequired, CodeNotADomain,
// CodePublicSuffix, CodeFreemail, CodePlatformDomain, CodeExists, and
// CodeTaken when another account holds the domain (a domain has one owner:
// its key, Return-Path and notifications are the owner's), CodeSubdomainTaken
// and CodeParentTaken when it holds a parent or a subdomain of it.
func (s *Store) AddDomain(accountID, input string) (Domain, error) {
	acct, err := s.Account(accountID)
	if err != nil {
		return Domain{}, err
	}
	if !acct.CustomDomain {
		return Domain{}, &Error{CodeOptionRequired, http.StatusForbidden,
			fmt.Sprintf("account %q does not have the custom mail domain option: subscribe to it first", accountID)}
	}
	name, uname, err := normalizeInput(input)
	if err != nil {
		return Domain{}, err
	}
	if isPublicSuffix(name) {
		return Domain{}, &Error{CodePublicSuffix, http.StatusBadRequest,
			fmt.Sprintf("%s is a public suffix, not a domain of its own: enter your company's domain, e.g. example.%s", uname, name)}
	}
	if IsFreemail(name, s.opts.FreemailExtra) {
		return Domain{}, &Error{CodeFreemail, http.StatusBadRequest,
			fmt.Sprintf("%s is a public mailbox provider anyone can use and cannot be registered: enter a domain your company owns (Google Workspace domains are fine)", uname)}
	}
	if err := s.checkPlatform(name, uname); err != nil {
		return Domain{}, err
	}
	if err := s.checkFree(accountID, name, uname); err != nil { // before the slow key generation
		return Domain{}, err
	}

	pemKey, txt, selector, err := s.newKey()
	if err != nil {
		return Domain{}, err
	}
	now := s.opts.Now().UTC()
	d := Domain{
		Account:     accountID,
		Name:        name,
		UnicodeName: uname,
		Status:      StatusPending,
		Selector:    selector,
		Algorithm:   s.opts.Algorithm,
		PublicTXT:   txt,
		ReturnPath:  s.opts.ReturnPathLabel + "." + name,
		Created:     now,
		WindowStart: now,
		NextCheck:   s.nextCheck(StatusPending, now, now),
	}
	d.Reason = "waiting for both DNS records"
	err = s.update(func(tx control.Tx) error {
		if err := conflict(tx, accountID, name, uname); err != nil {
			return err
		}
		// Every registration reads and bumps one key, so that two made at
		// once (two nodes of a cluster) conflict and the later one is run
		// again and sees the earlier: the check for a registered
		// subdomain is a scan, which a cluster transaction does not
		// compare on its own.
		if err := bumpClaims(tx); err != nil {
			return err
		}
		if err := tx.Bucket(bucketKeys).Put([]byte(name), pemKey); err != nil {
			return err
		}
		if err := tx.Bucket(bucketByAccount).Put(accountKey(accountID, name), nil); err != nil {
			return err
		}
		return putDomain(tx, nil, &stored{Domain: d})
	}, nil, nil)
	if err != nil {
		if _, ok := err.(*Error); ok {
			return Domain{}, err
		}
		return Domain{}, fmt.Errorf("domain: add %s: %w", name, err)
	}
	s.log.Info("domain added", "account", accountID, "domain", name, "selector", selector)
	return d, nil
}

// bumpClaims increments the registrations counter (bucketClaims).
func bumpClaims(tx control.Tx) error {
	b := tx.Bucket(bucketClaims)
	var n uint64
	if v := b.Get(claimsKey); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], n+1)
	return b.Put(claimsKey, v[:])
}

func (s *Store) checkFree(accountID, name, uname string) error {
	return s.db.View(func(tx control.Tx) error { return conflict(tx, accountID, name, uname) })
}

func conflict(tx control.Tx, accountID, name, uname string) error {
	v := tx.Bucket(bucketDomain).Get([]byte(name))
	if v == nil {
		return related(tx, accountID, name, uname)
	}
	var d stored
	if err := json.Unmarshal(v, &d); err != nil {
		return fmt.Errorf("domain %q: %w", name, err)
	}
	if d.Account == accountID {
		return &Error{CodeExists, http.StatusConflict, fmt.Sprintf("%s is already registered on this account", uname)}
	}
	return &Error{CodeTaken, http.StatusConflict,
		fmt.Sprintf("%s is registered by another account: a domain can belong to one account only; contact support if it is yours", uname)}
}

// Domains returns the domains of the account, sorted by name. An unknown
// account has none.
func (s *Store) Domains(accountID string) ([]Domain, error) {
	var out []Domain
	err := s.db.View(func(tx control.Tx) error {
		prefix := accountKey(accountID, "")
		c := tx.Bucket(bucketByAccount).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			d, err := getDomain(tx, string(k[len(prefix):]))
			if err != nil {
				return err
			}
			out = append(out, d.Domain)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("domain: list %s: %w", accountID, err)
	}
	return out, nil
}

// Domain returns the account's domain name (A- or U-label, any case), or an
// error matching ErrNotFound, also when another account holds it.
func (s *Store) Domain(accountID, name string) (Domain, error) {
	var d stored
	err := s.db.View(func(tx control.Tx) error {
		var err error
		d, err = getOwnDomain(tx, accountID, name)
		return err
	})
	return d.Domain, err
}

func getOwnDomain(tx control.Tx, accountID, name string) (stored, error) {
	n := normalizeName(name)
	d, err := getDomain(tx, n)
	if err == nil && d.Account != accountID {
		err = errNotFound(name)
	}
	return d, err
}

func errNotFound(name string) error {
	return &Error{CodeNotFound, http.StatusNotFound, fmt.Sprintf("domain %s not found on this account", name)}
}

func getDomain(tx control.Tx, name string) (stored, error) {
	var d stored
	v := tx.Bucket(bucketDomain).Get([]byte(name))
	if v == nil {
		return d, errNotFound(name)
	}
	if err := json.Unmarshal(v, &d); err != nil {
		return d, fmt.Errorf("domain %q: %w", name, err)
	}
	return d, nil
}

// RemoveDomain deletes the account's domain and its key. The domain stops
// being used for sending when RemoveDomain returns. The error matches
// ErrNotFound when the account has no such domain.
func (s *Store) RemoveDomain(accountID, name string) error {
	var d stored
	err := s.update(func(tx control.Tx) error {
		var err error
		if d, err = getOwnDomain(tx, accountID, name); err != nil {
			return err
		}
		k := []byte(d.Name)
		for _, del := range []struct {
			b string
			k []byte
		}{
			{bucketDomain, k}, {bucketKeys, k},
			{bucketByAccount, accountKey(accountID, d.Name)},
			{bucketDue, dueKey(d.NextCheck, d.Name)},
		} {
			if err := tx.Bucket(del.b).Delete(del.k); err != nil {
				return err
			}
		}
		if d.Rotation != nil {
			return tx.Bucket(bucketKeys).Delete(nextKeyName(d.Name, d.Rotation.Selector))
		}
		return nil
	}, nil, []string{normalizeName(name)})
	if err != nil {
		if _, ok := err.(*Error); ok {
			return err
		}
		return fmt.Errorf("domain: remove %s: %w", name, err)
	}
	s.log.Info("domain removed", "account", accountID, "domain", d.Name)
	return nil
}

// putDomain writes d and moves its due-index entry from old's NextCheck
// (old may be nil for a new domain).
func putDomain(tx control.Tx, old *stored, d *stored) error {
	due := tx.Bucket(bucketDue)
	if old != nil && !old.NextCheck.IsZero() {
		if err := due.Delete(dueKey(old.NextCheck, old.Name)); err != nil {
			return err
		}
	}
	if !d.NextCheck.IsZero() {
		if err := due.Put(dueKey(d.NextCheck, d.Name), nil); err != nil {
			return err
		}
	}
	return putJSON(tx.Bucket(bucketDomain), []byte(d.Name), d)
}

func putJSON(b control.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func accountKey(accountID, name string) []byte {
	return []byte(accountID + "\x00" + name)
}

// dueKey sorts by time, then name. Zero times are never indexed.
func dueKey(t time.Time, name string) []byte {
	k := make([]byte, 8, 8+len(name))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, name...)
}

// newSelector returns "hm" and 6 random lower-case letters and digits.
func newSelector() (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("domain: selector: %w", err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "hm" + string(b), nil
}

// newKey makes a domain's DKIM key under a new selector: the key as PEM,
// its TXT record value and the selector.
func (s *Store) newKey() (pemKey []byte, txt, selector string, err error) {
	key, err := dkim.GenerateKey(dkim.Algorithm(s.opts.Algorithm))
	if err != nil {
		return nil, "", "", fmt.Errorf("domain: generate key: %w", err)
	}
	if pemKey, err = dkim.MarshalKey(key); err != nil {
		return nil, "", "", fmt.Errorf("domain: marshal key: %w", err)
	}
	if txt, err = dkim.TXTRecord(key.Public()); err != nil {
		return nil, "", "", fmt.Errorf("domain: TXT record: %w", err)
	}
	if selector, err = newSelector(); err != nil {
		return nil, "", "", err
	}
	return pemKey, txt, selector, nil
}
