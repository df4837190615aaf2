package suppress

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/control"
	"go.etcd.io/bbolt"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) Advance(d time.Duration) { c.now = c.now.Add(d) }
func newClock() *clock                   { return &clock{now: t0} }
func dbPath(t *testing.T) string         { t.Helper(); return filepath.Join(t.TempDir(), "hermod.db") }
func openList(t *testing.T, db *bbolt.DB, o Options) *List {
	t.Helper()
	l, err := Open(controlStore(t, db), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func controlStore(t *testing.T, db *bbolt.DB) control.Store {
	t.Helper()
	cs, err := control.OpenBolt(db)
	if err != nil {
		t.Fatalf("control.OpenBolt: %v", err)
	}
	return cs
}

func openDB(t *testing.T, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustAdd(t *testing.T, l *List, e Entry) Entry {
	t.Helper()
	got, err := l.Add(e)
	if err != nil {
		t.Fatalf("Add(%+v): %v", e, err)
	}
	return got
}

// suppressed reports whether (account, address) is suppressed, failing on error.
func suppressed(t *testing.T, l *List, account, address string) bool {
	t.Helper()
	_, ok, err := l.Lookup(account, address)
	if err != nil {
		t.Fatalf("Lookup(%q, %q): %v", account, address, err)
	}
	return ok
}

func TestOpenOptions(t *testing.T) {
	db := openDB(t, dbPath(t))
	for _, o := range []Options{
		{Scope: "domain"},
		{SoftBounceLimit: -1},
		{ExpireAfter: map[string]time.Duration{"complaint": 0}},
		{ExpireAfter: map[string]time.Duration{"complaint": -time.Hour}},
	} {
		if _, err := Open(controlStore(t, db), o); err == nil {
			t.Errorf("Open(%+v) succeeded, want error", o)
		}
	}
	if _, err := Open(nil, Options{}); err == nil {
		t.Error("Open(nil) succeeded")
	}
	openList(t, db, Options{})
}

func TestAddLookupRemove(t *testing.T) {
	clk := newClock()
	l := openList(t, openDB(t, dbPath(t)), Options{Now: clk.Now})
	got := mustAdd(t, l, Entry{
		Address: "<Taro@Example.COM>", Account: "acme", Reason: "user-unknown",
		Source: "smtp", MessageID: "0123456789abcdef", Detail: "550 5.1.1 no such user",
	})
	want := Entry{
		Address: "Taro@example.com", Account: "acme", Reason: "user-unknown",
		Source: "smtp", MessageID: "0123456789abcdef", Detail: "550 5.1.1 no such user",
		Created: t0,
	}
	if got != want {
		t.Fatalf("Add returned\n%+v\nwant\n%+v", got, want)
	}
	e, ok, err := l.Lookup("acme", "Taro@example.com")
	if err != nil || !ok || !e.Created.Equal(want.Created) {
		t.Fatalf("Lookup = %+v, %v, %v", e, ok, err)
	}
	e.Created = want.Created // location may differ after JSON
	if e != want {
		t.Fatalf("Lookup returned\n%+v\nwant\n%+v", e, want)
	}
	if n, err := l.Count(); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1", n, err)
	}
	if removed, err := l.Remove("", "Taro@EXAMPLE.com"); err != nil || !removed {
		t.Fatalf("Remove = %v, %v; want true", removed, err)
	}
	if suppressed(t, l, "acme", "Taro@example.com") {
		t.Fatal("still suppressed after Remove")
	}
	if removed, err := l.Remove("", "Taro@example.com"); err != nil || removed {
		t.Fatalf("second Remove = %v, %v; want false", removed, err)
	}
	if n, err := l.Count(); err != nil || n != 0 {
		t.Fatalf("Count = %d, %v; want 0", n, err)
	}
}

func TestCaseRules(t *testing.T) {
	l := openList(t, openDB(t, dbPath(t)), Options{})
	mustAdd(t, l, Entry{Address: "Taro@Example.COM", Reason: "user-unknown", Source: "smtp"})
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"Taro@example.com", true},
		{"Taro@EXAMPLE.COM", true},
		{"Taro@eXample.com.", true},
		{"  <Taro@example.com>  ", true},
		{`"Taro"@EXAMPLE.COM`, true},
		{`"T\aro"@example.com`, true},
		{"Taro@ＥＸＡＭＰＬＥ.com", true},      // full-width letters map to ASCII (UTS #46)
		{"Taro@example\u3002com", true}, // ideographic full stop is a dot (UTS #46)
		{"taro@example.com", false},     // local part is exact (RFC 5321 2.4)
		{"TARO@example.com", false},
		{`"taro"@example.com`, false},
		{`"Taro "@example.com`, false},
		{"Taro+tag@example.com", false},
		{"Taro@example.net", false},
		{"Taro@sub.example.com", false},
		{"Taro@example.com.evil.test", false},
		{"Taro@example.comm", false},
		{"Taro@[192.0.2.1]", false},
		{"Taro\u200b@example.com", false}, // a different (UTF-8) local part
		{"Taro@example..com", false},      // invalid
		{"Taro@@example.com", false},      // invalid
		{"<Taro@example.com", false},      // invalid
	} {
		addr, want := tc.addr, tc.want
		_, ok, err := l.Lookup("", addr)
		if err != nil {
			if want {
				t.Errorf("Lookup(%q): %v", addr, err)
			} else if !errors.Is(err, ErrInvalidAddress) {
				t.Errorf("Lookup(%q): error %v does not wrap ErrInvalidAddress", addr, err)
			}
			continue
		}
		if ok != want {
			t.Errorf("Lookup(%q) found = %v, want %v", addr, ok, want)
		}
	}
}

func TestInvalidRejected(t *testing.T) {
	l := openList(t, openDB(t, dbPath(t)), Options{SoftBounceLimit: 1})
	for _, addr := range []string{"", "taro", "taro@", "@example.com", "ta ro@example.com", "taro@exa_mple!.com"} {
		_, err := l.Add(Entry{Address: addr, Reason: "manual", Source: "api"})
		if !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("Add(%q): err = %v, want ErrInvalidAddress", addr, err)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", addr)) {
			t.Errorf("Add(%q): error %q does not quote the address", addr, err)
		}
		if _, _, err := l.Lookup("", addr); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("Lookup(%q): err = %v, want ErrInvalidAddress", addr, err)
		}
		if _, err := l.Remove("", addr); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("Remove(%q): err = %v, want ErrInvalidAddress", addr, err)
		}
		if _, _, err := l.RecordSoftBounce("", addr, "mailbox-full", "", ""); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("RecordSoftBounce(%q): err = %v, want ErrInvalidAddress", addr, err)
		}
		if err := l.RecordSuccess("", addr); !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("RecordSuccess(%q): err = %v, want ErrInvalidAddress", addr, err)
		}
	}
	if _, err := l.Add(Entry{Address: "taro@example.com", Source: "api"}); err == nil {
		t.Error("Add without a reason succeeded")
	}
	if _, err := l.Add(Entry{Address: "taro@example.com", Account: "a\x00b", Reason: "manual"}); err == nil {
		t.Error("Add with a NUL in the account succeeded")
	}
	if n, err := l.Count(); err != nil || n != 0 {
		t.Errorf("Count = %d, %v after only invalid adds", n, err)
	}
}

func TestGlobalScopeIgnoresAccount(t *testing.T) {
	l := openList(t, openDB(t, dbPath(t)), Options{Scope: ScopeGlobal})
	mustAdd(t, l, Entry{Address: "a@example.com", Account: "acme", Reason: "user-unknown"})
	e, ok, err := l.Lookup("other", "a@example.com")
	if err != nil || !ok {
		t.Fatalf("Lookup from another account = %v, %v; want found", ok, err)
	}
	if e.Account != "acme" {
		t.Errorf("Entry.Account = %q, want the adding account kept", e.Account)
	}
	if !suppressed(t, l, "", "a@example.com") {
		t.Error("not suppressed for account \"\"")
	}
	if removed, err := l.Remove("third", "a@example.com"); err != nil || !removed {
		t.Fatalf("Remove from a third account = %v, %v", removed, err)
	}
	if suppressed(t, l, "acme", "a@example.com") {
		t.Error("still suppressed")
	}
}

func TestAccountScopeIsolation(t *testing.T) {
	l := openList(t, openDB(t, dbPath(t)), Options{Scope: ScopeAccount})
	mustAdd(t, l, Entry{Address: "a@example.com", Account: "acme", Reason: "user-unknown"})
	if !suppressed(t, l, "acme", "a@example.com") {
		t.Error("not suppressed for its account")
	}
	for _, acct := range []string{"other", "", "acm", "acme2"} {
		if suppressed(t, l, acct, "a@example.com") {
			t.Errorf("suppressed for account %q", acct)
		}
	}
	if removed, err := l.Remove("other", "a@example.com"); err != nil || removed {
		t.Fatalf("Remove from another account = %v, %v; want false", removed, err)
	}
	if !suppressed(t, l, "acme", "a@example.com") {
		t.Error("another account's Remove removed the entry")
	}

	// A global entry (account "") applies to every account, and is not
	// removed by removing an account's entry.
	mustAdd(t, l, Entry{Address: "g@example.com", Reason: "manual", Source: "manual"})
	mustAdd(t, l, Entry{Address: "g@example.com", Account: "acme", Reason: "complaint", Source: "feedback"})
	for _, acct := range []string{"acme", "other", ""} {
		if !suppressed(t, l, acct, "g@example.com") {
			t.Errorf("global entry not applied to account %q", acct)
		}
	}
	if e, _, _ := l.Lookup("acme", "g@example.com"); e.Reason != "complaint" {
		t.Errorf("Lookup for acme returned %+v, want acme's own entry first", e)
	}
	if removed, err := l.Remove("acme", "g@example.com"); err != nil || !removed {
		t.Fatalf("Remove(acme) = %v, %v", removed, err)
	}
	if e, ok, _ := l.Lookup("acme", "g@example.com"); !ok || e.Reason != "manual" {
		t.Errorf("after removing acme's entry Lookup = %+v, %v; want the global one", e, ok)
	}
	if n, err := l.Count(); err != nil || n != 2 {
		t.Errorf("Count = %d, %v; want 2", n, err)
	}
}

func TestExpiry(t *testing.T) {
	clk := newClock()
	l := openList(t, openDB(t, dbPath(t)), Options{
		Now:         clk.Now,
		ExpireAfter: map[string]time.Duration{"complaint": 24 * time.Hour, "soft-bounce-limit": time.Hour},
	})
	c := mustAdd(t, l, Entry{Address: "c@example.com", Reason: "complaint", Source: "feedback"})
	if !c.Expires.Equal(t0.Add(24 * time.Hour)) {
		t.Fatalf("Expires = %v, want %v", c.Expires, t0.Add(24*time.Hour))
	}
	u := mustAdd(t, l, Entry{Address: "u@example.com", Reason: "user-unknown", Source: "smtp"})
	if !u.Expires.IsZero() {
		t.Fatalf("user-unknown got Expires %v, want never", u.Expires)
	}
	explicit := mustAdd(t, l, Entry{Address: "x@example.com", Reason: "manual", Expires: t0.Add(2 * time.Hour)})
	if !explicit.Expires.Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("explicit Expires replaced: %v", explicit.Expires)
	}

	clk.Advance(24*time.Hour - time.Nanosecond)
	if !suppressed(t, l, "", "c@example.com") {
		t.Fatal("complaint expired early")
	}
	if suppressed(t, l, "", "x@example.com") {
		t.Fatal("explicit expiry ignored")
	}
	clk.Advance(time.Nanosecond)
	if suppressed(t, l, "", "c@example.com") {
		t.Fatal("complaint did not expire at Expires")
	}
	if !suppressed(t, l, "", "u@example.com") {
		t.Fatal("user-unknown expired")
	}
	if n, err := l.Count(); err != nil || n != 1 {
		t.Fatalf("Count = %d, %v; want 1 (expired not counted)", n, err)
	}
	page, _, err := l.List("", "", "", 10)
	if err != nil || len(page) != 1 || page[0].Address != "u@example.com" {
		t.Fatalf("List = %+v, %v; want only u@example.com", page, err)
	}
	if removed, err := l.Remove("", "c@example.com"); err != nil || removed {
		t.Fatalf("Remove(expired) = %v, %v; want false", removed, err)
	}
	if n, err := l.PurgeExpired(); err != nil || n != 1 { // x; c was removed
		t.Fatalf("PurgeExpired = %d, %v; want 1", n, err)
	}
	if n, err := l.PurgeExpired(); err != nil || n != 0 {
		t.Fatalf("second PurgeExpired = %d, %v; want 0", n, err)
	}
	// An expired entry is replaced by a new Add whatever its Created.
	mustAdd(t, l, Entry{Address: "c@example.com", Reason: "complaint", Source: "feedback"})
	if !suppressed(t, l, "", "c@example.com") {
		t.Fatal("re-added complaint not suppressed")
	}
}

func TestAddOverwrite(t *testing.T) {
	clk := newClock()
	l := openList(t, openDB(t, dbPath(t)), Options{Now: clk.Now})
	mustAdd(t, l, Entry{Address: "a@example.com", Reason: "user-unknown", Source: "smtp", MessageID: "m1"})
	clk.Advance(time.Minute)
	got := mustAdd(t, l, Entry{Address: "a@example.com", Reason: "complaint", Source: "feedback", MessageID: "m2"})
	if got.Reason != "complaint" || got.MessageID != "m2" || !got.Created.Equal(t0.Add(time.Minute)) {
		t.Fatalf("newer Add returned %+v", got)
	}
	// Stale news (created before the stored entry) does not overwrite it.
	got = mustAdd(t, l, Entry{Address: "a@example.com", Reason: "host-unknown", Source: "dsn", MessageID: "m0", Created: t0})
	if got.Reason != "complaint" {
		t.Fatalf("stale Add returned %+v, want the newer stored entry", got)
	}
	if e, _, _ := l.Lookup("", "a@example.com"); e.Reason != "complaint" || e.MessageID != "m2" {
		t.Fatalf("stale Add overwrote: %+v", e)
	}
}

func TestSoftBounceRun(t *testing.T) {
	clk := newClock()
	l := openList(t, openDB(t, dbPath(t)), Options{Now: clk.Now, SoftBounceLimit: 3})
	const addr = "Taro@Example.com"
	soft := func(msgID string) (bool, Entry) {
		t.Helper()
		clk.Advance(time.Minute)
		ok, e, err := l.RecordSoftBounce("acme", addr, "mailbox-full", msgID, "452 4.2.2 over quota")
		if err != nil {
			t.Fatalf("RecordSoftBounce: %v", err)
		}
		return ok, e
	}
	// Two soft, a success, two soft: never three in a row.
	for _, id := range []string{"m1", "m2"} {
		if ok, _ := soft(id); ok {
			t.Fatalf("suppressed after soft bounce %s", id)
		}
	}
	if err := l.RecordSuccess("acme", "Taro@example.COM"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"m3", "m4"} {
		if ok, _ := soft(id); ok {
			t.Fatalf("suppressed after soft bounce %s (success should have reset the run)", id)
		}
	}
	if suppressed(t, l, "acme", addr) {
		t.Fatal("suppressed without a run of 3")
	}
	// The third in a row suppresses.
	ok, e := soft("m5")
	if !ok {
		t.Fatal("not suppressed after three soft bounces in a row")
	}
	want := Entry{
		Address: "Taro@example.com", Account: "acme", Reason: ReasonSoftBounceLimit, Source: SourceSoftBounce,
		MessageID: "m5", Detail: "3 consecutive soft bounces, last mailbox-full: 452 4.2.2 over quota",
		Created: t0.Add(5 * time.Minute),
	}
	if e != want {
		t.Fatalf("entry\n%+v\nwant\n%+v", e, want)
	}
	if !suppressed(t, l, "acme", addr) {
		t.Fatal("Lookup does not see the soft-bounce-limit entry")
	}
	// Further soft bounces return the existing entry.
	if ok, again := soft("m6"); !ok || again.MessageID != "m5" {
		t.Fatalf("soft bounce of a suppressed address = %v, %+v", ok, again)
	}
	// Removing the entry starts the count afresh.
	if _, err := l.Remove("acme", addr); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"m7", "m8"} {
		if ok, _ := soft(id); ok {
			t.Fatalf("suppressed after soft bounce %s following Remove", id)
		}
	}
	if ok, _ := soft("m9"); !ok {
		t.Fatal("not suppressed after a new run of three")
	}
}

func TestSoftBounceRunPerAddressAndLimitZero(t *testing.T) {
	db := openDB(t, dbPath(t))
	l := openList(t, db, Options{SoftBounceLimit: 2, Scope: ScopeAccount})
	// One soft bounce each: the run is per (account, address).
	for _, k := range [][2]string{{"a", "x@example.com"}, {"b", "x@example.com"}, {"a", "y@example.com"}} {
		if ok, _, err := l.RecordSoftBounce(k[0], k[1], "suspended", "", ""); err != nil || ok {
			t.Fatalf("RecordSoftBounce(%v) = %v, %v", k, ok, err)
		}
	}
	if ok, _, err := l.RecordSoftBounce("a", "x@example.com", "suspended", "", ""); err != nil || !ok {
		t.Fatalf("second soft bounce of (a, x) = %v, %v; want suppressed", ok, err)
	}
	if suppressed(t, l, "b", "x@example.com") || suppressed(t, l, "a", "y@example.com") {
		t.Fatal("another key was suppressed")
	}

	never := openList(t, db, Options{})
	for range 10 {
		if ok, _, err := never.RecordSoftBounce("", "z@example.com", "mailbox-full", "", ""); err != nil || ok {
			t.Fatalf("limit 0: RecordSoftBounce = %v, %v", ok, err)
		}
	}
}

func TestList(t *testing.T) {
	l := openList(t, openDB(t, dbPath(t)), Options{Scope: ScopeAccount})
	var want []string
	for i := range 25 {
		a := fmt.Sprintf("user%02d@Example.com", i)
		mustAdd(t, l, Entry{Address: a, Account: "acme", Reason: "user-unknown"})
		want = append(want, fmt.Sprintf("user%02d@example.com", i))
	}
	mustAdd(t, l, Entry{Address: "other@example.com", Account: "acme", Reason: "manual"})
	mustAdd(t, l, Entry{Address: "user99@example.com", Account: "acme2", Reason: "manual"})
	mustAdd(t, l, Entry{Address: "user98@example.com", Reason: "manual"})

	var got []string
	after, pages := "", 0
	for {
		page, next, err := l.List("acme", "user", after, 10)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(page) > 10 {
			t.Fatalf("page of %d entries, limit 10", len(page))
		}
		for _, e := range page {
			if e.Account != "acme" {
				t.Errorf("listed entry of account %q", e.Account)
			}
			got = append(got, e.Address)
		}
		if next == "" {
			break
		}
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		after = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed\n%q\nwant\n%q", got, want)
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3", pages)
	}

	// Exactly a full page: no next cursor.
	page, next, err := l.List("acme", "user1", "", 10)
	if err != nil || len(page) != 10 || next != "" {
		t.Errorf("List(prefix user1) = %d entries, next %q, %v; want 10, \"\"", len(page), next, err)
	}
	// The domain in a prefix is compared lower-cased.
	page, _, err = l.List("acme", "user03@EXAMPLE", "", 0)
	if err != nil || len(page) != 1 || page[0].Address != "user03@example.com" {
		t.Errorf("List(prefix user03@EXAMPLE) = %+v, %v", page, err)
	}
	// A cursor before the prefix starts at the prefix.
	page, _, err = l.List("acme", "user2", "a", 0)
	if err != nil || len(page) != 5 || page[0].Address != "user20@example.com" {
		t.Errorf("List(prefix user2, after a) = %d entries, %v", len(page), err)
	}
	// Global entries only under account "".
	page, _, err = l.List("", "", "", 0)
	if err != nil || len(page) != 1 || page[0].Address != "user98@example.com" {
		t.Errorf("List(account \"\") = %+v, %v", page, err)
	}
	page, _, err = l.List("acme", "", "", 0)
	if err != nil || len(page) != 26 {
		t.Errorf("List(acme, all) = %d entries, %v; want 26", len(page), err)
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	path := dbPath(t)
	clk := newClock()
	o := Options{Now: clk.Now, SoftBounceLimit: 2, ExpireAfter: map[string]time.Duration{"complaint": time.Hour}}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := openList(t, db, o)
	mustAdd(t, l, Entry{Address: "a@example.com", Reason: "user-unknown", Source: "smtp", Detail: "550 5.1.1"})
	mustAdd(t, l, Entry{Address: "c@example.com", Reason: "complaint", Source: "feedback"})
	if ok, _, err := l.RecordSoftBounce("", "s@example.com", "mailbox-full", "m1", ""); err != nil || ok {
		t.Fatalf("RecordSoftBounce = %v, %v", ok, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	l = openList(t, openDB(t, path), o)
	e, ok, err := l.Lookup("", "a@example.com")
	if err != nil || !ok || e.Detail != "550 5.1.1" || !e.Created.Equal(t0) {
		t.Fatalf("after reopen Lookup = %+v, %v, %v", e, ok, err)
	}
	e, ok, err = l.Lookup("", "c@example.com")
	if err != nil || !ok || !e.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after reopen Lookup(complaint) = %+v, %v, %v", e, ok, err)
	}
	// The soft-bounce counter survived too: one more suppresses.
	if ok, _, err := l.RecordSoftBounce("", "s@example.com", "mailbox-full", "m2", ""); err != nil || !ok {
		t.Fatalf("second soft bounce after reopen = %v, %v; want suppressed", ok, err)
	}
	clk.Advance(time.Hour)
	if n, err := l.Count(); err != nil || n != 2 {
		t.Fatalf("Count = %d, %v; want 2", n, err)
	}
}

// TestTxVariants checks that a bounce and its suppression can share one
// transaction, and that a rolled-back transaction leaves nothing behind.
func TestTxVariants(t *testing.T) {
	db := controlStore(t, openDB(t, dbPath(t)))
	l, err := Open(db, Options{SoftBounceLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	errRollback := errors.New("rollback")
	err = db.Update(func(tx control.Tx) error {
		if _, err := l.AddTx(tx, Entry{Address: "a@example.com", Reason: "user-unknown", Source: "smtp"}); err != nil {
			return err
		}
		if _, ok, err := l.LookupTx(tx, "", "a@example.com"); err != nil || !ok {
			return fmt.Errorf("LookupTx inside the transaction = %v, %v", ok, err)
		}
		if _, _, err := l.RecordSoftBounceTx(tx, "", "s@example.com", "mailbox-full", "", ""); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("Update: %v", err)
	}
	if suppressed(t, l, "", "a@example.com") {
		t.Fatal("rolled-back AddTx is visible")
	}
	// The rolled-back soft bounce did not count: one more does not suppress.
	if ok, _, err := l.RecordSoftBounce("", "s@example.com", "mailbox-full", "", ""); err != nil || ok {
		t.Fatalf("RecordSoftBounce = %v, %v; want not suppressed", ok, err)
	}
	err = db.Update(func(tx control.Tx) error {
		if err := l.RecordSuccessTx(tx, "", "s@example.com"); err != nil {
			return err
		}
		_, err := l.AddTx(tx, Entry{Address: "a@example.com", Reason: "user-unknown", Source: "smtp"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !suppressed(t, l, "", "a@example.com") {
		t.Fatal("committed AddTx is not visible")
	}
	if ok, _, err := l.RecordSoftBounce("", "s@example.com", "mailbox-full", "", ""); err != nil || ok {
		t.Fatalf("RecordSoftBounce after RecordSuccessTx = %v, %v; want not suppressed", ok, err)
	}
	err = db.View(func(tx control.Tx) error {
		_, err := l.AddTx(tx, Entry{Address: "b@example.com", Reason: "manual"})
		return err
	})
	if err == nil {
		t.Fatal("AddTx in a read-only transaction succeeded")
	}
}
