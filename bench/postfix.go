package bench

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// postfixInstance is a private Postfix (its own config, queue and data
// directories under the bench's temporary directory) relaying everything to
// the sink, optionally through OpenDKIM as a milter.
type postfixInstance struct {
	dir, confDir, queueDir string
	subAddr                string
	dkim                   bool

	opendkim     *exec.Cmd
	opendkimDone chan struct{}
	started      bool
	stderr       io.Writer
}

// postfixPackages checks the commands the Postfix peer needs and names the
// Debian package of each one missing.
func postfixPackages(dkim bool) error {
	need := [][2]string{{"postfix", "postfix"}, {"postconf", "postfix"}}
	if dkim {
		need = append(need, [2]string{"opendkim", "opendkim"})
	}
	var missing []string
	for _, n := range need {
		if _, err := lookPath(n[0]); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", n[0], n[1]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("postfix peer: missing %s: apt-get install postfix opendkim", strings.Join(missing, ", "))
	}
	if !isRoot() {
		return errors.New("postfix peer: `postfix start` needs root (the master runs as root and drops to mail_owner)")
	}
	return nil
}

// lookPath finds a command in $PATH or in /usr/sbin and /usr/lib/postfix/sbin
// (not in every user's $PATH).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/lib/postfix/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// startPostfix writes main.cf and master.cf under dir and starts Postfix
// (and OpenDKIM when dkim), relaying everything to sinkAddr.
func startPostfix(ctx context.Context, dir, sinkAddr string, dkim bool, sessions int, stderr io.Writer) (*postfixInstance, error) {
	if err := postfixPackages(dkim); err != nil {
		return nil, err
	}
	p := &postfixInstance{dir: dir, confDir: filepath.Join(dir, "etc"), queueDir: filepath.Join(dir, "spool"), dkim: dkim, stderr: stderr}
	for _, d := range []string{p.confDir, p.queueDir, filepath.Join(dir, "lib")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// The master takes its lock in data_directory as mail_owner.
	if err := chownTo(filepath.Join(dir, "lib"), "postfix"); err != nil {
		return nil, fmt.Errorf("postfix peer: %w", err)
	}
	subPort, err := freePort()
	if err != nil {
		return nil, err
	}
	p.subAddr = fmt.Sprintf("127.0.0.1:%d", subPort)
	milter := ""
	if dkim {
		milterPort, err := freePort()
		if err != nil {
			return nil, err
		}
		if err := p.startOpenDKIM(ctx, milterPort); err != nil {
			return nil, err
		}
		milter = fmt.Sprintf("inet:127.0.0.1:%d", milterPort)
	}
	// Enough smtpd processes for every session, and as many outbound
	// connections to the sink as hermod's relay.per_destination (20) within
	// relay.concurrency (100).
	procs := max(100, sessions+100)
	mainCF := fmt.Sprintf(`# Written by hermod bench; removed when it ends.
compatibility_level = 3.6
config_directory = %[1]s
queue_directory = %[2]s
data_directory = %[3]s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
relayhost = [127.0.0.1]:%[4]s
default_transport = smtp
relay_transport = smtp
smtp_host_lookup = native
smtp_dns_support_level = disabled
default_process_limit = %[5]d
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtp_destination_concurrency_limit = 20
default_destination_concurrency_limit = 20
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_milters = %[6]s
milter_default_action = tempfail
milter_protocol = 6
maillog_file = %[7]s
maillog_file_prefixes = %[8]s
biff = no
append_dot_mydomain = no
readme_directory = no
`, p.confDir, p.queueDir, filepath.Join(dir, "lib"), portOf(sinkAddr), procs, milter, filepath.Join(dir, "maillog"), dir)
	// chroot off (column 5 "n"): nothing to copy into the queue directory.
	masterCF := fmt.Sprintf(`# Written by hermod bench; removed when it ends.
127.0.0.1:%d inet n - n - - smtpd
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
proxywrite unix - - n -    1 proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
virtual   unix  - n n -    - virtual
lmtp      unix  - - n -    - lmtp
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
`, subPort)
	if err := os.WriteFile(filepath.Join(p.confDir, "main.cf"), []byte(mainCF), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.confDir, "master.cf"), []byte(masterCF), 0o644); err != nil {
		return nil, err
	}
	if out, err := p.postfix(ctx, "check"); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix check: %v\n%s%s", err, out, p.logTail())
	}
	if out, err := p.postfix(ctx, "start"); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix start: %v\n%s%s", err, out, p.logTail())
	}
	p.started = true
	if err := waitListening(ctx, p.subAddr, 20*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix: %w\n%s", err, p.logTail())
	}
	return p, nil
}

func portOf(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	return addr[i+1:]
}

func (p *postfixInstance) postfix(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := lookPath("postfix")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, append([]string{"-c", p.confDir}, args...)...).CombinedOutput()
}

// startOpenDKIM generates an RSA-2048 key and runs opendkim in the
// foreground as a milter on 127.0.0.1:port, signing mail from bench.test.
func (p *postfixInstance) startOpenDKIM(ctx context.Context, port int) error {
	bin, _ := lookPath("opendkim")
	kdir := filepath.Join(p.dir, "dkim")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	keyFile := filepath.Join(kdir, "bench.private")
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
		return err
	}
	user := "opendkim"
	if chownTo(keyFile, user) != nil {
		user = ""
	}
	conf := fmt.Sprintf(`# Written by hermod bench; removed when it ends.
Syslog no
Mode s
Domain bench.test
Selector bench
KeyFile %s
Socket inet:%d@127.0.0.1
InternalHosts 127.0.0.1
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
RequireSafeKeys false
Background no
PidFile %s
`, keyFile, port, filepath.Join(kdir, "opendkim.pid"))
	if user != "" {
		conf += "UserID " + user + "\n"
	}
	confFile := filepath.Join(kdir, "opendkim.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(kdir, "opendkim.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-f", "-x", confFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start opendkim: %w", err)
	}
	p.opendkim, p.opendkimDone = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(p.opendkimDone) }()
	if err := waitListening(ctx, fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		b, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("opendkim: %w\n%s", err, b)
	}
	return nil
}

// chownTo gives path to the system user name (and its primary group).
func chownTo(path, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(path, uid, gid)
}

// masterPID returns the pid of the Postfix master, or 0.
func (p *postfixInstance) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.queueDir, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// pids returns the Postfix master and, when running, opendkim.
func (p *postfixInstance) pids() []int {
	var out []int
	if pid := p.masterPID(); pid > 0 {
		out = append(out, pid)
	}
	if p.opendkim != nil {
		out = append(out, p.opendkim.Process.Pid)
	}
	return out
}

func (p *postfixInstance) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return tail(string(b), 1500)
}

// stop stops Postfix and OpenDKIM and waits (up to 15s) for the master to
// exit, so that the directories can be removed.
func (p *postfixInstance) stop() {
	if p.started {
		master := p.masterPID()
		if out, err := p.postfix(context.Background(), "stop"); err != nil {
			fmt.Fprintf(p.stderr, "bench: postfix stop: %v\n%s", err, out)
		}
		p.started = false
		if master > 0 {
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", master)); err != nil {
					break
				}
			}
		}
	}
	if p.opendkim != nil {
		stopProcess(p.opendkim.Process, p.opendkimDone, 5*time.Second)
		p.opendkim = nil
	}
}
