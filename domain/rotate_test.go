package domain

import (
	"errors"
	"testing"
	"time"
)

// TestRotateKeyWithoutGap walks a rollover through hermod's own resolver:
// the old key signs until the new record is seen, then the new one; the old
// record may be removed only after the grace period, which the domain states.
func TestRotateKeyWithoutGap(t *testing.T) {
	e := newRelayEnv(t, "rsa")
	e.opts.RotationGrace = 48 * time.Hour
	e.reopen()
	e.account("acme", true)
	d := e.add("acme", "acme.invalid")
	e.publish(d)
	if got := e.due("acme", d.Name); got.Status != StatusVerified {
		t.Fatalf("not verified: %s %s", got.Status, got.Reason)
	}
	_, sel0, key0, ok := e.s.SigningKey(d.Name)
	if !ok || sel0 != d.Selector {
		t.Fatalf("signing key before rollover: %q %v", sel0, ok)
	}

	r, err := e.s.RotateKey("acme", d.Name)
	if err != nil {
		t.Fatal(err)
	}
	rot := r.Rotation
	if rot == nil || rot.Selector == d.Selector || rot.PublicTXT == d.PublicTXT || rot.OldSelector != d.Selector {
		t.Fatalf("rotation: %+v", rot)
	}
	if want := rot.Selector + "._domainkey.acme.invalid"; rot.Record.Name != want || rot.Record.Zone == "" {
		t.Fatalf("new record %q (zone %q), want name %q", rot.Record.Name, rot.Record.Zone, want)
	}
	if _, err := e.s.RotateKey("acme", d.Name); !errors.Is(err, &Error{Code: CodeRotationPending}) {
		t.Fatalf("second rollover while pending: %v", err)
	}
	// Not published yet: the old key keeps signing, the look-up is retried soon.
	got := e.due("acme", d.Name)
	if _, sel, key, _ := e.s.SigningKey(d.Name); sel != sel0 || key != key0 {
		t.Fatalf("the new key signs before its record is seen (selector %q)", sel)
	}
	if !got.Rotation.Pending() || got.Rotation.Record.OK || got.Rotation.Record.Problem == "" {
		t.Fatalf("unpublished new record: %+v", got.Rotation)
	}
	if got.NextCheck.After(e.clock.Now().Add(time.Minute)) {
		t.Fatalf("pending rollover checked again only at %v", got.NextCheck)
	}
	// Published: the new key signs from the next check on, the old record stays until the grace ends.
	setTXT(e.dns, rot.Selector+"._domainkey."+d.Name, splitTXT(rot.PublicTXT))
	got = e.due("acme", d.Name)
	now := e.clock.Now()
	_, sel, key, ok := e.s.SigningKey(d.Name)
	if !ok || sel != rot.Selector || key == key0 {
		t.Fatalf("after the new record was seen: selector %q (want %q), same key %v", sel, rot.Selector, key == key0)
	}
	if got.Rotation.Pending() || got.Selector != rot.Selector || got.PublicTXT != rot.PublicTXT || got.Status != StatusVerified {
		t.Fatalf("domain after switch: %+v", got)
	}
	if got.Rotation.OldSelector != sel0 || !got.Rotation.RemoveOldAfter.Equal(now.Add(48*time.Hour)) {
		t.Fatalf("old record %q removable after %v, want %q after %v", got.Rotation.OldSelector, got.Rotation.RemoveOldAfter, sel0, now.Add(48*time.Hour))
	}
	// The new key survives a restart.
	e.reopen()
	if _, sel, _, ok := e.s.SigningKey(d.Name); !ok || sel != rot.Selector {
		t.Fatalf("after reopen: selector %q %v", sel, ok)
	}
}
