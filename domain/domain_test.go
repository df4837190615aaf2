package domain

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/relay"
	"go.etcd.io/bbolt"
)

const bounceHost = "m.makeleaps.invalid"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recorder is a Notifier that remembers "kind domain" lines; failNext
// makes the next calls fail.
type recorder struct {
	mu       sync.Mutex
	events   []string
	failNext int
}

func (r *recorder) add(kind string, acct Account, d Domain) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failNext > 0 {
		r.failNext--
		return errors.New("mail queue unavailable")
	}
	r.events = append(r.events, fmt.Sprintf("%s %s %s %s", kind, d.Name, acct.ID, acct.Owner))
	return nil
}

func (r *recorder) DomainVerificationStarted(_ context.Context, a Account, d Domain) error {
	return r.add("started", a, d)
}
func (r *recorder) DomainVerified(_ context.Context, a Account, d Domain) error {
	return r.add("verified", a, d)
}
func (r *recorder) DomainFailed(_ context.Context, a Account, d Domain) error {
	return r.add("failed", a, d)
}

func (r *recorder) Events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

type env struct {
	t     *testing.T
	s     *Store
	dns   *testnet.DNS
	clock *clock
	notes *recorder
	db    *bbolt.DB
	path  string
	opts  Options
}

// newEnv uses a cache-less stub resolver; newRelayEnv hermod's own.
func newEnv(t *testing.T, alg string) *env { t.Helper(); return makeEnv(t, alg, false) }

func newRelayEnv(t *testing.T, alg string) *env { t.Helper(); return makeEnv(t, alg, true) }

func makeEnv(t *testing.T, alg string, useRelay bool) *env {
	t.Helper()
	e := &env{t: t, dns: newDNS(t), notes: &recorder{},
		clock: &clock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)},
		path:  filepath.Join(t.TempDir(), "hermod.db")}
	var res Resolver = stubResolver{e.dns.Addr()}
	if useRelay {
		r, err := relay.NewResolver([]string{e.dns.Addr()}, e.clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		res = r
	}
	e.opts = Options{BounceHost: bounceHost, Algorithm: alg, Resolver: res, Notifier: e.notes,
		Now: e.clock.Now, FreemailExtra: []string{"free-extra.invalid", "freebie.*"}}
	e.open()
	t.Cleanup(func() { _ = e.db.Close() })
	return e
}

func (e *env) open() {
	e.t.Helper()
	db, err := bbolt.Open(e.path, 0o600, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.db = db
	cs, err := control.OpenBolt(db)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.s, err = Open(cs, e.opts); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.db.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func (e *env) account(id string, option bool) Account {
	e.t.Helper()
	a, err := e.s.PutAccount(Account{ID: id, Owner: "owner@" + id + ".invalid", CustomDomain: option})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) add(acct, input string) Domain {
	e.t.Helper()
	d, err := e.s.AddDomain(acct, input)
	if err != nil {
		e.t.Fatalf("AddDomain(%q, %q): %v", acct, input, err)
	}
	return d
}

func (e *env) get(acct, name string) Domain {
	e.t.Helper()
	d, err := e.s.Domain(acct, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// due advances the clock to the domain's NextCheck and runs one pass.
func (e *env) due(acct, name string) Domain {
	e.t.Helper()
	d := e.get(acct, name)
	if d.NextCheck.IsZero() {
		e.t.Fatalf("%s: no next check (status %s)", name, d.Status)
	}
	e.clock.Set(d.NextCheck)
	if n, err := e.s.CheckDue(context.Background()); err != nil || n < 1 {
		e.t.Fatalf("CheckDue = %d, %v; want it checked", n, err)
	}
	return e.get(acct, name)
}

// publish puts both records right: TXT split into strings as DNS
// providers do, with blanks inside p=; CNAME in upper case.
func (e *env) publish(d Domain) {
	txt := d.PublicTXT
	cut := len(txt) - 20
	setTXT(e.dns, d.Selector+"._domainkey."+d.Name, splitTXT(txt[:cut]+" \t"+txt[cut:cut+10]+" "+txt[cut+10:]))
	setCNAME(e.dns, d.ReturnPath, strings.ToUpper(bounceHost)+".")
}

// splitTXT cuts a record into character strings of at most 200 octets.
func splitTXT(s string) []string {
	var out []string
	for len(s) > 200 {
		out, s = append(out, s[:200]), s[200:]
	}
	return append(out, s)
}

func wantEvents(t *testing.T, r *recorder, want ...string) {
	t.Helper()
	if got := r.Events(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("notifications:\n got %q\nwant %q", got, want)
	}
}

func TestAddDomainRefusals(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	e.account("noopt", false)
	e.account("other", true)
	e.add("acme", "exists.invalid")
	e.add("other", "taken.invalid")

	for _, tc := range []struct {
		acct, input string
		want        *Error
	}{
		{"ghost", "fine.invalid", ErrAccountNotFound},
		{"noopt", "fine.invalid", ErrOptionRequired},
		{"acme", "taro@example.com", ErrNotADomain},
		{"acme", "@example.com", ErrNotADomain},
		{"acme", "taro＠example.com", ErrNotADomain},
		{"acme", "http://example.com", ErrNotADomain},
		{"acme", "example.com/", ErrNotADomain},
		{"acme", "example.com:25", ErrNotADomain},
		{"acme", "exa mple.com", ErrNotADomain},
		{"acme", "example.com extra", ErrNotADomain},
		{"acme", "", ErrNotADomain},
		{"acme", "   ", ErrNotADomain},
		{"acme", "localhost", ErrNotADomain},
		{"acme", "example.com!!", ErrNotADomain},
		{"acme", "example..com", ErrNotADomain},
		{"acme", ".example.com", ErrNotADomain},
		{"acme", "-example.com", ErrNotADomain},
		{"acme", "_dmarc.example.com", ErrNotADomain},
		{"acme", "192.0.2.1", ErrNotADomain},
		{"acme", "[2001:db8::1]", ErrNotADomain},
		{"acme", "example.123", ErrNotADomain},
		{"acme", strings.Repeat("a", 64) + ".com", ErrNotADomain},
		{"acme", "com", ErrNotADomain}, // a single label is not a domain before it is a suffix
		{"acme", "co.jp", ErrPublicSuffix},
		{"acme", "CO.JP.", ErrPublicSuffix},
		{"acme", "github.io", ErrPublicSuffix},
		{"acme", "gmail.com", ErrFreemail},
		{"acme", "GMail.COM.", ErrFreemail},
		{"acme", "yahoo.co.jp", ErrFreemail},
		{"acme", "docomo.ne.jp", ErrFreemail},
		{"acme", "i.softbank.jp", ErrFreemail},
		{"acme", "gmx.de", ErrFreemail},
		{"acme", "gmx.net", ErrFreemail},
		{"acme", "mail.yandex.ru", ErrFreemail},
		{"acme", "free-extra.invalid", ErrFreemail},
		{"acme", "freebie.co.uk", ErrFreemail},
		{"acme", "exists.invalid", ErrExists},
		{"acme", "EXISTS.invalid.", ErrExists},
		{"acme", "taken.invalid", ErrTaken},
	} {
		_, err := e.s.AddDomain(tc.acct, tc.input)
		var got *Error
		if !errors.As(err, &got) || !errors.Is(err, tc.want) {
			t.Errorf("AddDomain(%q, %q) = %v; want code %s", tc.acct, tc.input, err, tc.want.Code)
			continue
		}
		if got.Status != tc.want.Status || got.Msg == "" {
			t.Errorf("AddDomain(%q, %q): status %d msg %q; want status %d", tc.acct, tc.input, got.Status, got.Msg, tc.want.Status)
		}
		if tc.want == ErrNotADomain && !strings.Contains(got.Msg, `part after "@"`) {
			t.Errorf("AddDomain(%q): message %q does not say to enter the part after @", tc.input, got.Msg)
		}
	}
	// Nothing refused was stored.
	if ds, _ := e.s.Domains("acme"); len(ds) != 1 || ds[0].Name != "exists.invalid" {
		t.Errorf("Domains(acme) = %+v", ds)
	}
	// Accepted: a company domain hosted on Google Workspace, a subdomain.
	for _, in := range []string{" example.co.jp ", "mail.acme-corp.invalid", "user.github.io"} {
		if _, err := e.s.AddDomain("acme", in); err != nil {
			t.Errorf("AddDomain(%q) = %v", in, err)
		}
	}
}

func TestIDNA(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	d := e.add("acme", "例え.JP.")
	if d.Name != "xn--r8jz45g.jp" || d.UnicodeName != "例え.jp" || d.ReturnPath != "hermod-bounce.xn--r8jz45g.jp" {
		t.Fatalf("got name %q unicode %q return-path %q", d.Name, d.UnicodeName, d.ReturnPath)
	}
	for _, n := range []string{"例え.jp", "XN--R8JZ45G.jp.", "xn--r8jz45g.jp"} {
		if got := e.get("acme", n); got.Name != d.Name {
			t.Errorf("Domain(%q) = %q", n, got.Name)
		}
	}
	if _, err := e.s.AddDomain("acme", "xn--r8jz45g.jp"); !errors.Is(err, ErrExists) {
		t.Errorf("adding the A-label again: %v, want exists", err)
	}
	// Full-width letters and ideographic full stop, as typed with an IME.
	fw := e.add("acme", "ｅｘａｍｐｌｅ２。ｊｐ")
	if fw.Name != "example2.jp" || fw.UnicodeName != "example2.jp" {
		t.Errorf("full-width input stored as %q / %q", fw.Name, fw.UnicodeName)
	}
	// Verified under its A-label, matched from either form.
	e.publish(fw)
	if got := e.due("acme", fw.Name); !e.s.IsVerified("acme", "Example2.JP") {
		t.Errorf("IsVerified(Example2.JP) = false: %s %+v %+v", got.Status, got.DKIM, got.CNAME)
	}
	idn := e.get("acme", "例え.jp")
	e.publish(idn)
	if got := e.due("acme", "例え.jp"); got.Status != StatusVerified {
		t.Fatalf("IDN status %s: %+v %+v", got.Status, got.DKIM, got.CNAME)
	}
	if !e.s.IsVerified("acme", "例え.JP") || !e.s.IsVerified("acme", "xn--r8jz45g.jp.") {
		t.Error("IDN domain not verified under both forms")
	}
}

func TestRecords(t *testing.T) {
	e := newEnv(t, "")
	e.account("acme", true)
	d := e.add("acme", "Acme.invalid")
	if !regexp.MustCompile(`^hm[a-z0-9]{6}$`).MatchString(d.Selector) || d.Algorithm != "rsa" || d.Status != StatusPending {
		t.Errorf("selector %q algorithm %q status %q", d.Selector, d.Algorithm, d.Status)
	}
	recs := e.s.Records(d)
	if len(recs) != 2 {
		t.Fatalf("Records = %+v", recs)
	}
	if r := recs[0]; r.Type != "TXT" || r.Name != d.Selector+"._domainkey.acme.invalid" || !strings.HasPrefix(r.Value, "\"v=DKIM1; k=rsa; p=MII") {
		t.Errorf("TXT record %+v", r)
	}
	if r := recs[1]; r.Type != "CNAME" || r.Name != "hermod-bounce.acme.invalid" || r.Value != bounceHost {
		t.Errorf("CNAME record %+v", r)
	}
	// The TXT value is the public half of the stored key.
	var pem []byte
	_ = e.db.View(func(tx *bbolt.Tx) error {
		pem = bytes.Clone(tx.Bucket([]byte(bucketKeys)).Get([]byte(d.Name)))
		return nil
	})
	key, err := dkim.ParseKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	if txt, _ := dkim.TXTRecord(key.Public()); txt != d.PublicTXT {
		t.Errorf("stored key's TXT %q != shown %q", txt, d.PublicTXT)
	}
	if d2 := e.add("acme", "acme2.invalid"); d2.Selector == d.Selector || d2.PublicTXT == d.PublicTXT {
		t.Error("two domains share a selector or key")
	}
}

func TestStatusWalk(t *testing.T) { testStatusWalk(t, newEnv(t, "rsa")) }

// TestStatusWalkRelay runs the walk through *relay.Resolver, the resolver
// the daemon uses, against the same fake server (TTL 0: nothing cached).
func TestStatusWalkRelay(t *testing.T) {
	e := newRelayEnv(t, "rsa")
	setTXT(e.dns, "hm1._domainkey.probe.invalid", []string{"v=DKIM1; p=x"})
	if _, err := e.opts.Resolver.LookupTXT(context.Background(), "hm1._domainkey.probe.invalid"); err != nil {
		t.Fatalf("relay.Resolver cannot look up a DKIM name (underscore label): %v", err)
	}
	testStatusWalk(t, e)
}

var _ Resolver = (*relay.Resolver)(nil)

func testStatusWalk(t *testing.T, e *env) {
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	ctx := context.Background()

	if n, err := e.s.CheckDue(ctx); n != 0 || err != nil {
		t.Fatalf("CheckDue right after adding = %d, %v", n, err)
	}
	// Nothing published: pending, both missing, checked again in a minute.
	got := e.due("acme", "acme.invalid")
	if got.Status != StatusPending || !strings.Contains(got.DKIM.Problem, "missing") || !strings.Contains(got.CNAME.Problem, "missing") {
		t.Fatalf("nothing published: %s %+v %+v", got.Status, got.DKIM, got.CNAME)
	}
	if !got.NextCheck.Equal(e.clock.Now().Add(time.Minute)) {
		t.Errorf("next check %v, want a minute after %v", got.NextCheck, e.clock.Now())
	}
	wantEvents(t, e.notes)

	// CNAME only: verifying, "verification started" to the owner.
	setCNAME(e.dns, d.ReturnPath, bounceHost)
	got = e.due("acme", d.Name)
	if got.Status != StatusVerifying || !got.CNAME.OK || got.DKIM.OK || !strings.Contains(got.Reason, "TXT") {
		t.Fatalf("CNAME only: %s %q %+v", got.Status, got.Reason, got.CNAME)
	}
	wantEvents(t, e.notes, "started acme.invalid acme owner@acme.invalid")
	if e.s.IsVerified("acme", d.Name) {
		t.Fatal("verifying domain reported verified")
	}

	// Both right (split TXT, blanks in p=, CNAME upper case + dot): verified.
	e.publish(d)
	got = e.due("acme", d.Name)
	if got.Status != StatusVerified || !got.DKIM.OK || !got.CNAME.OK || got.Reason != "" || !got.VerifiedAt.Equal(e.clock.Now()) {
		t.Fatalf("published: %s %q %+v %+v", got.Status, got.Reason, got.DKIM, got.CNAME)
	}
	wantEvents(t, e.notes, "started acme.invalid acme owner@acme.invalid", "verified acme.invalid acme owner@acme.invalid")
	if !e.s.IsVerified("acme", "ACME.invalid.") || e.s.IsVerified("other", "acme.invalid") || e.s.IsVerified("acme", "sub.acme.invalid") {
		t.Error("IsVerified wrong for owner / other account / subdomain")
	}
	acct, sel, key, ok := e.s.SigningKey("acme.invalid")
	if !ok || acct != "acme" || sel != d.Selector || key == nil {
		t.Fatalf("SigningKey = %q %q %v %v", acct, sel, key, ok)
	}
	if txt, _ := dkim.TXTRecord(key.Public()); txt != d.PublicTXT {
		t.Error("signing key does not match the published TXT")
	}
	if want := e.clock.Now().Add(24 * time.Hour); !got.NextCheck.Equal(want) {
		t.Errorf("verified next check %v, want %v", got.NextCheck, want)
	}
	e.clock.Advance(23 * time.Hour)
	if n, _ := e.s.CheckDue(ctx); n != 0 {
		t.Errorf("verified domain checked again within a day")
	}

	// Daily re-check after the TXT vanished: failed at once, owner told.
	setTXT(e.dns, d.Selector+"._domainkey."+d.Name)
	got = e.due("acme", d.Name)
	if got.Status != StatusFailed || !strings.Contains(got.Reason, "TXT") || !strings.Contains(got.Reason, "missing") {
		t.Fatalf("vanished: %s %q", got.Status, got.Reason)
	}
	if e.s.IsVerified("acme", d.Name) {
		t.Error("IsVerified true after records vanished")
	}
	if _, _, _, ok := e.s.SigningKey(d.Name); ok {
		t.Error("SigningKey ok after records vanished")
	}
	wantEvents(t, e.notes, "started acme.invalid acme owner@acme.invalid", "verified acme.invalid acme owner@acme.invalid",
		"failed acme.invalid acme owner@acme.invalid")
	if !got.NextCheck.IsZero() {
		t.Errorf("failed domain still scheduled at %v", got.NextCheck)
	}

	// The owner fixes DNS and asks for a check: verified again.
	e.publish(d)
	got, err := e.s.Check(ctx, "acme", "acme.invalid")
	if err != nil || got.Status != StatusVerified || !e.s.IsVerified("acme", d.Name) {
		t.Fatalf("manual re-check: %s %v", got.Status, err)
	}
	if ev := e.notes.Events(); len(ev) != 4 || !strings.HasPrefix(ev[3], "verified ") {
		t.Errorf("notifications after re-check: %q", ev)
	}
}

func TestWrongValues(t *testing.T) {
	e := newEnv(t, "rsa")
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	other, err := dkim.GenerateKey(dkim.AlgorithmRSA)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := dkim.TXTRecord(other.Public())
	ed, _ := dkim.GenerateKey(dkim.AlgorithmEd25519)
	edTXT, _ := dkim.TXTRecord(ed.Public())
	name := d.Selector + "._domainkey." + d.Name
	p := d.PublicTXT[strings.Index(d.PublicTXT, "p=")+2:]

	for _, tc := range []struct {
		txt       string
		ok        bool
		wantInMsg string
	}{
		{foreign, false, "public key p= differs"},
		{edTXT, false, "k=ed25519, expected k=rsa"},
		{"v=spf1 -all", false, "not a DKIM key record"},
		{"v=DKIM2; p=" + p, false, "v=DKIM2"},
		{"v=DKIM1; k=rsa; p=", false, "revoked"},
		{"p=" + p, true, ""},                                              // v= and k= are optional
		{`"v=DKIM1; k=rsa; p=` + p[:50] + `" "` + p[50:] + `"`, true, ""}, // quotes pasted into a web form
		{"v=DKIM1;k=rsa;t=s;h=sha256;p=" + p + ";", true, ""},
	} {
		setTXT(e.dns, name, splitTXT(tc.txt))
		got, err := e.s.Check(context.Background(), "acme", d.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DKIM.OK != tc.ok || !strings.Contains(got.DKIM.Problem, tc.wantInMsg) {
			t.Errorf("TXT %.40q: ok %v problem %q; want ok %v problem containing %q", tc.txt, got.DKIM.OK, got.DKIM.Problem, tc.ok, tc.wantInMsg)
		}
		if !tc.ok && (len(got.DKIM.Found) != 1 || got.DKIM.Found[0] != tc.txt || !strings.HasPrefix(got.DKIM.Problem, "wrong value")) {
			t.Errorf("TXT %.40q: found %q problem %q", tc.txt, got.DKIM.Found, got.DKIM.Problem)
		}
	}
	// One good record among others is enough.
	setTXT(e.dns, name, splitTXT(foreign), splitTXT(d.PublicTXT))
	if got, _ := e.s.Check(context.Background(), "acme", d.Name); !got.DKIM.OK {
		t.Errorf("good record among others: %+v", got.DKIM)
	}
	// A CNAME elsewhere.
	setCNAME(e.dns, d.ReturnPath, "bounces.elsewhere.invalid")
	got, _ := e.s.Check(context.Background(), "acme", d.Name)
	if got.CNAME.OK || got.CNAME.Problem != "wrong value: points to bounces.elsewhere.invalid, expected "+bounceHost ||
		len(got.CNAME.Found) != 1 || got.CNAME.Found[0] != "bounces.elsewhere.invalid" {
		t.Errorf("wrong CNAME: %+v", got.CNAME)
	}
	if got.Status != StatusVerifying {
		t.Errorf("status %s with a right TXT, want verifying", got.Status)
	}
	// Records shows the findings next to what to publish.
	if r := e.s.Records(got)[1]; r.Value != bounceHost || r.Problem != got.CNAME.Problem {
		t.Errorf("Records CNAME %+v", r)
	}
}

func TestScheduleAndTimeout(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	d := e.add("acme", "slow.invalid")
	setCNAME(e.dns, d.ReturnPath, bounceHost) // verifying, never completed
	deadline := d.Created.Add(72 * time.Hour)
	checks := 0
	for {
		prev := e.get("acme", d.Name)
		if prev.Status == StatusFailed {
			break
		}
		got := e.due("acme", d.Name)
		checks++
		if got.Status == StatusFailed {
			if !e.clock.Now().Equal(deadline) {
				t.Errorf("failed at %v, want %v", e.clock.Now(), deadline)
			}
			break
		}
		age := e.clock.Now().Sub(d.Created)
		gap := got.NextCheck.Sub(e.clock.Now())
		want := time.Hour
		switch {
		case age < time.Hour:
			want = time.Minute
		case age < 24*time.Hour:
			want = 10 * time.Minute
		}
		if gap != want {
			t.Fatalf("at age %v: next check in %v, want %v", age, gap, want)
		}
		if checks > 1000 {
			t.Fatal("never failed")
		}
	}
	// 60 in the first hour, 138 until a day, 48 hourly until 72h.
	if checks != 60+138+48 {
		t.Errorf("%d checks in 72h", checks)
	}
	got := e.get("acme", d.Name)
	if got.Status != StatusFailed || !strings.Contains(got.Reason, "not verified within 72h") || !strings.Contains(got.Reason, d.Selector+"._domainkey.slow.invalid") {
		t.Errorf("timed out: %s %q", got.Status, got.Reason)
	}
	wantEvents(t, e.notes, "started slow.invalid acme owner@acme.invalid", "failed slow.invalid acme owner@acme.invalid")
	e.clock.Advance(48 * time.Hour)
	if n, _ := e.s.CheckDue(context.Background()); n != 0 {
		t.Errorf("failed domain checked in the background")
	}

	// A pending domain times out too; a manual check with one record right
	// restarts the window.
	p := e.add("acme", "never.invalid")
	e.clock.Advance(72 * time.Hour)
	if n, err := e.s.CheckDue(context.Background()); n != 1 || err != nil {
		t.Fatalf("CheckDue = %d, %v", n, err)
	}
	if got := e.get("acme", p.Name); got.Status != StatusFailed {
		t.Fatalf("pending past deadline: %s", got.Status)
	}
	setCNAME(e.dns, p.ReturnPath, bounceHost)
	got, err := e.s.Check(context.Background(), "acme", p.Name)
	if err != nil || got.Status != StatusVerifying || !got.WindowStart.Equal(e.clock.Now()) || !got.NextCheck.Equal(e.clock.Now().Add(time.Minute)) {
		t.Errorf("manual check of a failed domain with its CNAME: %s %v window %v next %v", got.Status, err, got.WindowStart, got.NextCheck)
	}
}

func TestDNSErrorKeepsStatus(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	e.publish(d)
	e.due("acme", d.Name)
	before := len(e.notes.Events())
	e.dns.ServFail(d.Selector+"._domainkey."+d.Name, true)
	got := e.due("acme", d.Name)
	if got.Status != StatusVerified || got.CheckError == "" || !e.s.IsVerified("acme", d.Name) {
		t.Fatalf("SERVFAIL: %s %q verified=%v", got.Status, got.CheckError, e.s.IsVerified("acme", d.Name))
	}
	if !got.DKIM.OK {
		t.Error("SERVFAIL overwrote the last finding")
	}
	if want := e.clock.Now().Add(time.Hour); !got.NextCheck.Equal(want) {
		t.Errorf("retry at %v, want %v", got.NextCheck, want)
	}
	if len(e.notes.Events()) != before {
		t.Errorf("notifications on SERVFAIL: %q", e.notes.Events())
	}
	e.dns.ServFail(d.Selector+"._domainkey."+d.Name, false)
	if got := e.due("acme", d.Name); got.CheckError != "" || got.Status != StatusVerified {
		t.Errorf("after recovery: %s %q", got.Status, got.CheckError)
	}
}

func TestNotifierRetried(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	e.publish(d)
	e.notes.failNext = 1
	if got := e.due("acme", d.Name); got.Status != StatusVerified {
		t.Fatalf("status %s", got.Status)
	}
	wantEvents(t, e.notes) // the first mail failed, so the second waited
	e.due("acme", d.Name)
	wantEvents(t, e.notes, "started acme.invalid acme owner@acme.invalid", "verified acme.invalid acme owner@acme.invalid")
	e.due("acme", d.Name)
	if len(e.notes.Events()) != 2 {
		t.Errorf("sent again: %q", e.notes.Events())
	}
}

func TestRemoveDomain(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	e.publish(d)
	e.due("acme", d.Name)
	if !e.s.IsVerified("acme", d.Name) {
		t.Fatal("not verified")
	}
	if err := e.s.RemoveDomain("other", d.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveDomain by another account: %v", err)
	}
	if err := e.s.RemoveDomain("acme", "ACME.invalid"); err != nil {
		t.Fatal(err)
	}
	if e.s.IsVerified("acme", d.Name) {
		t.Error("IsVerified after removal")
	}
	if _, _, _, ok := e.s.SigningKey(d.Name); ok {
		t.Error("SigningKey after removal")
	}
	if _, err := e.s.Domain("acme", d.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Domain after removal: %v", err)
	}
	if err := e.s.RemoveDomain("acme", d.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("second removal: %v", err)
	}
	_ = e.db.View(func(tx *bbolt.Tx) error {
		for _, b := range []string{bucketDomain, bucketKeys, bucketDue, bucketByAccount} {
			if k, _ := tx.Bucket([]byte(b)).Cursor().First(); k != nil {
				t.Errorf("bucket %s still has %q", b, k)
			}
		}
		return nil
	})
	e.clock.Advance(48 * time.Hour)
	if n, err := e.s.CheckDue(context.Background()); n != 0 || err != nil {
		t.Errorf("CheckDue after removal = %d, %v", n, err)
	}
	// Another account may now take it, with a new key.
	e.account("newco", true)
	if d2 := e.add("newco", d.Name); d2.Selector == d.Selector || d2.Status != StatusPending {
		t.Errorf("re-added: %+v", d2)
	}
}

func TestReopen(t *testing.T) {
	e := newEnv(t, "ed25519")
	e.account("acme", true)
	v := e.add("acme", "verified.invalid")
	e.publish(v)
	e.due("acme", v.Name)
	e.add("acme", "pending.invalid")
	_, _, key1, _ := e.s.SigningKey(v.Name)

	e.reopen()
	if !e.s.IsVerified("acme", "verified.invalid") || e.s.IsVerified("acme", "pending.invalid") {
		t.Error("verified cache not rebuilt")
	}
	acct, sel, key2, ok := e.s.SigningKey("verified.invalid")
	if !ok || acct != "acme" || sel != v.Selector || !key2.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key1.Public()) {
		t.Errorf("SigningKey after reopen = %q %q %v", acct, sel, ok)
	}
	ds, err := e.s.Domains("acme")
	if err != nil || len(ds) != 2 || ds[0].Name != "pending.invalid" || ds[1].Status != StatusVerified {
		t.Errorf("Domains = %+v, %v", ds, err)
	}
	a, err := e.s.Account("acme")
	if err != nil || !a.CustomDomain || a.Owner != "owner@acme.invalid" {
		t.Errorf("Account = %+v, %v", a, err)
	}
	// The due index survived: the pending domain is still checked.
	e.clock.Advance(time.Minute)
	if n, err := e.s.CheckDue(context.Background()); n != 1 || err != nil {
		t.Errorf("CheckDue after reopen = %d, %v; want the pending domain", n, err)
	}
}

func TestAccounts(t *testing.T) {
	e := newEnv(t, "ed25519")
	for _, a := range []Account{
		{ID: "", Owner: "a@b.invalid"},
		{ID: "has space", Owner: "a@b.invalid"},
		{ID: "x", Owner: ""},
		{ID: "x", Owner: "taro"},
		{ID: "x", Owner: "Taro <taro@example.com>"},
		{ID: "x", Owner: "taro@localhost"},
		{ID: "x", Owner: "a@b.invalid, c@d.invalid"},
	} {
		if _, err := e.s.PutAccount(a); !errors.Is(err, ErrInvalidAccount) {
			t.Errorf("PutAccount(%+v) = %v, want invalid_account", a, err)
		}
	}
	if _, err := e.s.Account("nobody"); !errors.Is(err, ErrAccountNotFound) {
		t.Errorf("Account(nobody) = %v", err)
	}
	a := e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	e.publish(d)
	e.due("acme", d.Name)

	// Dropping the option stops use of the domains at once; restoring it
	// resumes it. Created is kept.
	e.clock.Advance(time.Hour)
	b, err := e.s.PutAccount(Account{ID: "acme", Owner: "boss@acme.invalid", CustomDomain: false})
	if err != nil || !b.Created.Equal(a.Created) || !b.Updated.Equal(e.clock.Now()) || b.Owner != "boss@acme.invalid" {
		t.Fatalf("update: %+v, %v", b, err)
	}
	if e.s.IsVerified("acme", d.Name) {
		t.Error("IsVerified without the option")
	}
	if _, _, _, ok := e.s.SigningKey(d.Name); ok {
		t.Error("SigningKey without the option")
	}
	e.account("acme", true)
	if !e.s.IsVerified("acme", d.Name) {
		t.Error("IsVerified false after restoring the option")
	}
}

func TestPrivateKeyNeverInJSON(t *testing.T) {
	e := newEnv(t, "rsa")
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	var pem []byte
	_ = e.db.View(func(tx *bbolt.Tx) error {
		pem = bytes.Clone(tx.Bucket([]byte(bucketKeys)).Get([]byte(d.Name)))
		return nil
	})
	if !bytes.Contains(pem, []byte("PRIVATE KEY")) {
		t.Fatalf("stored key is not a PEM private key")
	}
	lines := strings.Split(strings.TrimSpace(string(pem)), "\n")
	body := lines[len(lines)/2] // a line of the key's base64
	out, err := json.Marshal(e.get("acme", d.Name))
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	_ = e.db.View(func(tx *bbolt.Tx) error {
		raw = bytes.Clone(tx.Bucket([]byte(bucketDomain)).Get([]byte(d.Name)))
		return nil
	})
	for what, b := range map[string][]byte{"Domain JSON": out, "stored domain": raw} {
		if bytes.Contains(b, []byte(body)) || bytes.Contains(b, []byte("PRIVATE")) {
			t.Errorf("%s contains the private key", what)
		}
	}
}

func TestIsFreemail(t *testing.T) {
	for _, tc := range []struct {
		domain string
		want   bool
	}{
		{"gmail.com", true}, {"GMAIL.COM.", true}, {"googlemail.com", true},
		{"hotmail.co.jp", true}, {"hotmail.fr", true}, {"ezweb.ne.jp", true}, {"au.com", true},
		{"gmx.com", true}, {"gmx.co.uk", true}, {"yandex.com.tr", true}, {"pm.me", true},
		{"sub.gmail.com", true},
		{"example.com", false}, {"mygmail.com", false}, {"gmail.com.evil.invalid", false},
		{"gmxx.de", false}, {"notgmx.de", false}, {"makeleaps.com", false}, {"", false},
	} {
		if got := IsFreemail(tc.domain, nil); got != tc.want {
			t.Errorf("IsFreemail(%q) = %v, want %v", tc.domain, got, tc.want)
		}
	}
	if !IsFreemail("Mail.Example.net", []string{"example.net"}) || !IsFreemail("corp.de", []string{"CORP.*"}) {
		t.Error("extra entries not honoured")
	}
}
