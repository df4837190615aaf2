package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/domain"
)

// noDNS answers every look-up with a failure: registration needs none.
type noDNS struct{}

func (noDNS) LookupTXT(context.Context, string) ([]string, error) {
	return nil, errors.New("no DNS here")
}
func (noDNS) LookupCNAME(context.Context, string) (string, error) {
	return "", errors.New("no DNS here")
}

// TestDomainClaimAcrossNodes: two nodes register, at the same moment, a
// domain for one account and a subdomain of it for another. A domain and
// its subdomains belong to one account, so exactly one of the two may
// succeed, whichever commits first.
func TestDomainClaimAcrossNodes(t *testing.T) {
	c := sharedCluster(t)
	open := func() *domain.Store {
		kv := node(t, c.Client(t), "/hermod-claims", t.TempDir())
		s, err := domain.Open(kv, domain.Options{BounceHost: "m.example.net", Algorithm: "ed25519", Resolver: noDNS{}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := open(), open()
	for _, acct := range []string{"alpha", "beta"} {
		if _, err := a.PutAccount(domain.Account{ID: acct, Owner: "owner@" + acct + ".example", CustomDomain: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "node b sees the accounts", func() bool {
		_, err := b.Account("beta")
		return err == nil
	})
	for round := 0; round < 10; round++ {
		parent := fmt.Sprintf("shop%d.example", round)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Add(2)
		go func() { defer wg.Done(); _, errs[0] = a.AddDomain("alpha", parent) }()
		go func() { defer wg.Done(); _, errs[1] = b.AddDomain("beta", "www."+parent) }()
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: parent by alpha: %v; subdomain by beta: %v; want exactly one refused", round, errs[0], errs[1])
		}
	}
}
