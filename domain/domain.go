// Package domain keeps company accounts and their own sending domains (the
// paid "custom mail domain" option): registration with its refusals, one
// DKIM key per domain, the two DNS records the customer publishes, and the
// background DNS verification that walks a domain from pending to verified
// and tells the account owner.
//
// Data lives in buckets of a control.Store owned by the caller:
//
//	account             account ID → Account JSON
//	domain              A-label domain → Domain JSON (one domain, one owner)
//	domain.account      account ID + NUL + domain → nil (listing per account)
//	domain.due          8-byte big-endian NextCheck (Unix ns) + domain → nil
//	domainkeys          A-label domain → PKCS#8 PEM private key
//	domain.claims       "registrations" → a counter every AddDomain bumps
//
// The sender rule asks IsVerified and SigningKey on every message; both
// read an in-memory copy built at Open and refreshed after every committed
// write, this node's or (on a cluster) another's, never the store.
package domain

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/dkim"
)

const (
	bucketAccount   = "account"
	bucketDomain    = "domain"
	bucketByAccount = "domain.account"
	bucketDue       = "domain.due"
	bucketKeys      = "domainkeys"
	// bucketClaims holds one counter every registration bumps (bumpClaims).
	bucketClaims = "domain.claims"
)

var claimsKey = []byte("registrations")

// Account is a company account. The custom-domain option belongs to the
// account, not to its users (seed: billed per company account).
type Account struct {
	ID string `json:"id"`
	// Owner is the address that receives the verification mails.
	Owner        string    `json:"owner"`
	CustomDomain bool      `json:"custom_domain"`
	Created      time.Time `json:"created"`
	Updated      time.Time `json:"updated"`
}

// Status is where a domain stands in its verification.
type Status string

// Domain statuses. The seed shows pending and verifying both as "認証中"
// (verifying) and verified as "認証済み".
const (
	StatusPending   Status = "pending"   // no record seen yet
	StatusVerifying Status = "verifying" // one record right, the other not yet
	StatusVerified  Status = "verified"  // both records right: the domain is used
	StatusFailed    Status = "failed"    // timed out, or records gone after verification
)

// Record is one DNS record the customer must publish, with what the last
// check found.
type Record struct {
	Name string `json:"name"`
	Type string `json:"type"` // "TXT" or "CNAME"
	// Value is what the customer publishes at Name. For a TXT record it is
	// zone text: quoted strings of at most 255 octets (dkim.ZoneText), as
	// DNS consoles that take zone text and BIND accept it; for a CNAME it
	// is the target host name.
	Value string `json:"value"`
	// Zone is the record as one line of a zone file: absolute name, type
	// and data ("sel._domainkey.example.com.\tTXT\t\"v=DKIM1; …\" \"…\"").
	Zone string `json:"zone,omitempty"`
	OK   bool   `json:"ok"`
	// Found is what DNS had at Name (TXT values joined, CNAME target).
	Found []string `json:"found,omitempty"`
	// Problem says what is wrong, for the user: missing, wrong value…
	Problem string `json:"problem,omitempty"`
}

// Domain is a sending domain of an account. Its private key is kept apart
// and is never part of this value.
type Domain struct {
	Account string `json:"account"`
	// Name is the A-label form, lower-case, without trailing dot.
	Name string `json:"name"`
	// UnicodeName is the U-label form for display (equal to Name for ASCII).
	UnicodeName string `json:"unicode_name"`
	Status      Status `json:"status"`
	// Reason says why the domain failed, or what is still missing.
	Reason     string `json:"reason,omitempty"`
	Selector   string `json:"selector"`
	Algorithm  string `json:"algorithm"`
	PublicTXT  string `json:"public_txt"`
	ReturnPath string `json:"return_path"`
	// DKIM and CNAME are the findings of the last conclusive check.
	DKIM  Record `json:"dkim"`
	CNAME Record `json:"cname"`
	// CheckError is set when the last check could not finish (SERVFAIL,
	// timeout); the status was left as it was and the check will be retried.
	CheckError string    `json:"check_error,omitempty"`
	Created    time.Time `json:"created"`
	// WindowStart starts the VerifyTimeout window: Created, or the manual
	// re-check that revived a failed domain.
	WindowStart time.Time `json:"window_start"`
	LastCheck   time.Time `json:"last_check,omitzero"`
	// NextCheck is when the background loop checks again; zero for none.
	NextCheck  time.Time `json:"next_check,omitzero"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// Rotation is the last DKIM key rollover (RotateKey), pending or done.
	Rotation *Rotation `json:"rotation,omitempty"`
}

// stored is a Domain as kept in bbolt, with the notifications that were
// decided but not yet handed to the Notifier (retried until they are).
type stored struct {
	Domain
	Pending []string `json:"pending_notices,omitempty"`
}

// Notice names, as kept in stored.Pending.
const (
	noticeStarted  = "started"
	noticeVerified = "verified"
	noticeFailed   = "failed"
)

// Resolver is the DNS the verification asks; *relay.Resolver implements
// it. An error for which relay.IsNotFound holds (or a *net.DNSError with
// IsNotFound) means "no such record"; any other error means the check could
// not be done and changes nothing.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupCNAME(ctx context.Context, name string) (string, error)
}

// Notifier tells the account owner about verification. The daemon
// implements it by queueing a mail from the platform sender. A call that
// returns an error is retried at the domain's next check.
type Notifier interface {
	DomainVerificationStarted(ctx context.Context, acct Account, d Domain) error
	DomainVerified(ctx context.Context, acct Account, d Domain) error
	// DomainFailed is called on timeout, and when records of a verified
	// domain vanished or changed.
	DomainFailed(ctx context.Context, acct Account, d Domain) error
}

// Options configures a Store. Zero values mean the defaults.
type Options struct {
	// ReturnPathLabel is the left label of the Return-Path host the
	// customer points at BounceHost with a CNAME. Default "hermod-bounce".
	ReturnPathLabel string
	// BounceHost is the CNAME target, e.g. "m.makeleaps.com". Required.
	BounceHost string
	// Algorithm of new DKIM keys: "rsa" (default) or "ed25519".
	Algorithm string
	// VerifyTimeout is how long a domain may stay unverified. Default 72h.
	VerifyTimeout time.Duration
	// FreemailExtra adds public mailbox provider domains to the embedded
	// list; "name.*" matches name under any public suffix.
	FreemailExtra []string
	// PlatformDomains are the platform's own domains: the domain of
	// sender.default_from, the bounce domain and the platform DKIM domain.
	// None of them can be registered, nor their registrable domain (eTLD+1:
	// makeleaps.com for m.makeleaps.com), nor anything under it
	// (CodePlatformDomain).
	PlatformDomains []string
	// Resolver answers the verification queries. Required. Its cache
	// should not keep answers longer than a few seconds, or verification
	// sees fixes late.
	Resolver Resolver
	// Notifier is told of status changes; nil means nobody is told.
	Notifier Notifier
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
	// RotationGrace is how long after a key rollover the old record must
	// stay published (DefaultRotationGrace when 0).
	RotationGrace time.Duration
}

// Store is the account and domain store. It is safe for concurrent use.
type Store struct {
	db   control.Store
	opts Options
	log  *slog.Logger

	// cacheMu serialises the reads of the store that the in-memory copy
	// is made from with the updates of the copy (refresh, reload).
	cacheMu sync.Mutex
	// notifyMu serialises sending and clearing pending notices.
	notifyMu sync.Mutex

	// platform are the registrable domains of Options.PlatformDomains.
	platform []string

	mu       sync.RWMutex
	accounts map[string]bool       // account ID → has the custom-domain option
	verified map[string]signingKey // A-label domain → its key, verified domains only
}

type signingKey struct {
	account  string
	selector string
	key      crypto.Signer
}

// Open creates the buckets if needed and loads the in-memory caches. The
// db stays owned by the caller. It returns an error when BounceHost or
// Resolver is missing, an option is invalid, or the database fails.
func Open(db control.Store, opts Options) (*Store, error) {
	if opts.ReturnPathLabel == "" {
		opts.ReturnPathLabel = "hermod-bounce"
	}
	opts.ReturnPathLabel = strings.ToLower(opts.ReturnPathLabel)
	if strings.Contains(opts.ReturnPathLabel, ".") || checkHostname(opts.ReturnPathLabel+".x") != nil {
		return nil, fmt.Errorf("domain: return-path label %q: not a single DNS label", opts.ReturnPathLabel)
	}
	opts.BounceHost = strings.TrimSuffix(strings.ToLower(opts.BounceHost), ".")
	if opts.BounceHost == "" {
		return nil, errors.New("domain: bounce host required")
	}
	switch opts.Algorithm {
	case "":
		opts.Algorithm = string(dkim.AlgorithmRSA)
	case string(dkim.AlgorithmRSA), string(dkim.AlgorithmEd25519):
	default:
		return nil, fmt.Errorf("domain: unknown DKIM algorithm %q", opts.Algorithm)
	}
	if opts.VerifyTimeout <= 0 {
		opts.VerifyTimeout = 72 * time.Hour
	}
	if opts.Resolver == nil {
		return nil, errors.New("domain: resolver required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	platform, err := platformZones(opts.PlatformDomains)
	if err != nil {
		return nil, err
	}
	s := &Store{
		db:       db,
		opts:     opts,
		log:      opts.Logger,
		platform: platform,
		accounts: make(map[string]bool),
		verified: make(map[string]signingKey),
	}
	if err := s.reload(); err != nil {
		return nil, fmt.Errorf("domain: open: %w", err)
	}
	db.Subscribe(s.changed)
	return s, nil
}

// IsVerified reports whether domain (any case, A- or U-label) is a verified
// domain of the account and the account has the custom-domain option. It
// reads memory only.
func (s *Store) IsVerified(accountID, domain string) bool {
	name := normalizeName(domain)
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.verified[name]
	return ok && k.account == accountID && s.accounts[accountID]
}

// SigningKey returns the owner account, DKIM selector and private key of a
// verified domain whose account has the custom-domain option; ok is false
// for any other domain. It reads memory only.
func (s *Store) SigningKey(domain string) (accountID string, selector string, key crypto.Signer, ok bool) {
	name := normalizeName(domain)
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.verified[name]
	if !ok || !s.accounts[k.account] {
		return "", "", nil, false
	}
	return k.account, k.selector, k.key, true
}

// update runs fn in a write transaction (fn may run more than once: see
// package control) and, once it committed, brings the in-memory copy of
// the named accounts and domains up to date.
func (s *Store) update(fn func(tx control.Tx) error, accounts []string, domains []string) error {
	if err := s.db.Update(fn); err != nil {
		return err
	}
	s.refresh(accounts, domains)
	return nil
}

// reload rebuilds the in-memory copy from the store.
func (s *Store) reload() error {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	accounts := make(map[string]bool)
	verified := make(map[string]signingKey)
	err := s.db.View(func(tx control.Tx) error {
		err := tx.Bucket(bucketAccount).ForEach(func(k, v []byte) error {
			var a Account
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("account %q: %w", k, err)
			}
			accounts[a.ID] = a.CustomDomain
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketDomain).ForEach(func(k, v []byte) error {
			var d stored
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("domain %q: %w", k, err)
			}
			if sk, ok := s.signingKey(tx, d.Domain); ok {
				verified[d.Name] = sk
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.accounts, s.verified = accounts, verified
	s.mu.Unlock()
	return nil
}

// signingKey returns the cache entry of d: ok only for a verified domain
// whose key can be read. A key that cannot be read keeps the domain out of
// use (it falls back to the platform sender) and is logged.
func (s *Store) signingKey(tx control.Tx, d Domain) (signingKey, bool) {
	if d.Status != StatusVerified {
		return signingKey{}, false
	}
	key, err := dkim.ParseKey(tx.Bucket(bucketKeys).Get([]byte(d.Name)))
	if err != nil {
		s.log.Error("domain key unreadable, domain not used", "domain", d.Name, "account", d.Account, "err", err)
		return signingKey{}, false
	}
	return signingKey{d.Account, d.Selector, key}, true
}

// refresh reads the named accounts and domains again into the in-memory
// copy. The read and the update of the copy happen under cacheMu, so the
// copy never goes back in time, whichever order refreshes run in.
func (s *Store) refresh(accounts []string, domains []string) {
	if len(accounts) == 0 && len(domains) == 0 {
		return
	}
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	type acctState struct {
		exists, option bool
	}
	acctNow := make(map[string]acctState, len(accounts))
	keyNow := make(map[string]*signingKey, len(domains))
	err := s.db.View(func(tx control.Tx) error {
		for _, id := range accounts {
			a, err := getAccount(tx, id)
			acctNow[id] = acctState{err == nil, err == nil && a.CustomDomain}
		}
		for _, name := range domains {
			keyNow[name] = nil
			d, err := getDomain(tx, name)
			if err != nil {
				continue
			}
			if d.Status != StatusVerified {
				continue
			}
			s.mu.RLock()
			cur, ok := s.verified[name]
			s.mu.RUnlock()
			if ok && cur.account == d.Account && cur.selector == d.Selector {
				keyNow[name] = &cur // the same key: not parsed again
			} else if sk, ok := s.signingKey(tx, d.Domain); ok {
				keyNow[name] = &sk
			}
		}
		return nil
	})
	if err != nil {
		s.log.Error("domain: refresh the in-memory copy", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, st := range acctNow {
		if st.exists {
			s.accounts[id] = st.option
		} else {
			delete(s.accounts, id)
		}
	}
	for name, sk := range keyNow {
		if sk != nil {
			s.verified[name] = *sk
		} else {
			delete(s.verified, name)
		}
	}
}

// changed is told of writes by other nodes (control.Store.Subscribe).
func (s *Store) changed(changes []control.Change) {
	var accounts, domains []string
	for _, c := range changes {
		switch {
		case c.Reload:
			if err := s.reload(); err != nil {
				s.log.Error("domain: reload the in-memory copy", "err", err)
			}
			return
		case c.Bucket == bucketAccount:
			accounts = append(accounts, string(c.Key))
		case c.Bucket == bucketDomain:
			domains = append(domains, string(c.Key))
		case c.Bucket == bucketKeys:
			name, _, _ := strings.Cut(string(c.Key), "\x00")
			domains = append(domains, name)
		}
	}
	s.refresh(accounts, domains)
}

// Records returns the two records the customer publishes for d, DKIM TXT
// first then Return-Path CNAME, with the findings of the last check. The
// TXT Value is zone text (quoted strings of at most 255 octets); Zone is
// each record as a zone-file line.
func (s *Store) Records(d Domain) []Record {
	txt := d.DKIM
	txt.Name, txt.Type, txt.Value = dkimName(d), "TXT", dkim.ZoneText(d.PublicTXT)
	txt.Zone = dkim.ZoneRecord(txt.Name, d.PublicTXT)
	cname := d.CNAME
	cname.Name, cname.Type, cname.Value = d.ReturnPath, "CNAME", s.opts.BounceHost
	cname.Zone = cname.Name + ".\tCNAME\t" + cname.Value + "."
	return []Record{txt, cname}
}

func dkimName(d Domain) string { return d.Selector + "._domainkey." + d.Name }
