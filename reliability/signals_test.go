package reliability

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestSignals runs the real binary: SIGHUP with a second user lets it log in
// while an open session keeps working; SIGHUP with a broken file keeps the
// running configuration and logs why; SIGTERM exits 0 and a restart
// delivers what was left (here a delivery cut short by the shutdown).
func TestSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and signals the real binary")
	}
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "hermod")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/hermod").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var holdMu sync.Mutex
	var hold chan struct{} // non-nil: Data waits for it to close, then refuses
	holding := make(chan struct{}, 1)
	holdData := func(testnet.Message) *smtp.SMTPError {
		holdMu.Lock()
		h := hold
		holdMu.Unlock()
		if h == nil {
			return nil
		}
		select {
		case holding <- struct{}{}:
		default:
		}
		select {
		case <-h:
		case <-time.After(30 * time.Second):
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "held, not taken"}
	}
	sink := testnet.NewSink(t, testnet.OnData(holdData))
	subAddr, bounceAddr, apiAddr := testnet.FreeAddr(t), testnet.FreeAddr(t), testnet.FreeAddr(t)
	hash2, _ := bcrypt.GenerateFromPassword([]byte("second-pass"), bcrypt.MinCost)
	conf := filepath.Join(dir, "hermod.toml")
	writeConf := func(second bool) {
		users := fmt.Sprintf("[[submission.users]]\nname = \"app\"\npassword_hash = %q\naccounts = [\"*\"]\n", hashOnce())
		if second {
			users += fmt.Sprintf("[[submission.users]]\nname = \"app2\"\npassword_hash = %q\naccounts = [\"*\"]\n", hash2)
		}
		c := fmt.Sprintf("hostname = \"hermod.test\"\ndata_dir = %q\nshutdown_timeout = \"2s\"\n[submission]\nlisten = %q\nidle_timeout = \"60s\"\n%s"+
			"[bounce]\nlisten = %q\ndomain = \"m.makeleaps.test\"\n[sender]\ndefault_from = \"bounce@makeleaps.test\"\ndkim_domain = \"makeleaps.test\"\ndkim_algorithm = \"ed25519\"\n"+
			"[relay]\nresolvers = [\"127.0.0.1:1\"]\nretry = [\"1s\"]\n[[relay.route]]\ndomain = \"*\"\nhost = %q\n[api]\nlisten = %q\n[log]\nlevel = \"info\"\n",
			filepath.Join(dir, "data"), subAddr, users, bounceAddr, sink.Addr(), apiAddr)
		if err := os.WriteFile(conf, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "hermod.log")
	logCount := func(s string) int {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), s)
	}
	waitLog := func(s string, n int) bool {
		for dl := time.Now().Add(15 * time.Second); time.Now().Before(dl); time.Sleep(20 * time.Millisecond) {
			if logCount(s) >= n {
				return true
			}
		}
		return false
	}
	start := func() (*exec.Cmd, chan error) {
		cmd := exec.Command(bin, "serve", "-config", conf)
		logf, _ := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait(); logf.Close() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Signal(syscall.SIGKILL)
				<-done
			}
		})
		for dl := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if c, err := net.Dial("tcp", subAddr); err == nil {
				c.Close()
				return cmd, done
			}
			if time.Now().After(dl) {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("hermod did not start:\n%s", b)
			}
		}
	}
	stopWith := func(cmd *exec.Cmd, done chan error) (int, bool) {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode(), true
			}
			return 0, err == nil
		case <-time.After(30 * time.Second):
			return -1, false
		}
	}
	login := func(user, pass string) (*client, string) {
		cl := mustDial(t, subAddr)
		cl.cmd("EHLO sig.test")
		return cl, cl.cmd(authLine(user, pass))
	}
	msg := "From: a@customer.test\r\nSubject: sig\r\n\r\nbody\r\n"

	writeConf(false)
	cmd, done := start()
	sessA, r := login("app", password)
	if !strings.HasPrefix(r, "235") {
		t.Fatalf("app login: %q", r)
	}
	if cl, r := login("app2", "second-pass"); !strings.HasPrefix(r, "535") {
		t.Errorf("app2 before reload: %q, want 535", r)
	} else {
		cl.close()
	}

	// Reload with a second user.
	writeConf(true)
	cmd.Process.Signal(syscall.SIGHUP)
	reloadOK := waitLog("configuration reloaded", 1)
	cl, r := login("app2", "second-pass")
	cl.close()
	if !reloadOK || !strings.HasPrefix(r, "235") {
		reloadOK = false
		t.Errorf("after SIGHUP: reloaded logged %v, app2 login %q", reloadOK, r)
	}
	id, r := sessA.send("app@saas.test", []string{"kept@dest.test"}, msg)
	if id == "" {
		reloadOK = false
		t.Errorf("session open across the reload: %q", r)
	}

	// Reload with a broken file: refused, the running configuration stays.
	os.WriteFile(conf, []byte("hostname = \"hermod.test\"\n[submission\nlisten = 127.0.0.1\n"), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	badRefused := waitLog("reload refused", 1)
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "reload refused") || !strings.Contains(string(b), "hermod.toml") {
		badRefused = false
		t.Errorf("the log does not say why the reload was refused:\n%s", b)
	}
	for _, u := range [][2]string{{"app", password}, {"app2", "second-pass"}} {
		cl, r := login(u[0], u[1])
		cl.close()
		if !strings.HasPrefix(r, "235") {
			badRefused = false
			t.Errorf("after a broken reload, %s: %q", u[0], r)
		}
	}
	if id, r := sessA.send("app@saas.test", []string{"kept2@dest.test"}, msg); id == "" {
		badRefused = false
		t.Errorf("open session after a broken reload: %q", r)
	}
	sessA.cmd("QUIT")
	sessA.close()
	if !badRefused {
		b, _ := os.ReadFile(logPath)
		t.Logf("log:\n%s", b)
	}
	for dl := time.Now().Add(15 * time.Second); (sink.Count("kept@dest.test") == 0 || sink.Count("kept2@dest.test") == 0) && time.Now().Before(dl); {
		time.Sleep(50 * time.Millisecond)
	}

	// SIGTERM while a delivery hangs at the MX: exit 0, and the restarted
	// daemon delivers it.
	writeConf(true)
	holdMu.Lock()
	hold = make(chan struct{})
	h := hold
	holdMu.Unlock()
	cl, _ = login("app", password)
	leftID, r := cl.send("app@saas.test", []string{"left@dest.test"}, msg)
	cl.close()
	if leftID == "" {
		t.Fatalf("submit: %q", r)
	}
	select {
	case <-holding:
	case <-time.After(15 * time.Second):
		t.Error("the delivery never reached the MX")
	}
	code, exited := stopWith(cmd, done)
	holdMu.Lock()
	hold = nil
	holdMu.Unlock()
	close(h)
	sigtermOK := exited && code == 0
	if !sigtermOK {
		t.Errorf("SIGTERM: exited %v with %d, want 0", exited, code)
	}
	cmd, done = start()
	for dl := time.Now().Add(20 * time.Second); sink.Count("left@dest.test") == 0 && time.Now().Before(dl); {
		time.Sleep(50 * time.Millisecond)
	}
	restartOK := sink.Count("left@dest.test") == 1
	if !restartOK {
		t.Errorf("after restart, left@dest.test delivered %d times, want 1", sink.Count("left@dest.test"))
	}
	if code, exited := stopWith(cmd, done); !exited || code != 0 {
		sigtermOK = false
		t.Errorf("second SIGTERM: exited %v with %d", exited, code)
	}
	word := func(ok bool, yes, no string) string {
		if ok {
			return yes
		}
		return no
	}
	summary(t, "signals: %s, %s, %s, %s",
		word(reloadOK, "reload ok", "RELOAD FAILED"),
		word(badRefused, "bad reload refused", "BAD RELOAD NOT REFUSED"),
		word(sigtermOK, "sigterm exit 0", "SIGTERM DID NOT EXIT 0"),
		word(restartOK, "restart delivered what was left", "RESTART DID NOT DELIVER"))
}
