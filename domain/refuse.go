package domain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/hermod-mta/hermod/control"
	"golang.org/x/net/publicsuffix"
)

// platformZones returns the registrable domain (eTLD+1) of each platform
// domain, A-label and lower case, without duplicates; a name that has no
// registrable domain of its own (a public suffix, a single label) stands
// for itself. It returns an error for a name that is not a host name.
func platformZones(domains []string) ([]string, error) {
	var out []string
	for _, d := range domains {
		n := normalizeName(d)
		if n == "" {
			continue
		}
		if err := checkHostname(n); err != nil {
			return nil, fmt.Errorf("domain: platform domain %q: %v", d, err)
		}
		if reg, err := publicsuffix.EffectiveTLDPlusOne(n); err == nil {
			n = reg
		}
		if !containsString(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// under reports whether name is zone or a subdomain of it.
func under(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// checkPlatform refuses, with CodePlatformDomain, an A-label name that is
// or is under one of the platform's registrable domains: a customer holding
// it (even pending) would get its own key, Return-Path and verification
// mails for the platform's sender or bounce host.
func (s *Store) checkPlatform(name, uname string) error {
	for _, z := range s.platform {
		if under(name, z) {
			return &Error{CodePlatformDomain, http.StatusForbidden, fmt.Sprintf(
				"%s belongs to the mail platform itself (%s) and cannot be registered: enter your company's own domain", uname, z)}
		}
	}
	return nil
}

// related refuses a name that is under a domain of another account
// (CodeSubdomainTaken) or above one (CodeParentTaken): DKIM and
// Return-Path records of one tree belong to one owner, and an account must
// not send as, or block, a neighbour's subdomain. Domains of accountID
// itself are fine. It scans the domain bucket for subdomains: registration
// is rare and the bucket holds one key per domain.
func related(tx control.Tx, accountID, name, uname string) error {
	b := tx.Bucket(bucketDomain)
	for p := name; ; {
		i := strings.IndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[i+1:]
		owner, err := ownerOf(b.Get([]byte(p)))
		if err != nil {
			return fmt.Errorf("domain %q: %w", p, err)
		}
		if owner != "" && owner != accountID {
			return &Error{CodeSubdomainTaken, http.StatusConflict, fmt.Sprintf(
				"%s is under %s, which another account registered: a domain and its subdomains belong to one account; contact support if it is yours", uname, p)}
		}
	}
	suffix := []byte("." + name)
	return b.ForEach(func(k, v []byte) error {
		if !bytes.HasSuffix(k, suffix) {
			return nil
		}
		owner, err := ownerOf(v)
		if err != nil {
			return fmt.Errorf("domain %q: %w", k, err)
		}
		if owner != accountID {
			return &Error{CodeParentTaken, http.StatusConflict, fmt.Sprintf(
				"a subdomain of %s is registered by another account: a domain and its subdomains belong to one account; contact support if it is yours", uname)}
		}
		return nil
	})
}

// ownerOf returns the account of a stored domain value, "" for none.
func ownerOf(v []byte) (string, error) {
	if v == nil {
		return "", nil
	}
	var d struct {
		Account string `json:"account"`
	}
	if err := json.Unmarshal(v, &d); err != nil {
		return "", err
	}
	return d.Account, nil
}
