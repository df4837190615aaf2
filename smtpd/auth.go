package smtpd

import (
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

// dummyHash is compared against when the user name is unknown, so that a
// wrong name and a wrong password take the same time.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("hermod-no-such-user"), bcrypt.MinCost)

// authenticate checks name and password against users.
func authenticate(users map[string]*User, name, password string) (*User, bool) {
	u, ok := users[name]
	hash := dummyHash
	if ok {
		hash = []byte(u.PasswordHash)
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil || !ok {
		return nil, false
	}
	return u, true
}

// authLimiter slows down and then locks out repeated login failures from one
// client address.
type authLimiter struct {
	mu       sync.Mutex
	failures map[netip.Addr]*failureRecord
	// lockAfter failures within window lock the address out for lockFor.
	lockAfter int
	window    time.Duration
	lockFor   time.Duration
	baseDelay time.Duration
	maxDelay  time.Duration
	now       func() time.Time
}

type failureRecord struct {
	count       int
	first       time.Time
	lockedUntil time.Time
}

func newAuthLimiter(now func() time.Time) *authLimiter {
	return &authLimiter{failures: map[netip.Addr]*failureRecord{}, lockAfter: 10, window: 15 * time.Minute,
		lockFor: 15 * time.Minute, baseDelay: 250 * time.Millisecond, maxDelay: 4 * time.Second, now: now}
}

// locked reports whether addr may not try to log in now.
func (l *authLimiter) locked(addr netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.failures[addr]
	return r != nil && l.now().Before(r.lockedUntil)
}

// fail records a failure and returns how long to delay the answer.
func (l *authLimiter) fail(addr netip.Addr) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.failures) > 10000 { // bound memory under a distributed attack
		for a, r := range l.failures {
			if now.Sub(r.first) > l.window && now.After(r.lockedUntil) {
				delete(l.failures, a)
			}
		}
	}
	r := l.failures[addr]
	if r == nil || now.Sub(r.first) > l.window && now.After(r.lockedUntil) {
		r = &failureRecord{first: now}
		l.failures[addr] = r
	}
	r.count++
	if r.count >= l.lockAfter {
		r.lockedUntil = now.Add(l.lockFor)
	}
	d := l.baseDelay << min(r.count-1, 5)
	return min(d, l.maxDelay)
}

// succeed forgets the failures of addr.
func (l *authLimiter) succeed(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.failures[addr]; r != nil && !l.now().Before(r.lockedUntil) {
		delete(l.failures, addr)
	}
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
