package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/queue"
)

// TestCLIStoreCheck: `hermod store check` refuses while hermod runs, reports
// a sound store as ok with its figures, and names a damaged body file with
// exit 1.
func TestCLIStoreCheck(t *testing.T) {
	e := startCLIDaemon(t)
	id := e.submit(t, "check-1", "a@dest.test", "b@dest.test")
	e.waitStatus(t, id, 0, queue.StatusSent)
	e.refused(t, "is in use by hermod pid", "store", "check")

	cfg, err := config.Load(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := e.ok(t, "store", "check")
	if !strings.Contains(out, "1 messages, 2 recipients") || !strings.HasSuffix(out, "ok\n") {
		t.Errorf("store check on a sound store:\n%s", out)
	}

	// A large message in a file, then its file is cut short.
	d, err := daemon.New(cfg, slog.New(slog.DiscardHandler), daemon.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := &queue.Message{ID: queue.NewID(time.Now()), MailFrom: "app@example.test",
		Recipients: []*queue.Recipient{{Address: "c@dest.test", EnvelopeFrom: "bounce-md_x@bounce.test", Status: queue.StatusSuppressed}}}
	if err := d.Store.Enqueue(context.Background(), m, []byte("Subject: big\r\n\r\n"+strings.Repeat("x", 2<<20)+"\r\n")); err != nil {
		t.Fatal(err)
	}
	d.Shutdown(context.Background())
	if err := os.Truncate(filepath.Join(cfg.DataDir, "bodies", m.ID), 1000); err != nil {
		t.Fatal(err)
	}
	code, out, _ := e.hermod(t, "store", "check")
	if code != 1 || !strings.Contains(out, "problem:") || !strings.Contains(out, m.ID) || !strings.Contains(out, "has 1000 bytes") {
		t.Errorf("store check with a cut body file: exit %d\n%s", code, out)
	}
}
