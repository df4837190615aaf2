package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// cliEnv is a running in-process daemon and the configuration file that
// both it and the CLI read.
type cliEnv struct {
	d    *daemon.Daemon
	conf string
	mx   *testnet.Sink
}

func cliConfig(dataDir, apiAddr, mxAddr, hash string) string {
	return fmt.Sprintf(`hostname = "hermod.test"
data_dir = %q
shutdown_timeout = "5s"
[submission]
listen = "127.0.0.1:0"
[[submission.users]]
name = "app"
password_hash = %q
accounts = ["*"]
[bounce]
listen = "127.0.0.1:0"
domain = "m.makeleaps.test"
[sender]
default_from = "bounce@makeleaps.test"
dkim_domain = "makeleaps.test"
dkim_algorithm = "ed25519"
[relay]
resolvers = ["127.0.0.1:1"]
retry = ["1h"]
max_age = "24h"
[[relay.route]]
domain = "*"
host = %q
[api]
listen = %q
`, dataDir, hash, mxAddr, apiAddr)
}

// cliHash is the bcrypt hash of the submission password "pw".
var cliHash = sync.OnceValue(func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	return string(h)
})

func startCLIDaemon(t *testing.T) *cliEnv {
	t.Helper()
	dir := t.TempDir()
	mx := testnet.NewSink(t)
	conf := filepath.Join(dir, "hermod.toml")
	if err := os.WriteFile(conf, []byte(cliConfig(filepath.Join(dir, "data"), testnet.FreeAddr(t), mx.Addr(), cliHash())), 0o600); err != nil {
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

// hermod runs the CLI with -config pointing at the daemon's file.
func (e *cliEnv) hermod(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLI(t, "", append(args, "-config", e.conf)...)
}

func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// ok runs the CLI and fails the test unless it exits 0; it returns stdout.
func (e *cliEnv) ok(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := e.hermod(t, args...)
	if code != 0 {
		t.Fatalf("hermod %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// refused runs the CLI and expects exit 1 with a message on stderr containing want.
func (e *cliEnv) refused(t *testing.T, want string, args ...string) {
	t.Helper()
	code, out, errs := e.hermod(t, args...)
	if code != 1 || !strings.Contains(errs, want) || !strings.HasPrefix(errs, "hermod: ") {
		t.Errorf("hermod %s: exit %d, stderr %q (stdout %q); want exit 1 and %q on stderr", strings.Join(args, " "), code, errs, out, want)
	}
}

var reCLIQueued = regexp.MustCompile(`^250 2\.0\.0 OK: queued as ([0-9a-v]{16})`)

// submit sends one message over SMTP with AUTH PLAIN and returns its id.
func (e *cliEnv) submit(t *testing.T, ref string, rcpts ...string) string {
	t.Helper()
	c, err := net.Dial("tcp", e.d.Addr("submission.listen"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	read := func() string {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("read SMTP reply: %v", err)
			}
			l = strings.TrimRight(l, "\r\n")
			if len(l) < 4 || l[3] != '-' {
				return l
			}
		}
	}
	cmd := func(line, want string) string {
		t.Helper()
		if line != "" {
			io.WriteString(c, line)
		}
		got := read()
		if !strings.HasPrefix(got, want) {
			t.Fatalf("SMTP %q: reply %q, want %s", line, got, want)
		}
		return got
	}
	cmd("", "220")
	cmd("EHLO client.test\r\n", "250")
	cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00app\x00pw"))+"\r\n", "235")
	cmd("MAIL FROM:<app@saas.test>\r\n", "250")
	for _, rc := range rcpts {
		cmd("RCPT TO:<"+rc+">\r\n", "250")
	}
	cmd("DATA\r\n", "354")
	last := cmd("From: \"Taro Seikyu\" <taro@customer.test>\r\nSubject: invoice\r\nX-Hermod-Ref: "+ref+"\r\n\r\nbody\r\n.\r\n", "250")
	cmd("QUIT\r\n", "221")
	m := reCLIQueued.FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("DATA reply %q has no queue id", last)
	}
	return m[1]
}

// waitStatus polls the store (bounded) until recipient idx of id has status want.
func (e *cliEnv) waitStatus(t *testing.T, id string, idx int, want queue.Status) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := e.d.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Recipients[idx].Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%d is %s, want %s", id, idx, m.Recipients[idx].Status, want)
		}
		select {
		case <-e.d.Store.EventsChanged():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestCLIConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte(cliConfig(filepath.Join(dir, "data"), "127.0.0.1:8025", "127.0.0.1:25", cliHash())), 0o600)
	code, out, errs := runCLI(t, "", "config", "check", "-config", good)
	if code != 0 || !strings.Contains(out, good+": OK") {
		t.Errorf("config check of a good file: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	typo := filepath.Join(dir, "typo.toml")
	os.WriteFile(typo, []byte(strings.Replace(cliConfig(filepath.Join(dir, "data"), "127.0.0.1:8025", "127.0.0.1:25", cliHash()),
		"max_age = ", "max_agee = ", 1)), 0o600)
	code, out, errs = runCLI(t, "", "config", "check", "-config", typo)
	if code != 2 || !strings.Contains(errs, "relay.max_agee") || strings.Contains(out, "OK") {
		t.Errorf("config check of a file with a typo: exit %d, stdout %q, stderr %q; want exit 2 naming relay.max_agee", code, out, errs)
	}
	code, _, errs = runCLI(t, "", "config", "check", "-config", filepath.Join(dir, "missing.toml"))
	if code != 2 || !strings.Contains(errs, "missing.toml") {
		t.Errorf("config check of a missing file: exit %d, stderr %q", code, errs)
	}
}

func TestCLIPasswd(t *testing.T) {
	// -cost 4 keeps the race-enabled test fast; the default (12) costs seconds.
	code, out, errs := runCLI(t, "correct horse battery\n", "passwd", "-cost", "4")
	hash := strings.TrimSpace(out)
	if code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("passwd: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if c, err := bcrypt.Cost([]byte(hash)); err != nil || c != 4 {
		t.Errorf("hash %q: cost %d %v, want 4", hash, c, err)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse battery")); err != nil {
		t.Errorf("printed hash %q does not verify: %v", hash, err)
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse battery\n")) == nil {
		t.Error("the newline was hashed as part of the password")
	}
	if code, _, _ := runCLI(t, "\n", "passwd", "-cost", "4"); code != 2 {
		t.Errorf("passwd with an empty password: exit %d, want 2", code)
	}
}

func TestCLIBounceParse(t *testing.T) {
	file := filepath.Join("..", "..", "bounce", "testdata", "01-postfix-user-unknown.eml")
	code, out, errs := runCLI(t, "", "bounce", "parse", file)
	if code != 0 {
		t.Fatalf("bounce parse: exit %d, stderr %q", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 {
		t.Fatalf("bounce parse printed %d lines, want 1:\n%s", len(lines), out)
	}
	var l struct {
		File, Recipient, Reason, Status, Kind string
		Hard                                  bool
	}
	if err := json.Unmarshal([]byte(lines[0]), &l); err != nil {
		t.Fatalf("line is not JSON: %s", lines[0])
	}
	if l.File != file || l.Recipient != "taro.yamada@example.com" || l.Reason != "user-unknown" || !l.Hard || l.Status != "5.1.1" || l.Kind != "bounce" {
		t.Errorf("bounce parse: %s", lines[0])
	}
	code, _, errs = runCLI(t, "", "bounce", "parse", filepath.Join(t.TempDir(), "nope.eml"))
	if code != 1 || !strings.Contains(errs, "nope.eml") {
		t.Errorf("bounce parse of a missing file: exit %d, stderr %q", code, errs)
	}
}

// TestCLIBounceParseKinds: complaints, auto-replies and success DSNs carry
// the reasons feedback (with its type), vacation and delivered; every
// complaint recipient and the replying address of an auto-reply are
// printed, never a placeholder such as "Undisclosed".
func TestCLIBounceParseKinds(t *testing.T) {
	dir := filepath.Join("..", "..", "bounce", "testdata", "corpus")
	code, out, errs := runCLI(t, "", "bounce", "parse",
		filepath.Join(dir, "048-arf-two-rcpt-to.eml"), filepath.Join(dir, "052-autoreply-undisclosed.eml"),
		filepath.Join(dir, "021-postfix-delivered.eml"), filepath.Join(dir, "050-arf-undisclosed.eml"),
		filepath.Join(dir, "051-microsoft-jmrp.eml"))
	if code != 0 {
		t.Fatalf("bounce parse: exit %d, stderr %q", code, errs)
	}
	type line struct {
		File, Recipient, Reason, Kind, Action string
		FeedbackType                          string `json:"feedback_type"`
	}
	var got []line
	for _, s := range strings.Split(strings.TrimSpace(out), "\n") {
		var l line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("line is not JSON: %s", s)
		}
		l.File = filepath.Base(l.File)
		got = append(got, l)
	}
	want := []line{
		{"048-arf-two-rcpt-to.eml", "kai.oishi@isp.example", "feedback", "feedback", "complaint", "abuse"},
		{"048-arf-two-rcpt-to.eml", "rui.oishi@isp.example", "feedback", "feedback", "complaint", "abuse"},
		{"052-autoreply-undisclosed.eml", "ryo.koike@example.com", "vacation", "autoreply", "ignore", ""},
		{"021-postfix-delivered.eml", "ema.kondo@example.com", "delivered", "delivered", "note", ""},
		{"050-arf-undisclosed.eml", "", "feedback", "feedback", "complaint", "abuse"},
		{"051-microsoft-jmrp.eml", "akari.hino@outlook.example", "feedback", "feedback", "complaint", "abuse"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i+1, got[i], want[i])
		}
	}
}

func TestCLIUsage(t *testing.T) {
	code, out, errs := runCLI(t, "", "frobnicate")
	if code != 2 || !strings.Contains(errs, `unknown command "frobnicate"`) || out != "" {
		t.Errorf("unknown command: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for _, args := range [][]string{{"queue"}, {"domain"}, {"suppress"}, {"account"}, {"config"}, {"dkim"}, {"bounce", "parse"}} {
		if code, _, errs := runCLI(t, "", args...); code != 2 || !strings.Contains(errs, "usage") {
			t.Errorf("hermod %s: exit %d, stderr %q; want 2 with the usage", strings.Join(args, " "), code, errs)
		}
	}
	if code, out, _ := runCLI(t, "", "help"); code != 0 || !strings.Contains(out, "hermod queue ls") {
		t.Errorf("help: exit %d, stdout %q", code, out)
	}
}

// TestCLIUnknownSubcommandFirst: a mistyped subcommand is a usage error
// (exit 2) whether or not the daemon's token can be read; it must not be
// reported as a missing token or an unreachable daemon.
func TestCLIUnknownSubcommandFirst(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "hermod.toml")
	os.WriteFile(conf, []byte(cliConfig(filepath.Join(dir, "data"), testnet.FreeAddr(t), "127.0.0.1:25", cliHash())), 0o600)
	for _, args := range [][]string{{"queue", "lss"}, {"domain", "add-it", "acme", "acme.example"}, {"suppress", "list"}} {
		code, _, errs := runCLI(t, "", append(args, "-config", conf)...)
		if code != 2 || !strings.Contains(errs, "unknown") {
			t.Errorf("hermod %s (no daemon): exit %d, stderr %q; want exit 2 naming the unknown command", strings.Join(args, " "), code, errs)
		}
	}
}

func TestCLIUnreachableDaemon(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	api := testnet.FreeAddr(t) // nothing listens there
	conf := filepath.Join(dir, "hermod.toml")
	os.WriteFile(conf, []byte(cliConfig(data, api, "127.0.0.1:25", cliHash())), 0o600)

	// No token yet: the daemon never ran with this data_dir.
	code, _, errs := runCLI(t, "", "queue", "ls", "-config", conf)
	if code != 1 || !strings.Contains(errs, "api.token_file") {
		t.Errorf("no token file: exit %d, stderr %q", code, errs)
	}
	os.WriteFile(filepath.Join(data, "api.token"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	code, out, errs := runCLI(t, "", "status", "0123456789abcdef", "-config", conf)
	if code != 1 || !strings.Contains(errs, "cannot reach hermod at http://"+api) || !strings.Contains(errs, "hermod serve") || out != "" {
		t.Errorf("daemon down: exit %d, stdout %q, stderr %q; want exit 1 saying it cannot reach hermod at %s", code, out, errs, api)
	}
}

func TestCLIAgainstDaemon(t *testing.T) {
	e := startCLIDaemon(t)

	later := "later@dest.test"
	e.mx.Refuse(later, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "greylisted, come back later"})

	sent := e.submit(t, "inv-1", "hanako@dest.test")
	e.waitStatus(t, sent, 0, queue.StatusSent)
	deferred := e.submit(t, "inv-2", later)
	e.waitStatus(t, deferred, 0, queue.StatusDeferred)

	t.Run("queue ls", func(t *testing.T) {
		out := e.ok(t, "queue", "ls")
		sentLine, deferredLine := lineWith(out, sent), lineWith(out, deferred)
		if !strings.Contains(sentLine, "hanako@dest.test") || !strings.Contains(sentLine, " sent ") {
			t.Errorf("queue ls: line of %s is %q\n%s", sent, sentLine, out)
		}
		if !strings.Contains(deferredLine, later) || !strings.Contains(deferredLine, " deferred ") || !strings.Contains(deferredLine, "greylisted") {
			t.Errorf("queue ls: line of %s is %q\n%s", deferred, deferredLine, out)
		}
		if strings.Index(out, deferred) > strings.Index(out, sent) {
			t.Errorf("queue ls is not newest first:\n%s", out)
		}
		if !strings.Contains(out, "-- queued 0, deferred 1, held 0, sent 1, bounced 0, suppressed 0 recipients") {
			t.Errorf("queue ls counts:\n%s", out)
		}
		out = e.ok(t, "queue", "ls", "-status", "deferred")
		if !strings.Contains(out, deferred) || strings.Contains(out, sent) {
			t.Errorf("queue ls -status deferred:\n%s", out)
		}
		out = e.ok(t, "queue", "ls", "-limit", "1")
		if !strings.Contains(out, deferred) || strings.Contains(out, sent) || !strings.Contains(out, "-- more: hermod queue ls -before "+deferred) {
			t.Errorf("queue ls -limit 1:\n%s", out)
		}
		out = e.ok(t, "queue", "ls", "-before", deferred)
		if !strings.Contains(out, sent) || strings.Contains(out, deferred) {
			t.Errorf("queue ls -before:\n%s", out)
		}
		if code, _, errs := e.hermod(t, "queue", "ls", "-status", "pending"); code != 1 || !strings.Contains(errs, "status must be one of") {
			t.Errorf("queue ls -status pending: exit %d, stderr %q", code, errs)
		}
	})

	t.Run("queue show and status", func(t *testing.T) {
		for _, cmd := range [][]string{{"queue", "show", sent}, {"status", sent}} {
			out := e.ok(t, cmd...)
			for _, want := range []string{"message " + sent, "ref        inv-1", "recipient 0 <hanako@dest.test>: sent", "送信済み / Sent"} {
				if !strings.Contains(out, want) {
					t.Errorf("hermod %s lacks %q:\n%s", strings.Join(cmd, " "), want, out)
				}
			}
		}
		out := e.ok(t, "status", deferred)
		for _, want := range []string{"recipient 0 <" + later + ">: deferred", "送信結果待ち / Waiting for the result", "greylisted, come back later", "next attempt"} {
			if !strings.Contains(out, want) {
				t.Errorf("hermod status %s lacks %q:\n%s", deferred, want, out)
			}
		}
		// show has the events, status does not.
		if show := e.ok(t, "queue", "show", sent); !strings.Contains(show, "status=queued") || !strings.Contains(show, "status=sent") {
			t.Errorf("queue show has no events:\n%s", show)
		}
		if strings.Contains(e.ok(t, "status", sent), "status=queued") {
			t.Error("status prints the events")
		}
		e.refused(t, "no such message", "status", "0123456789abcdef")
		e.refused(t, "16 characters", "queue", "show", "nope")
		if code, _, _ := e.hermod(t, "status"); code != 2 {
			t.Errorf("status without an id: exit %d, want 2", code)
		}
	})

	t.Run("queue tail", func(t *testing.T) {
		out := e.ok(t, "queue", "tail", "-n", "100")
		var mine []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, sent+": to=<hanako@dest.test>") {
				mine = append(mine, l)
			}
		}
		if len(mine) != 2 || !strings.Contains(mine[0], "status=queued") || !strings.Contains(mine[1], "status=sent") || !strings.Contains(mine[1], "ref=inv-1") {
			t.Errorf("queue tail lines of %s: %q, want status=queued then status=sent\n%s", sent, mine, out)
		}
		out = e.ok(t, "queue", "tail", "-n", "1")
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], deferred) {
			t.Errorf("queue tail -n 1: %q, want the one newest event", out)
		}
	})

	t.Run("queue retry and delete", func(t *testing.T) {
		m, _ := e.d.Store.Get(deferred)
		attempts := m.Recipients[0].Attempts
		out := e.ok(t, "queue", "retry", deferred)
		if !strings.Contains(out, deferred+": 1 recipient(s) due now") {
			t.Errorf("queue retry: %q", out)
		}
		// The retry happens now, not in an hour.
		deadline := time.Now().Add(15 * time.Second)
		for {
			m, _ := e.d.Store.Get(deferred)
			if m.Recipients[0].Attempts > attempts {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue retry: no new attempt (still %d)", attempts)
			}
			select {
			case <-e.d.Store.EventsChanged():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if out := e.ok(t, "queue", "retry", sent); !strings.Contains(out, "0 recipient(s)") {
			t.Errorf("queue retry of a sent message: %q", out)
		}
		out = e.ok(t, "queue", "delete", deferred)
		if !strings.Contains(out, deferred+": deleted") {
			t.Errorf("queue delete: %q", out)
		}
		e.refused(t, "no such message", "queue", "show", deferred)
		e.refused(t, "no such message", "queue", "delete", deferred)
		if out := e.ok(t, "queue", "ls"); strings.Contains(out, deferred) {
			t.Errorf("deleted message still listed:\n%s", out)
		}
	})

	t.Run("accounts and domains", func(t *testing.T) {
		out := e.ok(t, "account", "set", "plain", "--owner", "owner@plain.example")
		if !strings.Contains(out, "account plain") || !strings.Contains(out, "custom domain  false") {
			t.Errorf("account set: %q", out)
		}
		e.refused(t, "custom mail domain option", "domain", "add", "plain", "plain.example")
		e.refused(t, "invalid owner address", "account", "set", "bad", "--owner", "Taro <taro@bad.example>")
		e.refused(t, "not found", "domain", "add", "nobody", "nobody.example")

		out = e.ok(t, "account", "set", "acme", "--owner", "owner@acme.example", "--custom-domain=true")
		if !strings.Contains(out, "custom domain  true") {
			t.Errorf("account set: %q", out)
		}
		if out := e.ok(t, "account", "show", "acme"); !strings.Contains(out, "owner          owner@acme.example") {
			t.Errorf("account show: %q", out)
		}
		out = e.ok(t, "domain", "add", "acme", "acme.example")
		stored, err := e.d.Domains.Domain("acme", "acme.example")
		if err != nil {
			t.Fatalf("domain add printed\n%s\nbut the daemon has no domain: %v", out, err)
		}
		// Whatever the layout (a table row or a name/type/value block), the
		// user must find both records with their exact name, type and value.
		for _, want := range []string{stored.Selector + "._domainkey.acme.example", "TXT", dkim.ZoneText(stored.PublicTXT), "v=DKIM1",
			"hermod-bounce.acme.example", "CNAME", "m.makeleaps.test", "both are required", "pending"} {
			if !strings.Contains(out, want) {
				t.Errorf("domain add output lacks %q:\n%s", want, out)
			}
		}
		if i, j := strings.Index(out, "._domainkey."), strings.Index(out, "CNAME"); i < 0 || j < i {
			t.Errorf("domain add: the TXT record should come before the CNAME:\n%s", out)
		}
		e.refused(t, "already registered", "domain", "add", "acme", "ACME.example")
		e.refused(t, "public mailbox provider", "domain", "add", "acme", "gmail.com")
		e.refused(t, "public suffix", "domain", "add", "acme", "co.jp")
		e.refused(t, "not a domain", "domain", "add", "acme", "taro@acme.example")

		if l := lineWith(e.ok(t, "domain", "ls", "acme"), "acme.example"); !strings.Contains(l, "pending") {
			t.Errorf("domain ls: line %q", l)
		}
		if show := e.ok(t, "domain", "show", "acme", "acme.example"); !strings.Contains(show, dkim.ZoneText(stored.PublicTXT)) || !strings.Contains(show, "hermod-bounce.acme.example") {
			t.Errorf("domain show lacks the records:\n%s", show)
		}
		out = e.ok(t, "domain", "rm", "acme", "acme.example")
		if !strings.Contains(out, "acme.example: removed") {
			t.Errorf("domain rm: %q", out)
		}
		if out := e.ok(t, "domain", "ls", "acme"); strings.Contains(out, "acme.example") {
			t.Errorf("domain ls after rm:\n%s", out)
		}
		e.refused(t, "not found", "domain", "rm", "acme", "acme.example")
	})

	// Changing the owner address must not switch off the paid custom-domain
	// option (and with it every verified domain of the account).
	t.Run("account set keeps the option", func(t *testing.T) {
		e.ok(t, "account", "set", "keep", "--owner", "old@keep.example", "--custom-domain=true")
		out := e.ok(t, "account", "set", "keep", "--owner", "new@keep.example")
		if !strings.Contains(out, "owner          new@keep.example") || !strings.Contains(out, "custom domain  true") {
			t.Errorf("account set --owner without --custom-domain:\n%s\nwant the new owner and the option still on", out)
		}
	})

	t.Run("suppressions", func(t *testing.T) {
		out := e.ok(t, "suppress", "add", "Gone@Dest.test", "-reason", "user-unknown", "-detail", "checked by support")
		if !strings.Contains(out, "Gone@dest.test: suppressed (user-unknown, source api") || !strings.Contains(out, "checked by support") {
			t.Errorf("suppress add: %q", out)
		}
		if out := e.ok(t, "suppress", "show", "Gone@DEST.TEST"); !strings.HasPrefix(out, "Gone@dest.test: suppressed (user-unknown") {
			t.Errorf("suppress show: %q", out)
		}
		// The local part is exact (RFC 5321 2.4): another mailbox is not suppressed.
		e.refused(t, "not suppressed", "suppress", "show", "gone@dest.test")
		if l := lineWith(e.ok(t, "suppress", "ls"), "dest.test"); !strings.Contains(l, "user-unknown") || !strings.Contains(l, "api") {
			t.Errorf("suppress ls line %q", l)
		}
		out = e.ok(t, "suppress", "rm", "Gone@dest.test")
		if !strings.Contains(out, "removed from the suppression list") {
			t.Errorf("suppress rm: %q", out)
		}
		e.refused(t, "not suppressed", "suppress", "show", "Gone@dest.test")
		e.refused(t, "not suppressed", "suppress", "rm", "Gone@dest.test")
		if out := e.ok(t, "suppress", "ls"); strings.Contains(out, "dest.test") {
			t.Errorf("suppress ls after rm:\n%s", out)
		}
	})

	t.Run("dkim show", func(t *testing.T) {
		out := e.ok(t, "dkim", "show")
		want, err := dkim.TXTRecord(e.d.PlatformSigner.Key.Public())
		if err != nil {
			t.Fatal(err)
		}
		// An Ed25519 record fits in one string.
		if out != "hermod._domainkey.makeleaps.test.\tTXT\t\""+want+"\"\n" || !strings.Contains(out, "v=DKIM1") {
			t.Errorf("dkim show: %q, want the platform key %q", out, want)
		}
	})

	t.Run("unknown subcommands", func(t *testing.T) {
		for _, args := range [][]string{{"queue", "frob"}, {"domain", "frob", "acme", "x.example"}, {"suppress", "frob", "a@b.test"}} {
			if code, _, errs := e.hermod(t, args...); code != 2 || errs == "" {
				t.Errorf("hermod %s: exit %d, stderr %q; want 2", strings.Join(args, " "), code, errs)
			}
		}
	})
}

// lineWith returns the first line of out containing s ("" if none).
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
