package config

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
)

const testHash = "$2a$10$k65Al3nfiAL87KzZgrkWF.sghvPAq2oL9KQaFz3PuDE00d8Y4R1xC" // "change-me"

// minimal is the smallest valid configuration.
const minimal = `
[submission]
listen = "127.0.0.1:5587"

[[submission.users]]
name = "app"
password_hash = "` + testHash + `"
accounts = ["*"]

[bounce]
domain = "m.example.test"

[sender]
default_from = "bounce@example.test"
dkim_domain = "example.test"

[api]
listen = "127.0.0.1:8025"
`

func mustParse(t *testing.T, text string) *Config {
	t.Helper()
	c, err := Parse([]byte(text), "test.toml")
	if err != nil {
		t.Fatalf("Parse:\n%s\nerror: %v", text, err)
	}
	return c
}

// parseErrors parses text, which must be invalid, and returns its *Errors.
func parseErrors(t *testing.T, text string) []*Error {
	t.Helper()
	c, err := Parse([]byte(text), "test.toml")
	if err == nil {
		t.Fatalf("Parse:\n%s\ngot %+v, want an error", text, c)
	}
	errs := asErrors(err)
	if len(errs) == 0 {
		t.Fatalf("Parse: error %v (%T) has no *Error", err, err)
	}
	return errs
}

func findKey(errs []*Error, key string) *Error {
	for _, e := range errs {
		if e.Key == key {
			return e
		}
	}
	return nil
}

// lineOf returns the line (from 1) of the first line of text containing s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%q not in text", s)
	return 0
}

func TestExampleLoads(t *testing.T) {
	c, err := Load("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != "../config.example.toml" {
		t.Errorf("Path = %q", c.Path)
	}
	if c.Submission.Listen != "127.0.0.1:5587" || c.Bounce.Listen != "127.0.0.1:2525" || c.API.Listen != "127.0.0.1:8025" {
		t.Errorf("listeners = %q %q %q", c.Submission.Listen, c.Bounce.Listen, c.API.Listen)
	}
	if len(c.Submission.Users) != 1 || c.Submission.Users[0].Name != "app" || !slices.Equal(c.Submission.Users[0].Accounts, []string{"*"}) {
		t.Errorf("users = %+v", c.Submission.Users)
	}
	if got := c.Suppress.ExpireAfter["mailbox-full"]; got != 720*time.Hour {
		t.Errorf("expire_after.mailbox-full = %s", got)
	}
	if len(c.Relay.Routes) != 0 || len(c.Webhooks) != 0 {
		t.Errorf("examples not commented out: routes %v, webhooks %v", c.Relay.Routes, c.Webhooks)
	}
	// The values written in the example are the defaults.
	d := mustParse(t, minimal)
	if c.Relay.HELO != d.Relay.HELO || !slices.Equal(c.Relay.Retry, d.Relay.Retry) ||
		c.Submission.MaxMessageBytes != d.Submission.MaxMessageBytes || c.Bounce.MaxMessageBytes != d.Bounce.MaxMessageBytes ||
		c.Queue != d.Queue || c.Log != d.Log || c.Sender.DisplayName != d.Sender.DisplayName {
		t.Errorf("example differs from the defaults:\n%+v\n%+v", c, d)
	}
}

// TestExampleDocumentsEveryKey walks Config's toml tags (independently of the
// package's own walker) and requires every key path to be mentioned in the
// example, set or in a comment: "key =" or "key:" under its table's header.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	mentioned := map[string]bool{}
	header := regexp.MustCompile(`^\[\[?([a-z_.]+)\]\]?`)
	keys := regexp.MustCompile(`^([a-z_]+(?:, [a-z_]+)*)\s*[=:]`)
	table := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(line), "#"))
		if m := header.FindStringSubmatch(line); m != nil {
			table = m[1]
			mentioned[table] = true
			continue
		}
		if m := keys.FindStringSubmatch(line); m != nil {
			for _, k := range strings.Split(m[1], ", ") {
				if table != "" {
					k = table + "." + k
				}
				mentioned[k] = true
			}
		}
	}
	var all []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			tag := typ.Field(i).Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			key := strings.TrimPrefix(prefix+"."+tag, ".")
			all = append(all, key)
			ft := typ.Field(i).Type
			if ft.Kind() == reflect.Slice || ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(key, ft)
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	if len(all) < 60 {
		t.Fatalf("walked only %d keys: %v", len(all), all)
	}
	for _, k := range all {
		if !mentioned[k] {
			t.Errorf("config.example.toml does not document %s", k)
		}
	}
	// The walker agrees with the one Parse uses for strictness.
	for _, k := range all {
		if _, ok := knownKeys[k]; !ok {
			t.Errorf("knownKeys lacks %s", k)
		}
	}
	if len(knownKeys) != len(all) {
		t.Errorf("knownKeys has %d keys, Config %d", len(knownKeys), len(all))
	}
}

func TestUnknownKey(t *testing.T) {
	text := minimal + `
[relay]
port = 2525
prot = 25
`
	errs := parseErrors(t, text)
	e := findKey(errs, "relay.prot")
	if e == nil {
		t.Fatalf("no error for relay.prot: %v", errs)
	}
	want := lineOf(t, text, "prot = 25")
	if e.Line != want || e.File != "test.toml" || !strings.Contains(e.Msg, "unknown key") || !strings.Contains(e.Msg, `"relay.port"`) {
		t.Errorf("got %+v, want line %d, unknown key, suggestion relay.port", e, want)
	}
	if s := e.Error(); !strings.HasPrefix(s, "config: test.toml:"+itoa(want)+": relay.prot: unknown key") {
		t.Errorf("Error() = %q", s)
	}

	for _, tc := range []struct {
		text, key, line string
	}{
		{"Hostname = \"mx.example.test\"\n" + minimal, "Hostname", "Hostname"}, // toml would match it case-insensitively
		{minimal + "[bogus]\nx = 1\ny = 2\n", "bogus", "[bogus]"},
		{minimal + "[[submission.users]]\nname = \"b\"\npassword = \"x\"\n", "submission.users.password", "password ="},
		{minimal + "[[webhook]]\nurl = \"https://h.example.test/\"\nsecret = \"x\"\n", "webhook.secret", "secret ="},
		{minimal + "[sender.dkim]\nkey = 1\n", "sender.dkim", "[sender.dkim]"},
	} {
		errs := parseErrors(t, tc.text)
		if len(errs) != 1 || errs[0].Key != tc.key || errs[0].Line != lineOf(t, tc.text, tc.line) {
			t.Errorf("%s\ngot %v, want one error for %s on line %d", tc.text, errs, tc.key, lineOf(t, tc.text, tc.line))
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text, key, line, msg string
	}{
		{"bad duration", strings.Replace(minimal, "5587\"\n", "5587\"\nidle_timeout = \"5 minutes\"\n", 1), "submission.idle_timeout", "5 minutes", `invalid duration: "5 minutes"`},
		{"bad duration in list", minimal + "[relay]\nretry = [\"1m\",\n  \"2 hours\"]\n", "relay.retry", "retry =", "invalid duration"},
		{"bad duration in map", minimal + "[suppress.expire_after]\nmailbox-full = \"30d\"\n", "suppress.expire_after.mailbox-full", "30d", "invalid duration"},
		{"string for int", minimal + "[relay]\nport = \"25\"\n", "relay.port", "port =", "wrong type: got a string, want an integer"},
		{"int for string", "hostname = 42\n" + minimal, "hostname", "hostname", "wrong type: got an integer, want a string"},
		{"int for table", "log = 3\n" + minimal, "log", "log = 3", "wrong type"},
		{"table for array of tables", minimal + "[webhook]\nurl = \"https://x.example.test/\"\n", "webhook", "[webhook]", "wrong type"},
		{"syntax", minimal + "[relay]\nport = = 25\n", "", "port = =", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := parseErrors(t, tc.text)
			e := errs[0]
			if len(errs) != 1 || e.Key != tc.key || e.Line != lineOf(t, tc.text, tc.line) || !strings.Contains(e.Msg, tc.msg) || e.File != "test.toml" {
				t.Errorf("%s\ngot %#v, want key %q line %d msg %q", tc.text, errs, tc.key, lineOf(t, tc.text, tc.line), tc.msg)
			}
		})
	}
}

func TestErrNoConfig(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.toml"))
	if !errors.Is(err, ErrNoConfig) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNoConfig and fs.ErrNotExist", err)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[submission]\nlisten = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	var e *Error
	if err == nil || errors.Is(err, ErrNoConfig) || !errors.As(err, &e) || e.File != bad || e.Key != "submission.listen" || e.Line != 2 {
		t.Errorf("invalid file: %v, want an *Error for %s:2 that is not ErrNoConfig", err, bad)
	}

	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(good); err != nil || c.Path != good {
		t.Errorf("Load(good) = %+v, %v", c, err)
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, minimal+"[[webhook]]\nurl = \"https://h.example.test/\"\nsecret_file = \"wh.key\"\n")
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	want := *c
	want.Hostname = host
	want.DataDir = "./hermod-data"
	want.ShutdownTimeout = 30 * time.Second
	want.Submission.MaxMessageBytes = 26214400
	want.Submission.MaxRecipients = 100
	want.Submission.IdleTimeout = 5 * time.Minute
	want.Submission.MaxConnections = 1000
	want.Submission.MaxConnectionsPerIP = 50
	want.Submission.AuthTimeout = 30 * time.Second
	want.Submission.MaxCommandsBeforeAuth = 10
	want.Submission.MaxUnauthenticated = 500
	want.Submission.DataTimeout = 30 * time.Minute
	want.Submission.MaxHeaderBytes = 1 << 20
	want.Submission.MaxHeaderFields = 1000
	want.Bounce.VERPSecretFile = "verp.key"
	want.Bounce.MaxMessageBytes = 10 << 20
	want.Bounce.MaxConnectionsPerIP = 10
	want.Bounce.MaxConcurrentData = 8
	want.Bounce.MaxRcptFailures = 10
	want.Bounce.MaxRcptFailuresPerIP = 30
	want.Bounce.Mailbox = Mailbox{MaxBytes: 100 << 20, MaxFiles: 1000, RateBytes: 20 << 20}
	want.Sender.DisplayName = "{name} (via MakeLeaps)"
	want.Sender.DKIMSelector = "hermod"
	want.Sender.DKIMKeyFile = "dkim-platform.key"
	want.Sender.DKIMAlgorithm = "rsa"
	want.Sender.ReturnPathLabel = "hermod-bounce"
	want.Sender.VerifyTimeout = 72 * time.Hour
	want.Relay = Relay{
		Port: 25, HELO: host, Concurrency: 100, PerDestination: 10,
		Retry:  []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour},
		MaxAge: 120 * time.Hour, DelayWarning: 4 * time.Hour, ConnectTimeout: 30 * time.Second, CommandTimeout: 5 * time.Minute, DataTimeout: 10 * time.Minute,
		MXAddressLimit: 5, MXSessionLimit: 2, AttemptTimeout: 11 * time.Minute,
	}
	want.Queue = Queue{Retention: 720 * time.Hour, PurgeInterval: time.Hour, Reserve: 32 << 20}
	want.Suppress = Suppress{Scope: "global", SoftBounceLimit: 5}
	want.API.TokenFile = "api.token"
	want.API.ReadTimeout, want.API.WriteTimeout, want.API.IdleTimeout = 30*time.Second, 90*time.Second, time.Minute
	want.API.MaxConnections, want.API.MaxConnectionsPerIP = 256, 64
	want.API.MaxWait, want.API.MaxLongPolls = time.Minute, 64
	want.Log = Log{Format: "text", Level: "info"}
	want.Webhooks = []Webhook{{URL: "https://h.example.test/", SecretFile: "wh.key", Events: []string{"*"}}}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *c, want)
	}

	// Explicit values are kept, and helo follows an explicit hostname.
	c = mustParse(t, "hostname = \"mx.example.test\"\n"+minimal+"[relay]\nport = 2525\nretry = [\"10s\"]\n[log]\nlevel = \"debug\"\n")
	if c.Relay.HELO != "mx.example.test" || c.Relay.Port != 2525 || !slices.Equal(c.Relay.Retry, []time.Duration{10 * time.Second}) || c.Log.Level != "debug" {
		t.Errorf("explicit values: %+v %+v", c.Relay, c.Log)
	}
	// The attempt deadline follows the session limit and timeouts it
	// depends on; explicit limits are kept.
	c = mustParse(t, minimal+"[relay]\nmx_address_limit = 8\nmx_session_limit = 3\nconnect_timeout = \"10s\"\ndata_timeout = \"1m\"\n")
	if r := c.Relay; r.MXAddressLimit != 8 || r.MXSessionLimit != 3 || r.AttemptTimeout != 90*time.Second {
		t.Errorf("explicit MX limits: address %d session %d attempt %s, want 8, 3, 1m30s", r.MXAddressLimit, r.MXSessionLimit, r.AttemptTimeout)
	}
	c = mustParse(t, minimal+"[relay]\nattempt_timeout = \"2m\"\n")
	if c.Relay.AttemptTimeout != 2*time.Minute {
		t.Errorf("explicit attempt_timeout = %s, want 2m", c.Relay.AttemptTimeout)
	}
	// Defaults do not alias the package's slice.
	c.Relay.Retry = nil
	c = mustParse(t, minimal)
	c.Relay.Retry[0] = 0
	if DefaultRetry[0] != time.Minute {
		t.Error("DefaultRetry modified through a Config")
	}
}

func TestDataPath(t *testing.T) {
	c := &Config{DataDir: "/var/lib/hermod"}
	for in, want := range map[string]string{
		"verp.key":         "/var/lib/hermod/verp.key",
		"keys/dkim.key":    "/var/lib/hermod/keys/dkim.key",
		"/etc/tls/key.pem": "/etc/tls/key.pem",
		"":                 "",
	} {
		if got := c.DataPath(in); got != want {
			t.Errorf("DataPath(%q) = %q, want %q", in, got, want)
		}
	}
	c.DataDir = "./hermod-data"
	if got := c.DataPath("api.token"); got != "hermod-data/api.token" {
		t.Errorf("relative data_dir: %q", got)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	cert, key := testnet.WriteCert(t, dir, "a", "mx.example.test")
	_, otherKey := testnet.WriteCert(t, dir, "b", "mx.example.test")
	withTLS := func(c *Config) { c.Submission.TLSCert, c.Submission.TLSKey = cert, key }

	for _, tc := range []struct {
		name   string
		mutate func(c *Config)
		key    string // "" means valid
		msg    string
	}{
		{"minimal", func(c *Config) {}, "", ""},

		// Listeners.
		{"submission.listen required", func(c *Config) { c.Submission.Listen = "" }, "submission.listen", "required"},
		{"api.listen required", func(c *Config) { c.API.Listen = "" }, "api.listen", "required"},
		{"bounce.listen optional", func(c *Config) { c.Bounce.Listen = "" }, "", ""},
		{"no port", func(c *Config) { c.Submission.Listen = "127.0.0.1" }, "submission.listen", "host:port"},
		{"named port", func(c *Config) { c.API.Listen = "127.0.0.1:http" }, "api.listen", "port"},
		{"port out of range", func(c *Config) { c.Bounce.Listen = "127.0.0.1:70000" }, "bounce.listen", "port"},
		{"bad listen_tls", func(c *Config) { withTLS(c); c.Submission.ListenTLS = "465" }, "submission.listen_tls", "host:port"},
		{"port 0 twice", func(c *Config) { c.Submission.Listen, c.API.Listen = "127.0.0.1:0", "127.0.0.1:0" }, "", ""},
		{"clash", func(c *Config) { c.Bounce.Listen = "127.0.0.1:5587" }, "bounce.listen", "submission.listen"},
		{"clash with wildcard", func(c *Config) { c.API.Listen = ":5587" }, "api.listen", "submission.listen"},
		{"clash IPv6 forms", func(c *Config) { c.Submission.Listen, c.API.Listen = "[::1]:25", "[0:0::1]:25" }, "api.listen", "submission.listen"},
		{"same port other host", func(c *Config) { c.API.Listen = "127.0.0.2:5587" }, "", ""},
		{"clash listen_tls", func(c *Config) { withTLS(c); c.Submission.ListenTLS = "127.0.0.1:8025" }, "api.listen", "submission.listen_tls"},

		// AUTH only over TLS, except on loopback.
		{"submission not loopback", func(c *Config) { c.Submission.Listen = "192.0.2.1:587" }, "submission.listen",
			"192.0.2.1:587 is not a loopback address and no tls_cert is set: AUTH would travel in clear text"},
		{"submission wildcard", func(c *Config) { c.Submission.Listen = ":587" }, "submission.listen", "not a loopback address"},
		{"submission name", func(c *Config) { c.Submission.Listen = "mx.example.test:587" }, "submission.listen", "not a loopback address"},
		{"submission localhost", func(c *Config) { c.Submission.Listen = "localhost:587" }, "", ""},
		{"submission ::1", func(c *Config) { c.Submission.Listen = "[::1]:587" }, "", ""},
		{"submission public with TLS", func(c *Config) {
			withTLS(c)
			c.Submission.Listen = "0.0.0.0:587"
			c.Submission.ListenTLS = "0.0.0.0:465"
		}, "", ""},
		{"relative cert in data_dir", func(c *Config) {
			c.DataDir = dir
			c.Submission.TLSCert, c.Submission.TLSKey = "a.crt", "a.key"
		}, "", ""},
		{"cert without key", func(c *Config) { c.Submission.TLSCert = cert }, "submission.tls_key", "required"},
		{"key without cert", func(c *Config) { c.Submission.TLSKey = key }, "submission.tls_cert", "required"},
		{"cert missing", func(c *Config) { withTLS(c); c.Submission.TLSCert = filepath.Join(dir, "nope.crt") }, "submission.tls_cert", "no such file"},
		{"key missing", func(c *Config) { withTLS(c); c.Submission.TLSKey = filepath.Join(dir, "nope.key") }, "submission.tls_key", "no such file"},
		{"key does not match", func(c *Config) { withTLS(c); c.Submission.TLSKey = otherKey }, "submission.tls_cert", "not a certificate and its key"},
		{"cert is not PEM", func(c *Config) { withTLS(c); c.Submission.TLSCert = key }, "submission.tls_cert", "not a certificate"},
		{"listen_tls without certs", func(c *Config) { c.Submission.ListenTLS = "127.0.0.1:465" }, "submission.listen_tls", "tls_cert"},

		// Users.
		{"user name", func(c *Config) { c.Submission.Users[0].Name = "" }, "submission.users[0].name", "required"},
		{"user name space", func(c *Config) { c.Submission.Users[0].Name = "a b" }, "submission.users[0].name", "white space"},
		{"duplicate user", func(c *Config) { c.Submission.Users = append(c.Submission.Users, c.Submission.Users[0]) }, "submission.users[1].name", "twice"},
		{"no hash", func(c *Config) { c.Submission.Users[0].PasswordHash = "" }, "submission.users[0].password_hash", "required"},
		{"plain password", func(c *Config) { c.Submission.Users[0].PasswordHash = "change-me" }, "submission.users[0].password_hash", "not a bcrypt hash"},
		{"md5 crypt", func(c *Config) { c.Submission.Users[0].PasswordHash = "$1$abc$def" }, "submission.users[0].password_hash", "not a bcrypt hash"},
		{"truncated bcrypt", func(c *Config) { c.Submission.Users[0].PasswordHash = "$2a$xx$abc" }, "submission.users[0].password_hash", "not a valid bcrypt hash"},
		{"$2y$ accepted", func(c *Config) { c.Submission.Users[0].PasswordHash = "$2y$" + testHash[4:] }, "", ""},
		{"no accounts", func(c *Config) { c.Submission.Users[0].Accounts = nil }, "submission.users[0].accounts", "at least one"},
		{"empty account", func(c *Config) { c.Submission.Users[0].Accounts = []string{""} }, "submission.users[0].accounts", "not an account"},
		{"limits", func(c *Config) { c.Submission.MaxRecipients = -1 }, "submission.max_recipients", "positive"},
		{"negative idle", func(c *Config) { c.Submission.IdleTimeout = -time.Second }, "submission.idle_timeout", "positive"},
		{"negative auth_timeout", func(c *Config) { c.Submission.AuthTimeout = -time.Second }, "submission.auth_timeout", "positive"},
		{"command budget", func(c *Config) { c.Submission.MaxCommandsBeforeAuth = -1 }, "submission.max_commands_before_auth", "positive"},
		{"strangers take every slot", func(c *Config) { c.Submission.MaxUnauthenticated = c.Submission.MaxConnections },
			"submission.max_unauthenticated", "leaves no slot"},
		{"header cap", func(c *Config) { c.Submission.MaxHeaderFields = -1 }, "submission.max_header_fields", "positive"},
		{"bounce failure budget", func(c *Config) { c.Bounce.MaxRcptFailures = -1 }, "bounce.max_rcpt_failures", "positive"},
		{"mailbox quota", func(c *Config) { c.Bounce.Mailbox.MaxBytes = -1 }, "bounce.mailbox.max_bytes", "positive"},
		{"api write_timeout under max_wait", func(c *Config) { c.API.WriteTimeout = 30 * time.Second }, "api.write_timeout", "must exceed api.max_wait"},
		{"api connection cap", func(c *Config) { c.API.MaxConnections = -1 }, "api.max_connections", "positive"},

		// Bounce and sender.
		{"bounce.domain required", func(c *Config) { c.Bounce.Domain = "" }, "bounce.domain", "required"},
		{"bounce.domain invalid", func(c *Config) { c.Bounce.Domain = "m_makeleaps.com" }, "bounce.domain", "not a domain"},
		{"bounce.domain single label", func(c *Config) { c.Bounce.Domain = "localhost" }, "bounce.domain", "not a domain"},
		{"default_from required", func(c *Config) { c.Sender.DefaultFrom = "" }, "sender.default_from", "required"},
		{"default_from with name", func(c *Config) { c.Sender.DefaultFrom = "MakeLeaps <bounce@example.test>" }, "sender.default_from", "bare address"},
		{"default_from no domain", func(c *Config) { c.Sender.DefaultFrom = "bounce" }, "sender.default_from", "bare address"},
		{"default_from bad domain", func(c *Config) { c.Sender.DefaultFrom = "bounce@[192.0.2.1]" }, "sender.default_from", ""},
		{"dkim_domain required", func(c *Config) { c.Sender.DKIMDomain = "" }, "sender.dkim_domain", "required"},
		{"dkim_domain invalid", func(c *Config) { c.Sender.DKIMDomain = "example..test" }, "sender.dkim_domain", "not a domain"},
		{"dkim_algorithm", func(c *Config) { c.Sender.DKIMAlgorithm = "dsa" }, "sender.dkim_algorithm", `"dsa" is not one of rsa, ed25519`},
		{"ed25519", func(c *Config) { c.Sender.DKIMAlgorithm = "ed25519" }, "", ""},
		{"dkim_selector", func(c *Config) { c.Sender.DKIMSelector = "a b" }, "sender.dkim_selector", "DNS label"},
		{"return_path_label", func(c *Config) { c.Sender.ReturnPathLabel = "a.b" }, "sender.return_path_label", "single DNS label"},
		{"display_name LF", func(c *Config) { c.Sender.DisplayName = "{name}\nBcc: x@example.test" }, "sender.display_name", "CR or LF"},
		{"display_name CR", func(c *Config) { c.Sender.DisplayName = "{name}\r" }, "sender.display_name", "CR or LF"},
		{"freemail_extra", func(c *Config) { c.Sender.FreemailExtra = []string{"mail.example.test", "@gmail.com"} }, "sender.freemail_extra", `"@gmail.com"`},

		// Relay.
		{"resolvers ok", func(c *Config) {
			c.Relay.Resolvers = []string{"192.0.2.53", "192.0.2.53:5353", "::1", "[2001:db8::53]:53"}
		}, "", ""},
		{"resolver name", func(c *Config) { c.Relay.Resolvers = []string{"dns.example.test"} }, "relay.resolvers", "dns.example.test"},
		{"resolver name:port", func(c *Config) { c.Relay.Resolvers = []string{"dns.example.test:53"} }, "relay.resolvers", "IP address"},
		{"resolver port 0", func(c *Config) { c.Relay.Resolvers = []string{"192.0.2.53:0"} }, "relay.resolvers", ""},
		{"port 0", func(c *Config) { c.Relay.Port = -1 }, "relay.port", "1-65535"},
		{"port too big", func(c *Config) { c.Relay.Port = 65536 }, "relay.port", "1-65535"},
		{"helo", func(c *Config) { c.Relay.HELO = "mx example" }, "relay.helo", "host name"},
		{"concurrency", func(c *Config) { c.Relay.Concurrency = -1 }, "relay.concurrency", "positive"},
		{"per_destination", func(c *Config) { c.Relay.PerDestination = -3 }, "relay.per_destination", "positive"},
		{"per_destination > concurrency", func(c *Config) { c.Relay.Concurrency, c.Relay.PerDestination = 5, 6 }, "relay.per_destination", "relay.concurrency"},
		{"retry empty", func(c *Config) { c.Relay.Retry = []time.Duration{} }, "relay.retry", "at least one"},
		{"retry zero", func(c *Config) { c.Relay.Retry = []time.Duration{time.Minute, 0} }, "relay.retry", "interval 2"},
		{"max_age", func(c *Config) { c.Relay.MaxAge = -time.Hour }, "relay.max_age", "positive"},
		{"connect_timeout", func(c *Config) { c.Relay.ConnectTimeout = -1 }, "relay.connect_timeout", "positive"},
		{"command_timeout", func(c *Config) { c.Relay.CommandTimeout = -1 }, "relay.command_timeout", "positive"},
		{"data_timeout", func(c *Config) { c.Relay.DataTimeout = -1 }, "relay.data_timeout", "positive"},
		{"mx_address_limit", func(c *Config) { c.Relay.MXAddressLimit = -1 }, "relay.mx_address_limit", "positive"},
		{"mx_session_limit", func(c *Config) { c.Relay.MXSessionLimit = -2 }, "relay.mx_session_limit", "positive"},
		{"mx_session_limit > mx_address_limit", func(c *Config) { c.Relay.MXAddressLimit, c.Relay.MXSessionLimit = 3, 4 }, "relay.mx_session_limit", "relay.mx_address_limit"},
		{"attempt_timeout", func(c *Config) { c.Relay.AttemptTimeout = -time.Second }, "relay.attempt_timeout", "positive"},
		{"routes ok", func(c *Config) {
			c.Relay.Routes = []Route{{"example.test", "127.0.0.1:2526"}, {"*.example.test", "smarthost.example.test:587"}, {"x.invalid", "[::1]:25"}}
		}, "", ""},
		{"route domain", func(c *Config) { c.Relay.Routes = []Route{{"exa mple.test", "127.0.0.1:25"}} }, "relay.route[0].domain", "not a domain"},
		{"route wildcard inside", func(c *Config) { c.Relay.Routes = []Route{{"a.*.test", "127.0.0.1:25"}} }, "relay.route[0].domain", "not a domain"},
		{"route domain missing", func(c *Config) { c.Relay.Routes = []Route{{"", "127.0.0.1:25"}} }, "relay.route[0].domain", "required"},
		{"route host no port", func(c *Config) { c.Relay.Routes = []Route{{"example.test", "127.0.0.1"}} }, "relay.route[0].host", "host:port"},
		{"route host port name", func(c *Config) { c.Relay.Routes = []Route{{"example.test", "mx.example.test:smtp"}} }, "relay.route[0].host", "port"},
		{"route host port 0", func(c *Config) { c.Relay.Routes = []Route{{"example.test", "127.0.0.1:0"}} }, "relay.route[0].host", "port"},
		{"route host missing", func(c *Config) { c.Relay.Routes = []Route{{"example.test", ""}} }, "relay.route[0].host", "required"},
		{"duplicate route", func(c *Config) {
			c.Relay.Routes = []Route{{"example.test", "127.0.0.1:25"}, {"Example.TEST", "127.0.0.1:26"}}
		}, "relay.route[1].domain", "two routes"},

		// Queue, suppress, api, log.
		{"retention", func(c *Config) { c.Queue.Retention = -1 }, "queue.retention", "positive"},
		{"purge_interval", func(c *Config) { c.Queue.PurgeInterval = -1 }, "queue.purge_interval", "positive"},
		{"scope", func(c *Config) { c.Suppress.Scope = "user" }, "suppress.scope", "global, account"},
		{"scope account", func(c *Config) { c.Suppress.Scope = "account" }, "", ""},
		{"soft_bounce_limit", func(c *Config) { c.Suppress.SoftBounceLimit = -1 }, "suppress.soft_bounce_limit", "positive"},
		{"expire_after ok", func(c *Config) {
			c.Suppress.ExpireAfter = map[string]time.Duration{"mailbox-full": time.Hour, "soft-bounce-limit": time.Hour, "manual": time.Hour, "complaint": time.Hour}
		}, "", ""},
		{"expire_after unknown reason", func(c *Config) { c.Suppress.ExpireAfter = map[string]time.Duration{"mailbox_full": time.Hour} }, "suppress.expire_after.mailbox_full", "not a bounce reason"},
		{"expire_after zero", func(c *Config) { c.Suppress.ExpireAfter = map[string]time.Duration{"user-unknown": 0} }, "suppress.expire_after.user-unknown", "positive"},
		{"token_file", func(c *Config) { c.API.TokenFile = "" }, "api.token_file", "required"},
		{"log.format", func(c *Config) { c.Log.Format = "logfmt" }, "log.format", "text, json"},
		{"log.level", func(c *Config) { c.Log.Level = "trace" }, "log.level", "debug, info, warn, error"},
		{"json debug", func(c *Config) { c.Log = Log{"json", "debug"} }, "", ""},

		// Webhooks.
		{"webhook ok", func(c *Config) {
			c.Webhooks = []Webhook{{"http://127.0.0.1:9000/hook", "wh.key", []string{"sent", "bounced", "suppressed", "queued", "deferred"}}}
		}, "", ""},
		{"webhook url missing", func(c *Config) { c.Webhooks = []Webhook{{"", "wh.key", []string{"*"}}} }, "webhook[0].url", "required"},
		{"webhook url relative", func(c *Config) { c.Webhooks = []Webhook{{"/hook", "wh.key", []string{"*"}}} }, "webhook[0].url", "absolute"},
		{"webhook url ftp", func(c *Config) { c.Webhooks = []Webhook{{"ftp://h.example.test/", "wh.key", []string{"*"}}} }, "webhook[0].url", "http"},
		{"webhook secret", func(c *Config) { c.Webhooks = []Webhook{{"https://h.example.test/", "", []string{"*"}}} }, "webhook[0].secret_file", "required"},
		{"webhook event", func(c *Config) {
			c.Webhooks = []Webhook{{"https://h.example.test/", "a", []string{"*"}}, {"https://h.example.test/", "b", []string{"delivered"}}}
		}, "webhook[1].events", `"delivered"`},
		{"webhook no events", func(c *Config) { c.Webhooks = []Webhook{{"https://h.example.test/", "a", []string{}}} }, "webhook[0].events", "at least one"},

		// Top level.
		{"hostname", func(c *Config) { c.Hostname = "mx_1" }, "hostname", "host name"},
		{"hostname empty", func(c *Config) { c.Hostname = "" }, "hostname", "required"},
		{"data_dir", func(c *Config) { c.DataDir = "" }, "data_dir", "required"},
		{"shutdown_timeout", func(c *Config) { c.ShutdownTimeout = -1 }, "shutdown_timeout", "positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, minimal)
			c.Path = "x.toml"
			tc.mutate(c)
			err := c.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			errs := asErrors(err)
			e := findKey(errs, tc.key)
			if e == nil {
				t.Fatalf("got %v, want an error for %s", err, tc.key)
			}
			if !strings.Contains(e.Msg, tc.msg) || e.File != "x.toml" {
				t.Errorf("got %+v, want File x.toml and Msg containing %q", e, tc.msg)
			}
			if len(errs) != 1 {
				t.Errorf("got %d errors, want only %s: %v", len(errs), tc.key, err)
			}
			var single *Error
			if len(errs) == 1 && !errors.As(err, &single) {
				t.Errorf("%T is not *Error", err)
			}
		})
	}
}

func TestValidateLines(t *testing.T) {
	text := minimal + `
[[submission.users]]
name = "second"
password_hash = "plain"
accounts = ["acme"]

[[submission.users]]
password_hash = "` + testHash + `"
accounts = ["acme"]

[relay]
retry = [
  "1m",
  "0s",
]
per_destination = 200   # more than concurrency
`
	errs := parseErrors(t, text)
	want := map[string]int{
		"submission.users[1].password_hash": lineOf(t, text, `"plain"`),
		"submission.users[2].name":          strings.Count(text[:strings.LastIndex(text, "[[submission.users]]")], "\n") + 1, // its table
		"relay.retry":                       lineOf(t, text, "retry ="),
		"relay.per_destination":             lineOf(t, text, "per_destination ="),
	}
	for _, e := range errs {
		if w, ok := want[e.Key]; !ok {
			t.Errorf("unexpected error %v", e)
		} else if e.Line != w {
			t.Errorf("%s: line %d, want %d", e.Key, e.Line, w)
		}
		delete(want, e.Key)
	}
	for k := range want {
		t.Errorf("no error for %s in %v", k, errs)
	}
	for i := 1; i < len(errs); i++ {
		if a, b := errs[i-1].Line, errs[i].Line; b != 0 && (a == 0 || a > b) {
			t.Errorf("errors not in file order: %v", errs)
		}
	}
	// A key that is not in the file has no line.
	errs = parseErrors(t, strings.Replace(minimal, `domain = "m.example.test"`, "", 1))
	if len(errs) != 1 || errs[0].Key != "bounce.domain" || errs[0].Line != 0 || errs[0].Error() != "config: test.toml: bounce.domain: required" {
		t.Errorf("missing key: %v", errs)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{"f.toml", 3, "relay.port", "bad"}, "config: f.toml:3: relay.port: bad"},
		{Error{"f.toml", 0, "relay.port", "bad"}, "config: f.toml: relay.port: bad"},
		{Error{"", 3, "relay.port", "bad"}, "config: line 3: relay.port: bad"},
		{Error{"", 0, "relay.port", "bad"}, "config: relay.port: bad"},
		{Error{"f.toml", 7, "", "syntax"}, "config: f.toml:7: syntax"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestLogValue(t *testing.T) {
	c := mustParse(t, minimal+`
[[webhook]]
url = "https://user:s3cret@h.example.test/hook?token=t0ken"
secret_file = "wh.key"
[suppress.expire_after]
mailbox-full = "720h"
`)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	out := buf.String()
	for _, secret := range []string{"$2a$", testHash[10:], "s3cret", "t0ken"} {
		if strings.Contains(out, secret) {
			t.Errorf("log line contains secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		"config.path=test.toml",
		"config.submission.users.0.name=app",
		"config.submission.users.0.password_hash=<redacted>",
		"config.submission.listen=127.0.0.1:5587",
		"config.submission.idle_timeout=5m0s",
		"config.relay.retry=\"[1m0s 5m0s",
		"config.suppress.expire_after.mailbox-full=720h0m0s",
		"config.webhook.0.secret_file=wh.key",
		"config.webhook.0.url=https://user:xxxxx@h.example.test/hook?redacted",
		"config.api.pprof=false",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log line lacks %q:\n%s", want, out)
		}
	}
	buf.Reset()
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "config", c)
	if !strings.Contains(buf.String(), `"max_age":"120h0m0s"`) || strings.Contains(buf.String(), "$2a$") {
		t.Errorf("JSON log line:\n%s", buf.String())
	}
}

func TestRelativeDataDirFollowsConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hermod.toml")
	if err := os.WriteFile(path, []byte("data_dir = \"spool\"\n[submission]\nlisten = \"127.0.0.1:5587\"\n[bounce]\ndomain = \"m.example.test\"\n[sender]\ndefault_from = \"bounce@example.test\"\ndkim_domain = \"example.test\"\n[api]\nlisten = \"127.0.0.1:8025\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "spool"); c.DataDir != want {
		t.Errorf("data_dir = %q, want %q (relative to the config file)", c.DataDir, want)
	}
}
