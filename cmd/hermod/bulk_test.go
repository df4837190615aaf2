package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/queue"
)

// TestCLIBulkAgainstDaemon: hold, release and delete by filter and by id
// against a running daemon; -dry-run changes nothing; a held recipient is
// not delivered while another released one is; a command with no id and
// no filter is a usage error, not an action on the whole queue.
func TestCLIBulkAgainstDaemon(t *testing.T) {
	e := startCLIDaemon(t)
	slow := "slow@slow.test"
	e.mx.Refuse(slow, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "try again later"})
	id1 := e.submit(t, "bulk-1", slow)
	id2 := e.submit(t, "bulk-2", slow)
	e.waitStatus(t, id1, 0, queue.StatusDeferred)
	e.waitStatus(t, id2, 0, queue.StatusDeferred)

	out := e.ok(t, "queue", "hold", "-domain", "SLOW.test", "-dry-run")
	if !strings.Contains(out, "dry run: 2 recipient(s) in 2 message(s) would be held") || !strings.Contains(out, id1) ||
		!strings.Contains(out, id2) || !strings.Contains(lineWith(out, id1), "deferred") {
		t.Errorf("hold -dry-run:\n%s", out)
	}
	if m, _ := e.d.Store.Get(id1); m.Recipients[0].Status != queue.StatusDeferred {
		t.Fatalf("dry run held %s", id1)
	}
	out = e.ok(t, "queue", "hold", "-domain", "slow.test")
	if !strings.Contains(out, "2 recipient(s) in 2 message(s) held") {
		t.Errorf("hold:\n%s", out)
	}
	if out := e.ok(t, "queue", "show", id2); !strings.Contains(out, "<"+slow+">: held") || !strings.Contains(out, "送信結果待ち") ||
		!strings.Contains(out, "recipient 0 is held; its relay.max_age (24h0m0s) ends ") {
		t.Errorf("queue show of a held message:\n%s", out)
	}
	// A held message accepted two days ago is past max_age (24h): show says
	// what release would do.
	old := &queue.Message{ID: queue.NewID(time.Now()), MailFrom: "app@saas.test", Received: time.Now().Add(-48 * time.Hour),
		Recipients: []*queue.Recipient{{Address: "old@slow.test", EnvelopeFrom: "b@m.makeleaps.test", Status: queue.StatusHeld}}}
	if err := e.d.Store.Enqueue(context.Background(), old, []byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if out := e.ok(t, "queue", "show", old.ID); !strings.Contains(out, "recipient 0 is held past relay.max_age (24h0m0s, ended ") {
		t.Errorf("queue show of a held message past max_age:\n%s", out)
	}
	if out := e.ok(t, "queue", "hold", "-rcpt", "old@slow.test", "-dry-run"); !strings.Contains(out, "0 recipient(s)") {
		t.Errorf("hold of a held recipient:\n%s", out)
	}
	if out := e.ok(t, "queue", "release", "-rcpt", "old@slow.test", "-dry-run"); !strings.Contains(out, "1 listed recipient(s) are past relay.max_age (24h0m0s)") {
		t.Errorf("release -dry-run of a recipient past max_age:\n%s", out)
	}
	// The destination accepts again; only the released message goes.
	e.mx.Refuse(slow, nil)
	out = e.ok(t, "queue", "release", id1)
	if !strings.Contains(out, "1 recipient(s) in 1 message(s) released") {
		t.Errorf("release:\n%s", out)
	}
	e.waitStatus(t, id1, 0, queue.StatusSent)
	m, _ := e.d.Store.Get(id2)
	if r := m.Recipients[0]; r.Status != queue.StatusHeld || r.Attempts != 1 || e.mx.CountID(id2) != 0 {
		t.Errorf("the held message: %s after %d attempts, %d delivered", r.Status, r.Attempts, e.mx.CountID(id2))
	}
	out = e.ok(t, "queue", "delete", "-status", "held", "-ref", "bulk-2")
	if !strings.Contains(out, "1 recipient(s) in 1 message(s) deleted") {
		t.Errorf("delete by filter:\n%s", out)
	}
	if _, err := e.d.Store.Get(id2); err == nil {
		t.Errorf("%s still there after delete", id2)
	}
	if code, _, errs := e.hermod(t, "queue", "hold"); code != 2 || !strings.Contains(errs, "usage: hermod queue hold") {
		t.Errorf("hold with nothing: exit %d, %q; want a usage error", code, errs)
	}
	e.refused(t, "never changes a recipient that is sent", "queue", "hold", "-status", "sent")
	e.refused(t, `older_than: queue: bad filter: age "soon"`, "queue", "retry", "-older-than", "soon")
}

func TestIsBulk(t *testing.T) {
	for line, want := range map[string]bool{
		"hold ID": true, "release -ref r": true, "retry ID": false, "retry ID -config f": false,
		"delete -config f ID": false, "delete --config=f ID": false, "retry ID1 ID2": true, "retry -domain d": true,
		"delete ID -dry-run": true, "delete": true, "retry -status=deferred": true, "ls": false, "show ID": false,
	} {
		if got := isBulk(strings.Fields(line)); got != want {
			t.Errorf("isBulk(%q) = %v, want %v", line, got, want)
		}
	}
}
