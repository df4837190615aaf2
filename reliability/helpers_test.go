package reliability

import (
	"bufio"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/queue"
)

var longFlag = flag.Bool("long", false, "run the long soak (100 sessions for 60s, …)")

// soak reports whether the long variants run (-long or HERMOD_SOAK=1).
func soak() bool { return *longFlag || os.Getenv("HERMOD_SOAK") == "1" }

// summary prints a promise's one summary line to stdout and the test log.
func summary(t *testing.T, format string, args ...any) {
	t.Helper()
	s := fmt.Sprintf(format, args...)
	t.Log(s)
	fmt.Println(s)
}

const password = "secret-pass"

var hashOnce = sync.OnceValue(func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	return string(h)
})

// plainAuth is AUTH PLAIN for app / secret-pass.
var plainAuth = "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00app\x00"+password)) + "\r\n"

func authLine(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)) + "\r\n"
}

// cfgOpts are the knobs the tests turn; zero values keep testConfig's choice.
type cfgOpts struct {
	sink           string // route every domain to this host:port ("" = MX lookup)
	resolver       string // relay.resolvers (default an unused port)
	relayPort      int
	maxRcpts       int
	idleTimeout    string
	perIP          int
	maxConns       int
	commandTimeout string
	connectTimeout string
	retry          string // TOML array body, e.g. `"200ms"`
	concurrency    int
	perDestination int
	shutdown       string
}

// testConfig returns a complete configuration on kernel-chosen loopback ports.
func testConfig(t testing.TB, o cfgOpts) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "hostname = \"hermod.test\"\ndata_dir = %q\nshutdown_timeout = %q\n", t.TempDir(), def(o.shutdown, "5s"))
	fmt.Fprintf(&b, "[submission]\nlisten = \"127.0.0.1:0\"\nmax_message_bytes = 1048576\nmax_recipients = %d\nidle_timeout = %q\nmax_connections = %d\nmax_connections_per_ip = %d\n",
		defInt(o.maxRcpts, 100), def(o.idleTimeout, "30s"), defInt(o.maxConns, 1000), defInt(o.perIP, 50))
	fmt.Fprintf(&b, "[[submission.users]]\nname = \"app\"\npassword_hash = %q\naccounts = [\"*\"]\n", hashOnce())
	b.WriteString("[bounce]\nlisten = \"127.0.0.1:0\"\ndomain = \"m.makeleaps.test\"\n")
	b.WriteString("[sender]\ndefault_from = \"bounce@makeleaps.test\"\ndkim_domain = \"makeleaps.test\"\ndkim_algorithm = \"ed25519\"\n")
	fmt.Fprintf(&b, "[relay]\nresolvers = [%q]\nretry = [%s]\nmax_age = \"1h\"\ncommand_timeout = %q\nconnect_timeout = %q\nconcurrency = %d\nper_destination = %d\n",
		def(o.resolver, "127.0.0.1:1"), def(o.retry, `"100ms"`), def(o.commandTimeout, "30s"), def(o.connectTimeout, "10s"),
		defInt(o.concurrency, 100), defInt(o.perDestination, 10))
	if o.relayPort != 0 {
		fmt.Fprintf(&b, "port = %d\n", o.relayPort)
	}
	if o.sink != "" {
		fmt.Fprintf(&b, "[[relay.route]]\ndomain = \"*\"\nhost = %q\n", o.sink)
	}
	b.WriteString("[api]\nlisten = \"127.0.0.1:0\"\n")
	cfg, err := config.Parse([]byte(b.String()), "reliability.toml")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, b.String())
	}
	return cfg
}

func def(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func defInt(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

// startDaemon runs a daemon until the test ends. HERMOD_TEST_LOG=1 shows its log.
func startDaemon(t testing.TB, cfg *config.Config, o daemon.Options) *daemon.Daemon {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("HERMOD_TEST_LOG") == "1" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := daemon.New(cfg, log, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	})
	return d
}

// client is a hand-driven SMTP connection: the tests need the exact replies.
type client struct {
	c net.Conn
	r *bufio.Reader
}

// dial connects and returns the client with the greeting read.
func dial(addr string) (*client, string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	cl := &client{c: c, r: bufio.NewReaderSize(c, 64<<10)}
	g, err := cl.reply()
	if err != nil {
		c.Close()
		return nil, g, err
	}
	return cl, g, nil
}

func mustDial(t testing.TB, addr string) *client {
	t.Helper()
	cl, g, err := dial(addr)
	if err != nil || !strings.HasPrefix(g, "220") {
		t.Fatalf("dial %s: greeting %q, %v", addr, g, err)
	}
	t.Cleanup(func() { cl.c.Close() })
	return cl
}

// reply reads one reply (possibly multi-line) and returns its last line.
func (cl *client) reply() (string, error) {
	for {
		line, err := cl.r.ReadString('\n')
		if err != nil {
			return strings.TrimRight(line, "\r\n"), err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line, nil
		}
	}
}

func (cl *client) write(s string) error {
	_, err := io.WriteString(cl.c, s)
	return err
}

// cmd sends one line (CRLF added when missing) and reads its reply.
func (cl *client) cmd(s string) string {
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	if err := cl.write(s); err != nil {
		return "write: " + err.Error()
	}
	r, err := cl.reply()
	if err != nil {
		return r + " (read: " + err.Error() + ")"
	}
	return r
}

// rest reads replies until the connection closes or the deadline passes.
func (cl *client) rest(d time.Duration) []string {
	cl.c.SetReadDeadline(time.Now().Add(d))
	var out []string
	for {
		r, err := cl.reply()
		if r != "" {
			out = append(out, r)
		}
		if err != nil {
			return out
		}
	}
}

func (cl *client) close() { cl.c.Close() }

// login says EHLO and authenticates as app.
func (cl *client) login(t testing.TB) {
	t.Helper()
	if r := cl.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO: %q", r)
	}
	if r := cl.cmd(plainAuth); !strings.HasPrefix(r, "235") {
		t.Fatalf("AUTH: %q", r)
	}
}

var reQueued = regexp.MustCompile(`queued as ([0-9a-v]{16})`)

// send runs one transaction on an authenticated client and returns the id.
func (cl *client) send(from string, rcpts []string, msg string) (string, string) {
	if r := cl.cmd("MAIL FROM:<" + from + ">"); !strings.HasPrefix(r, "250") {
		return "", r
	}
	for _, rc := range rcpts {
		if r := cl.cmd("RCPT TO:<" + rc + ">"); !strings.HasPrefix(r, "250") {
			cl.cmd("RSET")
			return "", r
		}
	}
	if r := cl.cmd("DATA"); !strings.HasPrefix(r, "354") {
		return "", r
	}
	r := cl.cmd(msg + ".\r\n")
	if m := reQueued.FindStringSubmatch(r); m != nil {
		return m[1], r
	}
	return "", r
}

// submit sends one message on a new session and returns its queue id.
func submit(t testing.TB, addr string, rcpts ...string) string {
	t.Helper()
	cl := mustDial(t, addr)
	defer cl.close()
	cl.login(t)
	id, r := cl.send("app@saas.test", rcpts, "From: a@customer.test\r\nSubject: test\r\n\r\nbody\r\n")
	if id == "" {
		t.Fatalf("submit to %v: %q", rcpts, r)
	}
	cl.cmd("QUIT")
	return id
}

// waitRcpt waits until recipient idx of id has status want.
func waitRcpt(t testing.TB, d *daemon.Daemon, id string, idx int, want queue.Status, within time.Duration) *queue.Recipient {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		m, err := d.Store.Get(id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		r := m.Recipients[idx]
		if r.Status == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Errorf("%s/%d (%s) is %s, want %s; last %+v", id, idx, r.Address, r.Status, want, r.Last)
			return r
		}
		select {
		case <-d.Store.EventsChanged():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func daemonOpts() daemon.Options { return daemon.Options{} }
