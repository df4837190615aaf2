package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestNewRefusesWithoutPanic: a damaged key file, a damaged store and a
// second hermod on the same data_dir each end New with an error that names
// the problem (v0: a nil-pointer panic in New's cleanup).
func TestNewRefusesWithoutPanic(t *testing.T) {
	sink := testnet.NewSink(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	t.Run("damaged DKIM key", func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir, sink.Addr())
		if err := os.WriteFile(cfg.DataPath(cfg.Sender.DKIMKeyFile), []byte("-----BEGIN PRIVATE KEY-----\ngarbage\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := New(cfg, log, Options{}); err == nil || !strings.Contains(err.Error(), "sender.dkim_key_file") {
			t.Fatalf("New with a damaged key: %v", err)
		}
	})
	t.Run("damaged store", func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir, sink.Addr())
		if err := os.WriteFile(filepath.Join(dir, StoreFile), []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := New(cfg, log, Options{}); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Fatalf("New with a damaged store: %v", err)
		}
	})
	t.Run("second hermod", func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir, sink.Addr())
		startDaemon(t, cfg)
		if _, err := New(cfg, log, Options{}); err == nil || !strings.Contains(err.Error(), "is in use by hermod pid") {
			t.Fatalf("second New on the same data_dir: %v", err)
		}
	})
}
