package reliability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestIdentity tries to borrow an identity hermod did not grant: planted
// identity fields in a submission, quoted local parts holding "@", signed
// messages replayed with one more instance of a signed field, registration
// of the platform's domains and of another account's neighbours, and a
// start on a world-writable data_dir with a planted, readable token. None
// may succeed.
func TestIdentity(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr()})
	d := startDaemon(t, cfg, daemonOpts())
	sub := d.Addr("submission.listen")
	txt, _ := dkim.TXTRecord(d.PlatformSigner.Key.Public())
	lookup := func(name string) ([]string, error) {
		if name == "hermod._domainkey.makeleaps.test" {
			return []string{txt}, nil
		}
		return nil, errors.New("no record " + name)
	}
	verifies := func(msg []byte) bool {
		res, err := dkim.Verify(bytes.NewReader(msg), lookup)
		return err == nil && len(res) == 1 && res[0].Err == nil
	}

	// 1. Planted identity fields, rewritten to the platform identity.
	planted := []string{
		"Sender: Bank <security@bank.test>",
		"Resent-From: security@bank.test",
		"Resent-Sender: security@bank.test",
		"DKIM-Signature: v=1; a=rsa-sha256; d=bank.test; s=s1; h=From; bh=x; b=y",
		"ARC-Seal: i=1; a=rsa-sha256; d=bank.test; s=s1; cv=none; b=y",
		"Authentication-Results: mx.dest.test; dkim=pass header.d=bank.test",
		"Return-Path: <security@bank.test>",
	}
	carried := 0
	var delivered []byte
	for i, f := range planted {
		rcpt := fmt.Sprintf("planted%d@dest.test", i)
		cl := mustDial(t, sub)
		cl.login(t)
		id, r := cl.send("app@saas.test", []string{rcpt}, f+"\r\nFrom: Taro <taro@customer.test>\r\nTo: "+rcpt+"\r\nSubject: planted\r\n\r\nbody\r\n")
		cl.close()
		if id == "" {
			t.Errorf("%s: submission refused: %q", f, r)
			continue
		}
		m, err := sink.Wait(rcpt, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		header, _, _ := strings.Cut(string(m.Data), "\r\n\r\n")
		if strings.Contains(header, "bank.test") || !verifies(m.Data) {
			carried++
			t.Errorf("%s: delivered header carries it or does not verify:\n%s", f, header)
		}
		delivered = m.Data
	}

	// 2. Quoted local parts holding "@".
	quoted := []string{`"victim@bank.test"@customer.test`, `Taro <"victim@bank.test"@customer.test>`, `"security@bank.test (via MakeLeaps)"@customer.test`}
	accepted := 0
	for _, from := range quoted {
		cl := mustDial(t, sub)
		cl.login(t)
		id, r := cl.send("app@saas.test", []string{"q@dest.test"}, "From: "+from+"\r\nSubject: q\r\n\r\nbody\r\n")
		cl.close()
		if id != "" || !strings.HasPrefix(r, "550 5.6.0") {
			accepted++
			t.Errorf("From %s: %q, want 550 5.6.0", from, r)
		}
	}

	// 3. Replays of a delivered message with one more signed field.
	replays, replayed := 0, 0
	if delivered != nil {
		for _, name := range dkim.DefaultHeaders() {
			replays++
			v := "injected"
			if name == "Content-Type" {
				v = "text/html"
			}
			if verifies(append([]byte(name+": "+v+"\r\n"), delivered...)) {
				replayed++
				t.Errorf("replay with a prepended %s verifies", name)
			}
		}
	}

	// 4. Registrations of the platform's domains and of neighbours.
	tok, err := daemon.ReadToken(cfg.DataPath(cfg.API.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	var lastCode string // the "code" of the last error answer
	api := func(method, path, body string) int {
		req, _ := http.NewRequest(method, "http://"+d.Addr("api.listen")+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		lastCode = e.Code
		return resp.StatusCode
	}
	for _, acct := range []string{"acme", "other"} {
		if c := api("PUT", "/v1/accounts/"+acct, `{"owner":"owner@`+acct+`.test","custom_domain":true}`); c != 200 {
			t.Fatalf("PUT account %s: %d", acct, c)
		}
	}
	for _, dom := range []string{"corp.test", "mail.shop.test"} {
		if c := api("POST", "/v1/accounts/other/domains", `{"domain":"`+dom+`"}`); c/100 != 2 {
			t.Fatalf("other: add %s: %d", dom, c)
		}
	}
	grabs := map[string]string{ // domain → the refusal's code
		"makeleaps.test": "platform_domain", "m.makeleaps.test": "platform_domain",
		"hermod-bounce.m.makeleaps.test": "platform_domain", "news.makeleaps.test": "platform_domain",
		"sub.corp.test": "subdomain_of_taken", "x.mail.shop.test": "subdomain_of_taken", "shop.test": "parent_of_taken",
	}
	registered := 0
	for dom, code := range grabs {
		if c := api("POST", "/v1/accounts/acme/domains", `{"domain":"`+dom+`"}`); c/100 == 2 {
			registered++
			t.Errorf("acme registered %s (%d)", dom, c)
		} else if lastCode != code {
			t.Errorf("acme: %s refused with %d code %q, want %q", dom, c, lastCode, code)
		}
	}

	// 5. Unsafe data_dir and secret files.
	unsafe, started := 0, 0
	for _, tc := range []struct {
		name          string
		dirMode, file os.FileMode
	}{{"world-writable data_dir", 0o777, 0o600}, {"group-writable data_dir", 0o770, 0o600}, {"world-readable token", 0o700, 0o644}, {"group-readable token", 0o700, 0o640}} {
		unsafe++
		c := testConfig(t, cfgOpts{sink: sink.Addr()})
		c.DataDir = filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(c.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		tokFile := c.DataPath(c.API.TokenFile)
		if err := os.WriteFile(tokFile, []byte("planted-token-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(os.Chmod(c.DataDir, tc.dirMode), os.Chmod(tokFile, tc.file)); err != nil {
			t.Fatal(err)
		}
		dd, err := daemon.New(c, slog.New(slog.DiscardHandler), daemon.Options{})
		if err == nil {
			started++
			t.Errorf("%s: hermod started", tc.name)
			dd.Shutdown(context.Background())
		}
	}

	summary(t, "identity: %d planted identity fields, %d carried through; %d quoted-@ From, %d accepted; %d replays with an added signed field, %d verified; %d registrations of platform or neighbour domains, %d accepted; %d starts on unsafe data_dir/secrets, %d started",
		len(planted), carried, len(quoted), accepted, replays, replayed, len(grabs), registered, unsafe, started)
}
