package daemon

import (
	"sync"

	"github.com/hermod-mta/hermod/suppress"
)

// pendingSuppressions holds the suppressions that committed events caused
// but the suppression list could not take yet (on a cluster, while etcd
// cannot be reached): the events wait in the spool and are applied when
// the list answers again, and meanwhile this node treats their addresses
// as suppressed, so a hard bounce stops this node's mail to the address at
// once even in an outage. The entries live in memory only: after a
// restart the follower reads the same events again and puts them back.
type pendingSuppressions struct {
	perAccount bool
	mu         sync.Mutex
	m          map[string]suppress.Entry
}

func newPendingSuppressions(scope string) *pendingSuppressions {
	return &pendingSuppressions{perAccount: scope == suppress.ScopeAccount, m: map[string]suppress.Entry{}}
}

func (p *pendingSuppressions) key(account, address string) (string, bool) {
	addr, err := suppress.NormalizeAddress(address)
	if err != nil {
		return "", false
	}
	if !p.perAccount {
		account = ""
	}
	return account + "\x00" + addr, true
}

// hold records the additions among changes that the list did not take.
func (p *pendingSuppressions) hold(changes []suppress.Change) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range changes {
		if c.Kind != suppress.ChangeAdd {
			continue
		}
		if k, ok := p.key(c.Entry.Account, c.Entry.Address); ok {
			p.m[k] = c.Entry
		}
	}
}

// release forgets changes the list has taken.
func (p *pendingSuppressions) release(changes []suppress.Change) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return
	}
	for _, c := range changes {
		if k, ok := p.key(c.Entry.Account, c.Entry.Address); ok && c.Kind == suppress.ChangeAdd {
			delete(p.m, k)
		}
	}
}

// lookup reports a held suppression of (account, address); in the account
// scope a held entry of the message's account or a global one.
func (p *pendingSuppressions) lookup(account, address string) (suppress.Entry, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return suppress.Entry{}, false
	}
	for _, acct := range []string{account, ""} {
		if k, ok := p.key(acct, address); ok {
			if e, ok := p.m[k]; ok {
				return e, true
			}
		}
	}
	return suppress.Entry{}, false
}

// size is the number of held suppressions.
func (p *pendingSuppressions) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}
