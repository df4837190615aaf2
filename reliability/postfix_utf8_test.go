package reliability

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// postfixBin and saslPlainGlob are found exactly as scripts/deps.sh probes
// them (rows "postfix" and "sasl-plain").
const (
	postfixBin    = "/usr/sbin/postfix"
	saslPlainGlob = "/usr/lib/*/sasl2/libplain.so*"
)

// needTool skips the test when a tool is missing, or fails it under
// scripts/test.sh (HERMOD_REQUIRE_TOOLS=1), where skipping is a failure.
func needTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("HERMOD_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s is missing (HERMOD_REQUIRE_TOOLS=1): see scripts/deps.sh", what)
	}
	t.Skipf("%s is missing", what)
}

// TestPostfixRelaysSMTPUTF8: a private Postfix (its own config and queue,
// loopback ports) with smtputf8_enable = yes relays a message for a
// Japanese recipient through hermod's submission listener, authenticating
// with AUTH PLAIN, and hermod accepts it with 250 and stores the recipient
// in normalised form (domain as A-label, local part as given).
func TestPostfixRelaysSMTPUTF8(t *testing.T) {
	t.Parallel()
	fi, err := os.Stat(postfixBin)
	needTool(t, err == nil && fi.Mode()&0o111 != 0, postfixBin+" (Debian package postfix)")
	plain, _ := filepath.Glob(saslPlainGlob)
	needTool(t, len(plain) > 0, saslPlainGlob+" (Debian package libsasl2-modules, Postfix's SASL client PLAIN)")
	_, err = user.Lookup("postfix")
	needTool(t, err == nil && os.Geteuid() == 0, "root and the postfix user (postfix start)")

	d := startDaemon(t, testConfig(t, cfgOpts{sink: "127.0.0.1:1"}), daemonOpts())
	hermod := d.Addr("submission.listen")

	dir, err := os.MkdirTemp("", "hermod-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	conf, queue, data := filepath.Join(dir, "etc"), filepath.Join(dir, "spool"), filepath.Join(dir, "lib")
	for _, p := range []string{conf, queue, data} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pu, _ := user.Lookup("postfix")
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	if err := os.Chown(data, uid, gid); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	maillog := filepath.Join(dir, "maillog")
	_, hermodPort, _ := net.SplitHostPort(hermod)
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
config_directory = %s
queue_directory = %s
data_directory = %s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.utf8.test
mydomain = utf8.test
myorigin = utf8.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:%s
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtputf8_enable = yes
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:app:%s
smtp_sasl_security_options = noanonymous
smtp_sasl_mechanism_filter = plain
maillog_file = %s
maillog_file_prefixes = %s
biff = no
append_dot_mydomain = no
readme_directory = no
`, conf, queue, data, hermodPort, password, maillog, dir)
	masterCF := fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
`, inPort)
	os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCF), 0o644)
	os.WriteFile(filepath.Join(conf, "master.cf"), []byte(masterCF), 0o644)
	postfix := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, postfixBin, append([]string{"-c", conf}, args...)...).CombinedOutput()
	}
	logTail := func() string { b, _ := os.ReadFile(maillog); return string(b) }
	if out, err := postfix("start"); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, logTail())
	}
	t.Cleanup(func() { postfix("stop") })

	// Hand the message to Postfix with SMTPUTF8, as an application would.
	var c *smtp.Client
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err = smtp.Dial(fmt.Sprintf("127.0.0.1:%d", inPort))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling for Postfix's listener to come up
	}
	if err != nil {
		t.Fatalf("postfix smtpd: %v\n%s", err, logTail())
	}
	defer c.Close()
	const rcpt = "太郎@例え.jp"
	if err := c.Mail("app@saas.test", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatalf("MAIL to postfix: %v", err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		t.Fatalf("RCPT to postfix: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "From: app@saas.test\r\nTo: %s\r\nSubject: =?UTF-8?B?5LiA?=\r\n\r\nこんにちは\r\n", rcpt)
	if err := w.Close(); err != nil {
		t.Fatalf("DATA to postfix: %v", err)
	}
	c.Quit()

	// Postfix logs hermod's reply; it must be the 250 with the queue id.
	re := regexp.MustCompile(`status=(sent|deferred|bounced) \((.*)\)`)
	var m []string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if m = re.FindStringSubmatch(logTail()); m != nil {
			break
		}
	}
	if m == nil || m[1] != "sent" || !strings.Contains(m[2], "250 2.0.0 OK: queued as") {
		t.Fatalf("postfix relaying to hermod: %v\n%s", m, logTail())
	}
	id := reQueued.FindStringSubmatch(m[2])
	if id == nil {
		t.Fatalf("no queue id in %q", m[2])
	}
	msg, err := d.Store.Get(id[1])
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Recipients[0].Address; got != "太郎@xn--r8jz45g.jp" {
		t.Fatalf("stored recipient %q, want 太郎@xn--r8jz45g.jp", got)
	}
	summary(t, "smtputf8: postfix %s (smtputf8_enable = yes, SASL PLAIN) relayed to %s through hermod: %s; stored as %s",
		postfixVersion(), rcpt, m[2], msg.Recipients[0].Address)
}

func postfixVersion() string {
	out, _ := exec.Command("/usr/sbin/postconf", "-d", "mail_version").Output()
	return strings.TrimSpace(strings.TrimPrefix(string(out), "mail_version = "))
}
