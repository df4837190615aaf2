package bounce

// Real bounces from real MTAs on loopback: a private Postfix instance and a
// private Exim instance relay test messages to a go-smtp "far MX" that
// answers with scripted replies, and send the bounces they generate to a
// go-smtp "bounce host". Each bounce is parsed and decided as the listener
// would, and must end with the status and reason written below.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// scriptedReply is what the far MX answers for one recipient local part.
type scriptedReply struct {
	rcpt *smtp.SMTPError // reply to RCPT TO; nil accepts
	data *smtp.SMTPError // reply after the end of DATA; nil accepts
}

// farScripts are the far MX's answers, by recipient local part.
var farScripts = map[string]scriptedReply{
	"unknown": {rcpt: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "<unknown@far.test>: Recipient address rejected: User unknown in local recipient table"}},
	"full": {rcpt: &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2},
		Message: "<full@far.test>: Mailbox full: user is over quota"}},
	"content": {data: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Message content rejected, id=4711"}},
	// A content refusal dressed as user-unknown, after DATA: never hard.
	"dressed": {data: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 0, 0},
		Message: "<dressed@far.test>... User unknown"}},
	"slow": {rcpt: &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0},
		Message: "<slow@far.test>: Recipient address rejected: Greylisted, try again later"}},
}

// realExpect is the decision a real bounce must lead to. Written by hand
// from the far MX's scripted replies above.
type realExpect struct {
	kind    Kind
	outcome Outcome
	status  string
	reason  Reason
	hard    bool
	// statusBy overrides status for one MTA: Exim's expiry report says
	// "Status: 5.0.0" with the last 4.2.0 reply in its text, OpenSMTPD's
	// "Status: 4.4.7" with "Envelope expired".
	statusBy map[string]string
}

// realCases: for each local part, the bounces expected in order of arrival.
// "slow" first gets a delay notice, then (queue lifetime over) a failure.
var realCases = map[string][]realExpect{
	"unknown": {{KindBounce, OutcomeBounce, "5.1.1", ReasonUserUnknown, true, nil}},
	"full":    {{KindBounce, OutcomeBounce, "5.2.2", ReasonMailboxFull, false, nil}},
	"content": {{KindBounce, OutcomeBounce, "5.7.1", ReasonFiltered, false, nil}},
	"dressed": {{KindBounce, OutcomeBounce, "5.0.0", ReasonFiltered, false, nil}},
	"slow": {
		{KindDelay, OutcomeNote, "4.2.0", ReasonOther, false, nil},
		{KindBounce, OutcomeBounce, "4.2.0", ReasonExpired, false, map[string]string{"exim": "5.0.0", "opensmtpd": "4.4.7"}},
	},
}

// requireTool skips, or fails under scripts/test.sh (HERMOD_REQUIRE_TOOLS=1),
// when a tool the test needs is missing.
func requireTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("HERMOD_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s missing (scripts/deps.sh installs it)", what)
	}
	t.Skipf("%s missing (scripts/deps.sh installs it)", what)
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// mxSession is one SMTP session of the far MX or the bounce host.
type mxSession struct {
	srv   *mtaServer
	from  string
	rcpts []string
}

func (s *mxSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *mxSession) Logout() error { return nil }
func (s *mxSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *mxSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if sc, ok := s.srv.scripts[localPart(to)]; ok && sc.rcpt != nil {
		return sc.rcpt
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("reading data: %w", err)
	}
	for _, to := range s.rcpts {
		if sc, ok := s.srv.scripts[localPart(to)]; ok && sc.data != nil {
			return sc.data
		}
	}
	s.srv.got <- received{from: s.from, rcpts: append([]string(nil), s.rcpts...), data: b}
	return nil
}

func localPart(a string) string {
	l, _, _ := strings.Cut(strings.Trim(a, "<>"), "@")
	return strings.ToLower(l)
}

type received struct {
	from  string
	rcpts []string
	data  []byte
}

// mtaServer is a go-smtp server on a loopback port: the far MX (with
// scripts) or the bounce host (without).
type mtaServer struct {
	addr    string
	scripts map[string]scriptedReply
	got     chan received
}

func startServer(t *testing.T, name string, scripts map[string]scriptedReply) *mtaServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mtaServer{addr: ln.Addr().String(), scripts: scripts, got: make(chan received, 100)}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &mxSession{srv: m}, nil }))
	s.Domain = name
	s.ReadTimeout, s.WriteTimeout = 30*time.Second, 30*time.Second
	s.MaxMessageBytes = 10 << 20
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close(); wg.Wait() })
	return m
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// freePort picks a loopback port for an MTA that wants a number in its
// configuration (the listener is closed again at once).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return port(ln.Addr().String())
}

// waitListening polls until addr accepts connections.
func waitListening(t *testing.T, addr string, within time.Duration, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening after %v: %v\n%s", addr, within, err, logs())
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a stand-in for a condition
	}
}

// submit hands one message for to to the MTA at addr with envelope sender from.
func submit(t *testing.T, addr, from, to string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Hello("app.hermod.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	if err := c.Mail(from, nil); err != nil {
		t.Fatalf("MAIL FROM:<%s>: %v", from, err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		t.Fatalf("RCPT TO:<%s>: %v", to, err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	msg := "From: Sakura Trading <billing@hermod.test>\r\nTo: <" + to + ">\r\nSubject: Invoice INV-42\r\n" +
		"Message-ID: <inv42." + localPart(to) + "@hermod.test>\r\nDate: " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n\r\nPlease find your invoice.\r\n"
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatalf("writing message: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Logf("QUIT: %v", err)
	}
}

// runScenarios submits one message per case through the MTA at submitAddr
// and checks every bounce that comes back to the bounce host.
func runScenarios(t *testing.T, mta, submitAddr, keep string, bounces *mtaServer, within time.Duration, logs func() string) {
	t.Helper()
	for local := range realCases {
		submit(t, submitAddr, "bounce+"+local+"@bounce.test", local+"@far.test")
	}
	want := 0
	for _, c := range realCases {
		want += len(c)
	}
	seen := map[string]int{}
	deadline := time.After(within)
	for n := 0; n < want; {
		var r received
		select {
		case r = <-bounces.got:
		case <-deadline:
			t.Fatalf("%s: %d of %d bounces after %v (seen %v)\n%s", mta, n, want, within, seen, logs())
		}
		n++
		if len(r.rcpts) != 1 || !strings.HasPrefix(r.rcpts[0], "bounce+") {
			t.Errorf("%s: bounce to %v, want one bounce+<case>@bounce.test", mta, r.rcpts)
			continue
		}
		local := strings.TrimPrefix(localPart(r.rcpts[0]), "bounce+")
		cases := realCases[local]
		i := seen[local]
		seen[local]++
		if i >= len(cases) {
			t.Errorf("%s: unexpected extra bounce for %s:\n%s", mta, local, r.data)
			continue
		}
		w := cases[i]
		if st, ok := w.statusBy[mta]; ok {
			w.status = st
		}
		// Kept beside the MTA's files, which stay when the test fails.
		if err := os.WriteFile(filepath.Join(keep, fmt.Sprintf("bounce-%s-%d.eml", local, i+1)), r.data, 0o644); err != nil {
			t.Fatal(err)
		}
		rep, err := Parse(bytes.NewReader(r.data))
		if err != nil {
			t.Fatal(err)
		}
		d := Decide(rep, local+"@far.test")
		if d.Kind != w.kind || d.Outcome != w.outcome || d.Status != w.status || d.Reason != w.reason || d.Hard != w.hard || !d.Matched {
			t.Errorf("%s: bounce %d for %s@far.test: got kind %s, outcome %s, status %s, reason %s, hard %v, matched %v (%q)\nwant kind %s, outcome %s, status %s, reason %s, hard %v\n--- bounce ---\n%s",
				mta, i+1, local, d.Kind, d.Outcome, d.Status, d.Reason, d.Hard, d.Matched, d.Diagnostic,
				w.kind, w.outcome, w.status, w.reason, w.hard, r.data)
		}
		// The same decision bounce parse prints.
		for _, l := range Lines("x", rep) {
			if SameAddress(l.Recipient, local+"@far.test") && (l.Reason != d.Reason || l.Hard != d.Hard || l.Status != d.Status || l.Action != d.Outcome) {
				t.Errorf("%s: bounce parse line %+v disagrees with Decide %+v", mta, l, d)
			}
		}
	}
}

// postfixBin is where Debian's postfix package puts the command the
// HERMOD_DEPS row probes.
const postfixBin = "/usr/sbin/postfix"

// TestRealPostfixBounces runs a private Postfix instance (its own config,
// queue and data directories, loopback ports; /etc/postfix is never read
// as configuration) that relays to the far MX and bounces to the bounce host.
func TestRealPostfixBounces(t *testing.T) {
	if testing.Short() {
		t.Skip("real MTA: not with -short")
	}
	requireTool(t, executable(postfixBin) && executable("/usr/lib/postfix/sbin/master"), "postfix ("+postfixBin+")")
	requireTool(t, os.Geteuid() == 0, "root (Postfix's master must start as root)")
	far := startServer(t, "mx.far.test", farScripts)
	bh := startServer(t, "mx.bounce.test", nil)
	dir, err := os.MkdirTemp("", "hermod-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "etc")
	for _, d := range []string{conf, filepath.Join(dir, "queue"), filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := chownUser(filepath.Join(dir, "data"), "postfix"); err != nil {
		t.Fatal(err)
	}
	smtpPort := freePort(t)
	mainCF := strings.Join([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(dir, "queue"),
		"data_directory = " + filepath.Join(dir, "data"),
		"maillog_file = " + filepath.Join(dir, "maillog"),
		"maillog_file_prefixes = " + dir,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = mta.postfix.test",
		"mydomain = postfix.test",
		"myorigin = $myhostname",
		"mydestination =",
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject",
		"relay_domains =",
		"transport_maps = inline:{ far.test=smtp:[127.0.0.1]:" + port(far.addr) + ", bounce.test=smtp:[127.0.0.1]:" + port(bh.addr) + " }",
		"smtp_dns_support_level = disabled",
		"smtp_tls_security_level = none",
		"smtpd_tls_security_level = none",
		"smtputf8_enable = no",
		"delay_warning_time = 1s",
		"maximal_queue_lifetime = 8s",
		"bounce_queue_lifetime = 8s",
		"queue_run_delay = 1s",
		"minimal_backoff_time = 1s",
		"maximal_backoff_time = 2s",
		"smtp_connect_timeout = 5s",
		"biff = no",
		"",
	}, "\n")
	masterCF := strings.Join([]string{
		"127.0.0.1:" + smtpPort + " inet n - n - - smtpd",
		"pickup unix n - n 60 1 pickup",
		"cleanup unix n - n - 0 cleanup",
		"qmgr unix n - n 300 1 qmgr",
		"rewrite unix - - n - - trivial-rewrite",
		"bounce unix - - n - 0 bounce",
		"defer unix - - n - 0 bounce",
		"trace unix - - n - 0 bounce",
		"verify unix - - n - 1 verify",
		"flush unix n - n 1000? 0 flush",
		"proxymap unix - - n - - proxymap",
		"smtp unix - - n - - smtp",
		"relay unix - - n - - smtp",
		"showq unix n - n - - showq",
		"error unix - - n - - error",
		"retry unix - - n - - error",
		"discard unix - - n - - discard",
		"local unix - n n - - local",
		"anvil unix - - n - 1 anvil",
		"scache unix - - n - 1 scache",
		"postlog unix-dgram n - n - 1 postlogd",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(masterCF), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		return "--- postfix maillog ---\n" + string(b)
	}
	if out, err := exec.Command(postfixBin, "-c", conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix -c %s start: %v\n%s\n%s", conf, err, out, logs())
	}
	t.Cleanup(func() {
		if out, err := exec.Command(postfixBin, "-c", conf, "stop").CombinedOutput(); err != nil {
			t.Errorf("postfix -c %s stop: %v\n%s", conf, err, out)
		}
		waitGone(t, filepath.Join(dir, "queue", "pid", "master.pid"))
	})
	addr := "127.0.0.1:" + smtpPort
	waitListening(t, addr, 20*time.Second, logs)
	runScenarios(t, "postfix", addr, dir, bh, 90*time.Second, logs)
}

// chownUser gives path to the system user name (and its primary group).
func chownUser(path, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
	}
	return os.Chown(path, uid, gid)
}

// waitGone polls until an MTA's pid file names no live process.
func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(pidFile)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		pid := strings.TrimSpace(string(b))
		if pid == "" {
			return
		}
		if _, err := os.Stat("/proc/" + pid); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	t.Errorf("MTA of %s still running", pidFile)
}

// eximBin is where scripts/deps.sh (install_exim) unpacks Debian's Exim.
const eximBin = "/opt/hermod/exim4/usr/sbin/exim4"

// TestRealEximBounces runs a private Exim daemon in the foreground (its
// own configuration file, spool, logs and loopback port) that relays to the
// far MX and bounces to the bounce host.
func TestRealEximBounces(t *testing.T) {
	if testing.Short() {
		t.Skip("real MTA: not with -short")
	}
	requireTool(t, executable(eximBin), "exim ("+eximBin+", fn:install_exim)")
	requireTool(t, os.Geteuid() == 0, "root (Exim runs deliveries as Debian-exim)")
	far := startServer(t, "mx.far.test", farScripts)
	bh := startServer(t, "mx.bounce.test", nil)
	dir, err := os.MkdirTemp("", "hermod-exim-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"spool", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := chownUser(filepath.Join(dir, d), "Debian-exim"); err != nil {
			t.Fatal(err)
		}
	}
	smtpPort := freePort(t)
	conf := strings.Join([]string{
		"exim_path = " + eximBin,
		"spool_directory = " + filepath.Join(dir, "spool"),
		"log_file_path = " + filepath.Join(dir, "log", "%slog"),
		"pid_file_path = " + filepath.Join(dir, "exim.pid"),
		"primary_hostname = mta.exim.test",
		"qualify_domain = exim.test",
		"daemon_smtp_ports = " + smtpPort,
		"local_interfaces = 127.0.0.1",
		"host_lookup =",
		"rfc1413_hosts =",
		"tls_advertise_hosts =",
		"keep_environment =",
		"acl_smtp_rcpt = acl_rcpt",
		"delay_warning = 2s:1h",
		"queue_run_max = 2",
		"",
		"begin acl",
		"acl_rcpt:",
		"  accept hosts = 127.0.0.1",
		"  deny message = relay not permitted",
		"",
		"begin routers",
		"far:",
		"  driver = manualroute",
		"  domains = far.test",
		"  route_list = * 127.0.0.1",
		"  transport = to_far",
		"  self = send",
		"bounce_host:",
		"  driver = manualroute",
		"  domains = bounce.test",
		"  route_list = * 127.0.0.1",
		"  transport = to_bounce",
		"  self = send",
		"",
		"begin transports",
		"to_far:",
		"  driver = smtp",
		"  port = " + port(far.addr),
		"  allow_localhost",
		"  hosts_avoid_tls = *",
		"to_bounce:",
		"  driver = smtp",
		"  port = " + port(bh.addr),
		"  allow_localhost",
		"  hosts_avoid_tls = *",
		"",
		"begin retry",
		"* * F,8s,2s",
		"",
	}, "\n")
	confFile := filepath.Join(dir, "exim.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"mainlog", "paniclog", "rejectlog"} {
			c, _ := os.ReadFile(filepath.Join(dir, "log", f))
			fmt.Fprintf(&b, "--- exim %s ---\n%s", f, c)
		}
		return b.String()
	}
	// -bdf: daemon in the foreground, so the test owns its PID; -q1s
	// runs the queue every second (delay warnings, retries, expiry).
	cmd := exec.Command(eximBin, "-C", confFile, "-bdf", "-q1s")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("exim: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	addr := "127.0.0.1:" + smtpPort
	waitListening(t, addr, 20*time.Second, func() string { return out.String() + logs() })
	runScenarios(t, "exim", addr, dir, bh, 90*time.Second, logs)
}

// The OpenSMTPD binaries scripts/deps.sh (install_opensmtpd) unpacks.
const (
	smtpdBin   = "/opt/hermod/opensmtpd/usr/sbin/smtpd"
	smtpctlBin = "/opt/hermod/opensmtpd/usr/sbin/smtpctl"
)

// TestRealOpenSMTPDBounces runs OpenSMTPD in the foreground (smtpd -d) in a
// private mount namespace: its compiled-in spool, socket and chroot paths
// (/var/spool/smtpd, /run/smtpd.sock, /var/lib/opensmtpd/empty) are
// temporary directories bound over /var/spool, /run and /var/lib for that
// process only. OpenSMTPD retries relays only every few minutes, so the
// test asks it to retry now (smtpctl schedule all, inside the namespace)
// while it waits for the delay notice and the expiry.
func TestRealOpenSMTPDBounces(t *testing.T) {
	if testing.Short() {
		t.Skip("real MTA: not with -short")
	}
	_, errU := exec.LookPath("unshare")
	_, errN := exec.LookPath("nsenter")
	_, errS := user.Lookup("opensmtpd")
	requireTool(t, executable(smtpdBin) && executable(smtpctlBin) && errU == nil && errN == nil && errS == nil,
		"opensmtpd ("+smtpdBin+", its users, unshare and nsenter; fn:install_opensmtpd)")
	requireTool(t, os.Geteuid() == 0, "root (a mount namespace and smtpd's privilege separation)")
	far := startServer(t, "mx.far.test", farScripts)
	bh := startServer(t, "mx.bounce.test", nil)
	dir, err := os.MkdirTemp("", "hermod-opensmtpd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o755}, {filepath.Join(dir, "spool"), 0o755}, {filepath.Join(dir, "spool", "smtpd"), 0o711},
		{filepath.Join(dir, "run"), 0o755}, {filepath.Join(dir, "lib"), 0o755},
		{filepath.Join(dir, "lib", "opensmtpd"), 0o755}, {filepath.Join(dir, "lib", "opensmtpd", "empty"), 0o755},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	smtpPort := freePort(t)
	conf := strings.Join([]string{
		"smtp max-message-size 10M",
		"queue ttl 8s",
		"bounce warn-interval 2s",
		"listen on 127.0.0.1 port " + smtpPort + " hostname mta.opensmtpd.test",
		`action "far" relay host smtp+notls://127.0.0.1:` + port(far.addr),
		`action "bh" relay host smtp+notls://127.0.0.1:` + port(bh.addr),
		`match from any for domain "far.test" action "far"`,
		`match for domain "far.test" action "far"`,
		`match from any for domain "bounce.test" action "bh"`,
		`match for domain "bounce.test" action "bh"`,
		"",
	}, "\n")
	confFile := filepath.Join(dir, "smtpd.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `set -e
mount --bind "$1/spool" /var/spool
mount --bind "$1/run" /run
mount --bind "$1/lib" /var/lib
exec "$2" -d -f "$3"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", dir, smtpdBin, confFile)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("opensmtpd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	logs := func() string { return "--- smtpd -d ---\n" + out.String() }
	addr := "127.0.0.1:" + smtpPort
	waitListening(t, addr, 20*time.Second, logs)
	// Ask for retries while waiting (bounded: stops with the test).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = exec.Command("nsenter", "-t", strconv.Itoa(cmd.Process.Pid), "-m", smtpctlBin, "schedule", "all").Run()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	runScenarios(t, "opensmtpd", addr, dir, bh, 90*time.Second, logs)
}

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
