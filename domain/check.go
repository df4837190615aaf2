package domain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/relay"
)

// Check schedule (seed: "verification may take tens of minutes to hours"):
// often at first, less often later, daily once verified.
const (
	everyFirstHour = time.Minute
	everyFirstDay  = 10 * time.Minute
	everyLater     = time.Hour
	everyVerified  = 24 * time.Hour
	// retryVerified is the retry of a verified domain whose check failed
	// with a DNS error.
	retryVerified = time.Hour
	// loopMaxSleep bounds Run's sleep, so that domains added meanwhile are
	// seen within a minute.
	loopMaxSleep = time.Minute
)

// finding is the result of one conclusive or failed look-up.
type finding struct {
	rec Record
	err error // non-nil: DNS failure, rec not conclusive
}

// Check looks the account's domain up in DNS now, applies the status walk
// and sends the resulting notifications, and returns the domain as stored.
// A manual Check of a failed domain verifies it if both records are right,
// or restarts its verification window if one is. DNS failures (SERVFAIL,
// timeout) change no status: they are in Domain.CheckError. The error
// matches ErrNotFound for an unknown domain, or is a storage error.
func (s *Store) Check(ctx context.Context, accountID, name string) (Domain, error) {
	var d stored
	err := s.db.View(func(tx control.Tx) error {
		var err error
		d, err = getOwnDomain(tx, accountID, name)
		return err
	})
	if err != nil {
		return Domain{}, err
	}
	return s.check(ctx, d.Domain, true)
}

// CheckDue checks every domain whose NextCheck is not after now, found
// through the due index, and returns how many it checked. Errors of single
// domains are joined; the other domains are still checked.
func (s *Store) CheckDue(ctx context.Context) (int, error) {
	now := s.opts.Now()
	var due []Domain
	err := s.db.View(func(tx control.Tx) error {
		c := tx.Bucket(bucketDue).Cursor()
		limit := dueKey(now, "")
		for k, _ := c.First(); k != nil && bytes.Compare(k[:8], limit) <= 0; k, _ = c.Next() {
			d, err := getDomain(tx, string(k[8:]))
			if err != nil {
				return err
			}
			due = append(due, d.Domain)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("domain: due: %w", err)
	}
	var errs []error
	n := 0
	for _, d := range due {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		if _, err := s.check(ctx, d, false); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Run checks due domains until ctx is done, then returns nil.
func (s *Store) Run(ctx context.Context) error {
	for {
		if _, err := s.CheckDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("domain verification pass", "err", err)
		}
		wait := loopMaxSleep
		if next, ok := s.nextDue(); ok {
			wait = min(max(next.Sub(s.opts.Now()), time.Second), loopMaxSleep)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (s *Store) nextDue() (time.Time, bool) {
	var next time.Time
	var ok bool
	_ = s.db.View(func(tx control.Tx) error {
		if k, _ := tx.Bucket(bucketDue).Cursor().First(); k != nil {
			next, ok = time.Unix(0, int64(beUint64(k[:8]))), true
		}
		return nil
	})
	return next, ok
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// check runs the look-ups for d (outside any transaction), then applies
// the result to the domain as stored at that moment, so that concurrent
// checks decide every transition, and so every notification, once.
func (s *Store) check(ctx context.Context, d Domain, manual bool) (Domain, error) {
	txt := s.lookupDKIM(ctx, d)
	cname := s.lookupCNAME(ctx, d)
	rot, seen := s.checkRotation(ctx, d)
	now := s.opts.Now().UTC()

	var cur stored
	var acct Account
	err := s.update(func(tx control.Tx) error {
		var err error
		if cur, err = getDomain(tx, d.Name); err != nil {
			return err
		}
		if cur.Account != d.Account || cur.Selector != d.Selector {
			return errNotFound(d.Name) // removed, maybe added again, meanwhile
		}
		if acct, err = getAccount(tx, cur.Account); err != nil {
			return err
		}
		old := cur
		s.apply(&cur, txt, cname, now, manual)
		if d.Rotation != nil && cur.Rotation.Pending() && cur.Rotation.Selector == d.Rotation.Selector {
			if err := s.applyRotation(tx, &cur, rot, seen, now); err != nil {
				return err
			}
		}
		return putDomain(tx, &old, &cur)
	}, nil, []string{d.Name})
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return Domain{}, err
		}
		return Domain{}, fmt.Errorf("domain: check %s: %w", d.Name, err)
	}
	s.log.Info("domain checked", "account", cur.Account, "domain", cur.Name, "status", string(cur.Status),
		"dkim_ok", cur.DKIM.OK, "cname_ok", cur.CNAME.OK, "check_error", cur.CheckError)
	s.notify(ctx, acct, cur.Name)
	return s.Domain(cur.Account, cur.Name)
}

// apply is the status walk: it records the findings in d, moves its
// status, queues the notifications and schedules the next check.
func (s *Store) apply(d *stored, txt, cname finding, now time.Time, manual bool) {
	d.LastCheck = now
	var dnsErrs []string
	for _, f := range []struct {
		f   finding
		rec *Record
	}{{txt, &d.DKIM}, {cname, &d.CNAME}} {
		if f.f.err != nil {
			dnsErrs = append(dnsErrs, f.f.err.Error())
			continue
		}
		*f.rec = f.f.rec
	}
	if len(dnsErrs) > 0 {
		// Not a finding: leave the status alone and retry.
		d.CheckError = "DNS lookup failed, will retry: " + strings.Join(dnsErrs, "; ")
		switch d.Status {
		case StatusVerified:
			d.NextCheck = now.Add(retryVerified)
		case StatusFailed:
		default:
			d.NextCheck = s.nextCheck(d.Status, d.WindowStart, now)
		}
		return
	}
	d.CheckError = ""
	both := d.DKIM.OK && d.CNAME.OK
	some := d.DKIM.OK || d.CNAME.OK
	deadline := d.WindowStart.Add(s.opts.VerifyTimeout)
	missing := describeMissing(d.DKIM, d.CNAME)

	switch {
	case both:
		switch d.Status {
		case StatusPending:
			d.Pending = append(d.Pending, noticeStarted, noticeVerified)
		case StatusVerifying, StatusFailed:
			d.Pending = append(d.Pending, noticeVerified)
		}
		if d.Status != StatusVerified {
			d.VerifiedAt = now
		}
		d.Status, d.Reason = StatusVerified, ""
	case d.Status == StatusVerified:
		d.Status = StatusFailed
		d.Reason = "DNS records no longer match: " + missing
		d.Pending = append(d.Pending, noticeFailed)
	case d.Status == StatusFailed:
		if manual && some {
			// The user fixed something and asked again: a new window.
			d.Status, d.WindowStart = StatusVerifying, now
			d.Reason = "waiting for: " + missing
			d.Pending = append(d.Pending, noticeStarted)
		}
	case !now.Before(deadline):
		d.Status = StatusFailed
		d.Reason = fmt.Sprintf("not verified within %s: %s", s.opts.VerifyTimeout, missing)
		d.Pending = append(d.Pending, noticeFailed)
	case d.Status == StatusPending && some:
		d.Status = StatusVerifying
		d.Reason = "waiting for: " + missing
		d.Pending = append(d.Pending, noticeStarted)
	default:
		d.Reason = "waiting for: " + missing
	}
	d.NextCheck = s.nextCheck(d.Status, d.WindowStart, now)
}

// nextCheck is the schedule: every minute in the first hour of the window,
// every 10 minutes until a day, hourly until the timeout (which is never
// overshot); daily once verified; never once failed (Check still works).
func (s *Store) nextCheck(st Status, windowStart, now time.Time) time.Time {
	switch st {
	case StatusVerified:
		return now.Add(everyVerified)
	case StatusFailed:
		return time.Time{}
	}
	age := now.Sub(windowStart)
	step := everyLater
	switch {
	case age < time.Hour:
		step = everyFirstHour
	case age < 24*time.Hour:
		step = everyFirstDay
	}
	next := now.Add(step)
	if deadline := windowStart.Add(s.opts.VerifyTimeout); next.After(deadline) && now.Before(deadline) {
		next = deadline
	}
	return next
}

func describeMissing(recs ...Record) string {
	var parts []string
	for _, r := range recs {
		if !r.OK {
			parts = append(parts, fmt.Sprintf("%s record %s: %s", r.Type, r.Name, r.Problem))
		}
	}
	return strings.Join(parts, "; ")
}

// notify hands the domain's pending notices to the Notifier in order. It
// first takes them off the domain in one transaction (a claim), so that of
// two checks running at once (two nodes of a cluster, or a manual check
// beside the background one) only one sends each notice; the notices the
// Notifier refused are given back and wait for the next check. A crash
// between the claim and the hand-over loses the notice rather than sending
// it twice.
func (s *Store) notify(ctx context.Context, acct Account, name string) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	var d stored
	var claimed []string
	err := s.update(func(tx control.Tx) error {
		claimed = nil
		cur, err := getDomain(tx, name)
		if err != nil || len(cur.Pending) == 0 {
			return nil // removed meanwhile, or nothing to send
		}
		d, claimed = cur, cur.Pending
		old := cur
		cur.Pending = nil
		return putDomain(tx, &old, &cur)
	}, nil, nil)
	if err != nil {
		s.log.Error("domain notification: claim", "domain", name, "err", err)
		return
	}
	sent := 0
	for _, n := range claimed {
		var err error
		if s.opts.Notifier != nil {
			switch n {
			case noticeStarted:
				err = s.opts.Notifier.DomainVerificationStarted(ctx, acct, d.Domain)
			case noticeVerified:
				err = s.opts.Notifier.DomainVerified(ctx, acct, d.Domain)
			case noticeFailed:
				err = s.opts.Notifier.DomainFailed(ctx, acct, d.Domain)
			}
		}
		if err != nil {
			s.log.Error("domain notification", "account", acct.ID, "domain", name, "notice", n, "err", err)
			break
		}
		s.log.Info("domain notification", "account", acct.ID, "domain", name, "notice", n, "owner", acct.Owner)
		sent++
	}
	if sent == len(claimed) {
		return
	}
	rest := claimed[sent:]
	err = s.update(func(tx control.Tx) error {
		cur, err := getDomain(tx, name)
		if err != nil || cur.Selector != d.Selector {
			return nil // removed meanwhile
		}
		old := cur
		cur.Pending = append(append([]string(nil), rest...), cur.Pending...)
		return putDomain(tx, &old, &cur)
	}, nil, nil)
	if err != nil {
		s.log.Error("domain notification: give back", "domain", name, "err", err)
	}
}

// lookupDKIM checks the TXT record at <selector>._domainkey.<domain>: a
// record whose tags parse, whose v= (if any) is DKIM1, whose k= (rsa when
// absent) is ours and whose p= equals ours once all whitespace and quote
// characters are removed (web forms keep them) is right.
func (s *Store) lookupDKIM(ctx context.Context, d Domain) finding {
	rec := Record{Name: dkimName(d), Type: "TXT", Value: d.PublicTXT}
	want := dkimTags(d.PublicTXT)
	txts, err := s.opts.Resolver.LookupTXT(ctx, rec.Name)
	if err != nil {
		if isNotFound(err) {
			rec.Problem = "missing: no TXT record found"
			return finding{rec: rec}
		}
		return finding{rec: rec, err: err}
	}
	for _, t := range txts {
		rec.Found = append(rec.Found, unescapeTXT(t))
	}
	var problems []string
	for _, t := range txts {
		p := dkimMismatch(dkimTags(t), want)
		if p == "" {
			rec.OK, rec.Problem = true, ""
			return finding{rec: rec}
		}
		problems = append(problems, p)
	}
	if len(problems) == 0 {
		problems = append(problems, "empty")
	}
	rec.Problem = "wrong value: " + strings.Join(problems, "; ")
	return finding{rec: rec}
}

// dkimTags parses a DKIM key record (RFC 6376 3.6.1) leniently; p is
// returned without whitespace or quotes.
func dkimTags(txt string) map[string]string {
	txt = unescapeTXT(txt)
	tags := make(map[string]string)
	for part := range strings.SplitSeq(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"`)
		if k == "p" {
			v = strings.Map(func(r rune) rune {
				if r == '"' || r == ' ' || r == '\t' || r == '\r' || r == '\n' {
					return -1
				}
				return r
			}, v)
		} else {
			v = strings.Trim(strings.TrimSpace(v), `"`)
		}
		if _, dup := tags[k]; !dup && k != "" {
			tags[k] = v
		}
	}
	return tags
}

// unescapeTXT undoes the RFC 1035 5.1 presentation escapes (\DDD and \X)
// that miekg/dns leaves in TXT strings: a tab pasted into p= arrives as
// "\009", a quote as "\"". A DKIM record has no backslash of its own.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			if n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0'); n < 256 {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// dkimMismatch says what is wrong with got, or "" when it matches want.
func dkimMismatch(got, want map[string]string) string {
	p, ok := got["p"]
	if !ok {
		return "not a DKIM key record (no p= tag)"
	}
	if v, ok := got["v"]; ok && v != "DKIM1" {
		return fmt.Sprintf("v=%s, expected v=DKIM1", v)
	}
	k := got["k"]
	if k == "" {
		k = "rsa"
	}
	if wk := cmpOr(want["k"], "rsa"); k != wk {
		return fmt.Sprintf("k=%s, expected k=%s", k, wk)
	}
	if p != want["p"] {
		if p == "" {
			return "p= is empty (key revoked)"
		}
		return "public key p= differs from the one shown"
	}
	return ""
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// lookupCNAME checks that <label>.<domain> is a CNAME to the bounce host.
func (s *Store) lookupCNAME(ctx context.Context, d Domain) finding {
	rec := Record{Name: d.ReturnPath, Type: "CNAME", Value: s.opts.BounceHost}
	target, err := s.opts.Resolver.LookupCNAME(ctx, rec.Name)
	if err != nil {
		if isNotFound(err) {
			rec.Problem = "missing: no CNAME record found"
			return finding{rec: rec}
		}
		return finding{rec: rec, err: err}
	}
	target = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(target)), ".")
	rec.Found = []string{target}
	if target == s.opts.BounceHost {
		rec.OK = true
		return finding{rec: rec}
	}
	rec.Problem = fmt.Sprintf("wrong value: points to %s, expected %s", target, s.opts.BounceHost)
	return finding{rec: rec}
}

// isNotFound reports whether err means "no such record" (NXDOMAIN or no
// data), from *relay.Resolver or the standard library's resolver.
func isNotFound(err error) bool {
	var ne *net.DNSError
	return relay.IsNotFound(err) || errors.As(err, &ne) && ne.IsNotFound
}
