package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// namedCheckzone finds BIND's named-checkzone as scripts/deps.sh probes it
// (command -v named-checkzone); under scripts/test.sh a missing tool fails
// the test.
func namedCheckzone(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("named-checkzone")
	if err != nil {
		if os.Getenv("HERMOD_REQUIRE_TOOLS") == "1" {
			t.Fatalf("named-checkzone not found (apt-get install bind9-utils): %v", err)
		}
		t.Skipf("named-checkzone not found: %v", err)
	}
	return p
}

// startZoneDaemon is startCLIDaemon with new DKIM keys of algorithm alg.
func startZoneDaemon(t *testing.T, alg string) *cliEnv {
	t.Helper()
	dir := t.TempDir()
	mx := testnet.NewSink(t)
	conf := filepath.Join(dir, "hermod.toml")
	text := strings.Replace(cliConfig(filepath.Join(dir, "data"), testnet.FreeAddr(t), mx.Addr(), cliHash()),
		`dkim_algorithm = "ed25519"`, fmt.Sprintf("dkim_algorithm = %q", alg), 1)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(cfg, slog.New(slog.DiscardHandler), daemon.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		d.Shutdown(context.Background())
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return &cliEnv{d: d, conf: conf, mx: mx}
}

// reTXTDump is a TXT record as named-checkzone -D writes it.
var reTXTDump = regexp.MustCompile(`(?m)^(\S+)\s+\d+\s+IN\s+TXT\s+(.*)$`)

// reQuoted is one character-string of presentation-form TXT data.
var reQuoted = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)

// loadZone writes a zone for origin holding the given record lines, loads
// it with named-checkzone and returns the TXT data of owner as BIND read
// it, its strings joined (as DKIM verifiers join them).
func loadZone(t *testing.T, tool, origin, owner string, lines ...string) string {
	t.Helper()
	zone := fmt.Sprintf("$TTL 3600\n@\tIN\tSOA\tns.%[1]s. hostmaster.%[1]s. 1 3600 600 86400 300\n@\tIN\tNS\tns.%[1]s.\nns\tIN\tA\t192.0.2.1\n", origin) +
		strings.Join(lines, "\n") + "\n"
	file := filepath.Join(t.TempDir(), origin+".zone")
	if err := os.WriteFile(file, []byte(zone), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "-D", "-o", "-", origin, file).CombinedOutput()
	if err != nil {
		t.Fatalf("named-checkzone refused the printed record(s): %v\n%s\nzone:\n%s", err, out, zone)
	}
	var txt []string
	for _, m := range reTXTDump.FindAllStringSubmatch(string(out), -1) {
		if strings.EqualFold(strings.TrimSuffix(m[1], "."), strings.TrimSuffix(owner, ".")) {
			var joined strings.Builder
			for _, q := range reQuoted.FindAllStringSubmatch(m[2], -1) {
				joined.WriteString(q[1])
			}
			txt = append(txt, joined.String())
		}
	}
	if len(txt) != 1 {
		t.Fatalf("zone holds %d TXT records at %s, want 1:\n%s", len(txt), owner, out)
	}
	return txt[0]
}

// printedRecord returns the TXT record of a domain add/show output as a
// zone line made of its "name:" and "value:" lines, and its "zone:" line.
func printedRecord(t *testing.T, out string) (fromValue, zoneLine string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  name:   (\S+)\n  type:   TXT\n  value:  (.*)\n(?:  check: .*\n)?  zone:   (.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no TXT record block (name, type, value, check, zone) in:\n%s", out)
	}
	return m[1] + ".\tTXT\t" + m[2], m[3]
}

// TestPrintedTXTRecordsLoadInBIND loads every TXT record hermod prints
// (dkim show; domain add and domain show; the API's value and zone fields)
// with named-checkzone, for RSA-2048 and Ed25519 keys, and checks BIND read
// the key's record unchanged. An RSA-2048 record is 410 octets: one quoted
// string is a syntax error to BIND.
func TestPrintedTXTRecordsLoadInBIND(t *testing.T) {
	tool := namedCheckzone(t)
	for _, alg := range []string{"rsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			e := startZoneDaemon(t, alg)

			platform, err := dkim.TXTRecord(e.d.PlatformSigner.Key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if alg == "rsa" && len(platform) <= 255 {
				t.Fatalf("RSA record of %d octets: the test would not try splitting", len(platform))
			}
			show := strings.TrimSuffix(e.ok(t, "dkim", "show"), "\n")
			if got := loadZone(t, tool, "makeleaps.test", "hermod._domainkey.makeleaps.test", show); got != platform {
				t.Errorf("dkim show: BIND loaded %q, want %q", got, platform)
			}

			e.ok(t, "account", "set", "acme", "--owner", "owner@acme.example", "--custom-domain=true")
			added := e.ok(t, "domain", "add", "acme", "acme.example")
			stored, err := e.d.Domains.Domain("acme", "acme.example")
			if err != nil {
				t.Fatal(err)
			}
			owner := stored.Selector + "._domainkey.acme.example"
			for name, out := range map[string]string{"domain add": added, "domain show": e.ok(t, "domain", "show", "acme", "acme.example")} {
				fromValue, zoneLine := printedRecord(t, out)
				for what, line := range map[string]string{"name and value": fromValue, "zone line": zoneLine} {
					if got := loadZone(t, tool, "acme.example", owner, line); got != stored.PublicTXT {
						t.Errorf("%s, %s: BIND loaded %q, want %q", name, what, got, stored.PublicTXT)
					}
				}
			}

			tok, err := daemon.ReadToken(filepath.Join(filepath.Dir(e.conf), "data", "api.token"))
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "http://"+e.d.Addr("api.listen")+"/v1/accounts/acme/domains/acme.example", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var view struct {
				Records []struct{ Name, Type, Value, Zone string }
			}
			if err := json.NewDecoder(resp.Body).Decode(&view); err != nil || resp.StatusCode != 200 {
				t.Fatalf("GET domain: %d %v", resp.StatusCode, err)
			}
			var lines []string
			for _, r := range view.Records {
				if r.Type == "TXT" {
					lines = append(lines, r.Name+".\tTXT\t"+r.Value)
					if got := loadZone(t, tool, "acme.example", owner, r.Zone); got != stored.PublicTXT {
						t.Errorf("API zone field: BIND loaded %q, want %q", got, stored.PublicTXT)
					}
				} else {
					lines = append(lines, r.Zone)
				}
			}
			if got := loadZone(t, tool, "acme.example", owner, lines...); got != stored.PublicTXT {
				t.Errorf("API value fields: BIND loaded %q, want %q", got, stored.PublicTXT)
			}
		})
	}
}
