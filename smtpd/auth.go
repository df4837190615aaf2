package smtpd

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/bcrypt"
)

// User is one submission login.
type User struct {
	Name string
	// PasswordHash is a bcrypt hash.
	PasswordHash string
	// Accounts are the company accounts the user may send for; "*" means any.
	Accounts []string
}

// MayUse reports whether the user may send for account.
func (u *User) MayUse(account string) bool {
	for _, a := range u.Accounts {
		if a == "*" || a == account {
			return true
		}
	}
	return false
}

// hasher checks passwords: it bounds how many bcrypt comparisons run at
// once (a login flood must not take every core from the rest of hermod) and
// compares unknown user names against a dummy hash of the same cost as the
// configured ones, so a wrong name and a wrong password take the same time.
//
// Addresses that logged in successfully within the last day have one more
// slot of their own, so that a flood of guesses from strangers cannot make
// the application wait behind it.
type hasher struct {
	sem     chan struct{}
	trusted chan struct{}
	// wait is the longest a login waits for a free hashing slot.
	wait time.Duration
}

func newHasher(slots int) *hasher {
	if slots <= 0 {
		slots = 1
	}
	return &hasher{sem: make(chan struct{}, slots), trusted: make(chan struct{}, 1), wait: 10 * time.Second}
}

// errHashBusy is returned when no hashing slot freed up in time.
var errHashBusy = errors.New("smtpd: password hashing busy")

// compare runs one bcrypt comparison within the concurrency bound; a
// trusted client may also use the slot kept for trusted clients.
func (h *hasher) compare(hash []byte, password string, trusted bool) (bool, error) {
	t := time.NewTimer(h.wait)
	defer t.Stop()
	var own chan struct{}
	if trusted {
		own = h.trusted
	}
	var slot chan struct{}
	select {
	case h.sem <- struct{}{}:
		slot = h.sem
	case own <- struct{}{}: // a nil channel (not trusted) never proceeds
		slot = own
	case <-t.C:
		return false, errHashBusy
	}
	defer func() { <-slot }()
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil, nil
}

// dummyHashFor returns a bcrypt hash of a random password at the highest
// cost among users (bcrypt.DefaultCost when there is none).
func dummyHashFor(users []User) []byte {
	cost := 0
	for _, u := range users {
		if c, err := bcrypt.Cost([]byte(u.PasswordHash)); err == nil && c > cost {
			cost = c
		}
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	pw := make([]byte, 18)
	rand.Read(pw)
	h, err := bcrypt.GenerateFromPassword([]byte(base64.StdEncoding.EncodeToString(pw)), cost)
	if err != nil { // cannot happen for a cost bcrypt.Cost accepted
		h, _ = bcrypt.GenerateFromPassword([]byte("hermod-no-such-user"), bcrypt.DefaultCost)
	}
	return h
}

// authenticate checks name and password against users; an unknown name is
// compared against dummy so that it costs the same.
func (h *hasher) authenticate(users map[string]*User, dummy []byte, name, password string, trusted bool) (*User, bool, error) {
	u, ok := users[name]
	hash := dummy
	if ok {
		hash = []byte(u.PasswordHash)
	}
	match, err := h.compare(hash, password, trusted)
	if err != nil || !match || !ok {
		return nil, false, err
	}
	return u, true, nil
}

// authLimiter slows down and then locks out repeated login failures from one
// client address (IPv6: one /64). An attempt is reserved before its password
// is hashed: while the failures so far plus the attempts being checked
// would reach the lockout, a new attempt waits for one of them to end. So
// parallel guesses cannot all slip in before the lockout (at most
// lockAfter are ever evaluated), while parallel logins of the application
// merely wait a moment for each other.
type authLimiter struct {
	mu       sync.Mutex
	failures map[netip.Prefix]*failureRecord
	changed  chan struct{} // closed and replaced whenever an attempt ends
	// lockAfter failures within window lock the address out for lockFor.
	lockAfter int
	window    time.Duration
	lockFor   time.Duration
	baseDelay time.Duration
	maxDelay  time.Duration
	// maxWait is the longest an attempt waits for others to end.
	maxWait time.Duration
	now     func() time.Time
}

type failureRecord struct {
	count       int // failures
	inflight    int // attempts reserved and not yet ended
	first       time.Time
	lockedUntil time.Time
}

func newAuthLimiter(now func() time.Time) *authLimiter {
	return &authLimiter{failures: map[netip.Prefix]*failureRecord{}, changed: make(chan struct{}), lockAfter: 10,
		window: 15 * time.Minute, lockFor: 15 * time.Minute, baseDelay: 250 * time.Millisecond, maxDelay: 4 * time.Second,
		maxWait: 10 * time.Second, now: now}
}

// locked reports whether addr may not try to log in now.
func (l *authLimiter) locked(addr netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.failures[clientKey(addr)]
	return r != nil && l.now().Before(r.lockedUntil)
}

// reserve admits an attempt from addr before it is evaluated; it reports
// false when the address is locked out (or stays over its budget for
// maxWait). Every admitted attempt must be ended with end.
func (l *authLimiter) reserve(addr netip.Addr) bool {
	key := clientKey(addr)
	timer := time.NewTimer(l.maxWait)
	defer timer.Stop()
	for {
		l.mu.Lock()
		now := l.now()
		if len(l.failures) > 10000 { // bound memory under a distributed attack
			for a, r := range l.failures {
				if r.inflight == 0 && now.Sub(r.first) > l.window && now.After(r.lockedUntil) {
					delete(l.failures, a)
				}
			}
		}
		r := l.failures[key]
		if r != nil && now.Before(r.lockedUntil) {
			l.mu.Unlock()
			return false
		}
		if r == nil || r.inflight == 0 && now.Sub(r.first) > l.window {
			r = &failureRecord{first: now}
			l.failures[key] = r
		}
		if r.count+r.inflight < l.lockAfter {
			r.inflight++
			l.mu.Unlock()
			return true
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

// release ends an admitted attempt that was not evaluated (no hashing slot).
func (l *authLimiter) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.failures[clientKey(addr)]; r != nil {
		r.inflight--
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// end records how an admitted attempt ended and returns how long to delay
// the answer of a failure. A success forgets the address's failures.
func (l *authLimiter) end(addr netip.Addr, ok bool) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() {
		close(l.changed)
		l.changed = make(chan struct{})
	}()
	key := clientKey(addr)
	r := l.failures[key]
	if r == nil { // cannot happen: reserve made it
		return 0
	}
	r.inflight--
	if ok {
		if r.inflight == 0 {
			delete(l.failures, key)
		} else {
			r.count = 0
		}
		return 0
	}
	r.count++
	if r.count >= l.lockAfter {
		r.lockedUntil = l.now().Add(l.lockFor)
	}
	d := l.baseDelay << min(r.count-1, 5)
	return min(d, l.maxDelay)
}

// loginServer implements the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl has only as a client.
type loginServer struct {
	step     int
	username string
	auth     func(username, password string) error
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step++
		if len(response) > 0 { // initial response carries the user name
			s.username = string(response)
			s.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		s.username = string(response)
		s.step++
		return []byte("Password:"), false, nil
	case 2:
		s.step++
		return nil, true, s.auth(s.username, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN response")
}

var _ sasl.Server = (*loginServer)(nil)
