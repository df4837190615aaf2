package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestSubmitPlantedIdentity: a client's Sender, Resent-*, DKIM-Signature
// and Authentication-Results do not survive the rewrite to the platform
// identity; the one signature left is hermod's and it verifies. A From
// whose quoted local part holds "@" is refused with 550 5.6.0.
func TestSubmitPlantedIdentity(t *testing.T) {
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, t.TempDir(), sink.Addr()))
	addr := d.Addr("submission.listen")

	msg := "DKIM-Signature: v=1; a=rsa-sha256; d=bank.test; s=s1; h=From:Sender; bh=x; b=y\r\n" +
		"Authentication-Results: mx.dest.test; dkim=pass header.d=bank.test\r\n" +
		"From: Taro <taro@customer.test>\r\n" +
		"Sender: Bank Security <security@bank.test>\r\n" +
		"Resent-From: security@bank.test\r\n" +
		"To: hanako@dest.test\r\nSubject: planted\r\n\r\nbody\r\n"
	replies := submitRaw(t, addr, append(dataLines(msg), "QUIT\r\n")...)
	if got := replies[len(replies)-2]; !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("DATA reply %q", got)
	}
	m, err := sink.Wait("r@dest.test", 15*time.Second) // dataLines sends to r@dest.test
	if err != nil {
		t.Fatal(err)
	}
	header, _, _ := strings.Cut(string(m.Data), "\r\n\r\n")
	for _, bad := range []string{"bank.test", "\nSender:", "\nResent-", "Authentication-Results"} {
		if strings.Contains("\n"+header, bad) {
			t.Errorf("delivered header still carries %q:\n%s", bad, header)
		}
	}
	if n := strings.Count(strings.ToLower("\n"+header), "\ndkim-signature:"); n != 1 {
		t.Errorf("%d DKIM-Signature fields, want hermod's only:\n%s", n, header)
	}
	txt, _ := dkim.TXTRecord(d.PlatformSigner.Key.Public())
	lookup := func(name string) ([]string, error) {
		if name == "hermod._domainkey.makeleaps.test" {
			return []string{txt}, nil
		}
		return nil, errors.New("no such record " + name)
	}
	res, err := dkim.Verify(bytes.NewReader(m.Data), lookup)
	if err != nil || len(res) != 1 || res[0].Err != nil || res[0].Domain != "makeleaps.test" {
		t.Fatalf("DKIM: %+v %v", res, err)
	}
	// Replayed with a Sender added after signing, it no longer verifies.
	res, err = dkim.Verify(strings.NewReader("Sender: security@bank.test\r\n"+string(m.Data)), lookup)
	if err != nil || len(res) != 1 || res[0].Err == nil {
		t.Errorf("a Sender added after signing still verifies: %+v %v", res, err)
	}

	replies = submitRaw(t, addr, append(dataLines("From: \"victim@bank.test\"@customer.test\r\nTo: hanako@dest.test\r\n\r\nbody\r\n"), "QUIT\r\n")...)
	if got := replies[len(replies)-2]; !strings.HasPrefix(got, "550 5.6.0 ") || !strings.Contains(got, `"@"`) {
		t.Errorf("quoted-@ From: reply %q, want 550 5.6.0 naming the \"@\"", got)
	}
}

// TestPlatformDomainsRefused: the daemon gives the domain store the
// platform's domains.
func TestPlatformDomainsRefused(t *testing.T) {
	d := startDaemon(t, testConfig(t, t.TempDir(), "127.0.0.1:1"))
	if _, err := d.Domains.PutAccount(domain.Account{ID: "acme", Owner: "owner@acme.test", CustomDomain: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"makeleaps.test", "m.makeleaps.test", "x.makeleaps.test"} {
		if _, err := d.Domains.AddDomain("acme", name); !errors.Is(err, domain.ErrPlatformDomain) {
			t.Errorf("AddDomain(%s) = %v, want %s", name, err, domain.CodePlatformDomain)
		}
	}
}

// newDaemon is New with a discarding logger; the caller shuts it down.
func newDaemon(cfg *config.Config) (*Daemon, error) {
	return New(cfg, slog.New(slog.DiscardHandler), Options{})
}

// TestRefusesUnsafePermissions: a world-writable data_dir and a planted,
// world-readable token are refused before anything is opened, naming the
// path, its mode and the fix; once fixed, hermod starts.
func TestRefusesUnsafePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cfg := testConfig(t, dir, "127.0.0.1:1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	token := cfg.DataPath(cfg.API.TokenFile)
	if err := os.WriteFile(token, []byte("planted-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(token, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := newDaemon(cfg)
	if err == nil {
		t.Fatal("New accepted a world-writable data_dir and a world-readable token")
	}
	for _, want := range []string{"data_dir " + dir, "mode 0777", "chmod 700 " + dir, "api.token_file " + token, "mode 0644", "chmod 600 " + token} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if _, serr := os.Stat(filepath.Join(dir, StoreFile)); serr == nil {
		t.Errorf("the store was created before the refusal")
	}

	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := newDaemon(cfg); err == nil || !strings.Contains(err.Error(), token) || strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("with only the token unsafe: %v", err)
	}
	if err := os.Chmod(token, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := newDaemon(cfg)
	if err != nil {
		t.Fatalf("New with safe permissions: %v", err)
	}
	d.Shutdown(context.Background())
}

// TestExampleConfigStarts: the README's quick start (hermod serve on
// config.example.toml, data in a new directory) starts, and starts again
// on the files it created itself, with a umask that leaves group and
// others read access.
func TestExampleConfigStarts(t *testing.T) {
	cfg, err := config.Load("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(t.TempDir(), "hermod-data")
	// Kernel-chosen ports: the example's fixed ones may be in use.
	cfg.Submission.Listen, cfg.Bounce.Listen, cfg.API.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	for i := range 2 {
		d, err := newDaemon(cfg)
		if err != nil {
			t.Fatalf("start %d: New: %v", i+1, err)
		}
		if err := d.Start(); err != nil {
			d.Shutdown(context.Background())
			t.Fatalf("start %d: Start: %v", i+1, err)
		}
		d.Shutdown(context.Background())
	}
	for _, f := range []string{cfg.DataPath(cfg.API.TokenFile), cfg.DataPath(cfg.Bounce.VERPSecretFile), cfg.DataPath(cfg.Sender.DKIMKeyFile), filepath.Join(cfg.DataDir, StoreFile)} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi.Mode(), err)
		}
	}
}
