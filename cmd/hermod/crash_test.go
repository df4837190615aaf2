package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestCrashKill9 kills the real hermod binary with SIGKILL at random moments
// during a burst of submissions and deliveries, restarts it each time, and
// checks that every recipient acknowledged with 250 reaches the MX at least
// once. HERMOD_CRASH_KILLS sets the number of kills (default 3; the
// reliability suite uses 20).
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the real binary")
	}
	kills := 3
	if v, err := strconv.Atoi(os.Getenv("HERMOD_CRASH_KILLS")); err == nil && v > 0 {
		kills = v
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "hermod")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sink := testnet.NewSink(t, testnet.DiscardData())
	subAddr, bounceAddr, apiAddr := testnet.FreeAddr(t), testnet.FreeAddr(t), testnet.FreeAddr(t)
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	conf := filepath.Join(dir, "hermod.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`hostname = "hermod.test"
data_dir = %q
[submission]
listen = %q
[[submission.users]]
name = "app"
password_hash = %q
accounts = ["*"]
[bounce]
listen = %q
domain = "m.makeleaps.test"
[sender]
default_from = "bounce@makeleaps.test"
dkim_domain = "makeleaps.test"
dkim_algorithm = "ed25519"
[relay]
resolvers = ["127.0.0.1:1"]
retry = ["200ms"]
[[relay.route]]
domain = "*"
host = %q
[api]
listen = %q
[log]
level = "warn"
`, filepath.Join(dir, "data"), subAddr, hash, bounceAddr, sink.Addr(), apiAddr)), 0o600)

	var mu sync.Mutex
	acked := map[string]bool{} // queue id → acknowledged
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve", "-config", conf)
		logf, _ := os.OpenFile(filepath.Join(dir, "hermod.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			if c, err := net.Dial("tcp", subAddr); err == nil {
				c.Close()
				return cmd
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(dir, "hermod.log"))
				t.Fatalf("hermod did not start:\n%s", log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for k := 0; k < kills; k++ {
		cmd := start()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for c := 0; c < 8; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				burst(subAddr, fmt.Sprintf("k%dc%d", k, c), stop, func(id string) {
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				})
			}(c)
		}
		time.Sleep(time.Duration(150+rand.IntN(500)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		close(stop)
		wg.Wait()
	}
	cmd := start()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	deadline := time.Now().Add(60 * time.Second)
	var lost []string
	for {
		lost = lost[:0]
		mu.Lock()
		for id := range acked {
			if sink.CountID(id) == 0 {
				lost = append(lost, id)
			}
		}
		mu.Unlock()
		if len(lost) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	dups := 0
	for id := range acked {
		if n := sink.CountID(id); n > 1 {
			dups += n - 1
		}
	}
	summary := fmt.Sprintf("crash: %d kills, %d acknowledged, %d lost, %d duplicates", kills, len(acked), len(lost), dups)
	t.Log(summary)
	fmt.Println(summary)
	if len(acked) == 0 {
		t.Fatal("no message was acknowledged: the burst did not run")
	}
	if len(lost) > 0 {
		t.Fatalf("%d acknowledged messages never delivered, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
}

var reID = regexp.MustCompile(`^250 2\.0\.0 OK: queued as ([0-9a-v]{16})`)

// burst submits messages over one authenticated connection until stop or an
// error (the daemon was killed), reporting each acknowledged id.
func burst(addr, tag string, stop <-chan struct{}, ack func(string)) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	read := func() string {
		var last string
		for {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			l, err := r.ReadString('\n')
			if err != nil {
				return ""
			}
			last = strings.TrimRight(l, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				return last
			}
		}
	}
	send := func(s string) bool { _, err := io.WriteString(c, s); return err == nil }
	read()
	auth := base64.StdEncoding.EncodeToString([]byte("\x00app\x00pw"))
	if !send("EHLO crash.test\r\n") || !strings.HasPrefix(read(), "250") ||
		!send("AUTH PLAIN "+auth+"\r\n") || !strings.HasPrefix(read(), "235") {
		return
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		rcpt := fmt.Sprintf("%s-%d@dest.test", tag, i)
		if !send("MAIL FROM:<app@saas.test>\r\n") || !strings.HasPrefix(read(), "250") ||
			!send("RCPT TO:<"+rcpt+">\r\n") || !strings.HasPrefix(read(), "250") ||
			!send("DATA\r\n") || !strings.HasPrefix(read(), "354") ||
			!send("From: a@customer.test\r\nSubject: "+rcpt+"\r\n\r\n"+strings.Repeat("crash test body\r\n", 50)+".\r\n") {
			return
		}
		if m := reID.FindStringSubmatch(read()); m != nil {
			ack(m[1])
		} else {
			return
		}
	}
}
