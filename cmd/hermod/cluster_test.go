package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net"
	"net/http"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/internal/etcdtest"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// The cluster tests run real processes: three etcd members (etcdtest) and
// three hermod nodes built from this package, delivering to one sink MX,
// with a miekg/dns server for domain verification. Everything is on
// loopback.

// hermodNode is one hermod process of a test cluster.
type hermodNode struct {
	t                *testing.T
	id               string
	dir, conf, bin   string
	sub, bounce, api string
	token            string
	mu               sync.Mutex
	cmd              *exec.Cmd
	exited           chan struct{}
	logPath          string
}

type testCluster struct {
	t            *testing.T
	etcd         *etcdtest.Cluster
	dns          *testnet.DNS
	sink         *testnet.Sink
	nodes        []*hermodNode
	bin, hash    string
	secret, verp string // the shared secret files
}

// buildHermod builds the binary once per test.
func buildHermod(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hermod")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// startCluster starts etcd, the DNS server, the sink and n hermod nodes
// sharing one cluster secret and one VERP secret.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	tc := newTestCluster(t)
	for i := 1; i <= n; i++ {
		tc.addNode(fmt.Sprintf("n%d", i), true)
	}
	for _, nd := range tc.nodes {
		nd.start()
	}
	return tc
}

// newTestCluster starts etcd, the DNS server and the sink; no node yet.
func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("runs etcd and hermod processes")
	}
	tc := &testCluster{t: t, etcd: etcdtest.Start(t, 3), dns: testnet.NewDNS(t), sink: testnet.NewSink(t), bin: buildHermod(t)}
	shared := t.TempDir()
	tc.secret, tc.verp = filepath.Join(shared, "cluster.secret"), filepath.Join(shared, "verp.secret")
	writeSecret(t, tc.secret, "cluster-secret-for-tests-0123456789abcdef")
	writeSecret(t, tc.verp, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	tc.hash = string(hash)
	t.Cleanup(func() {
		for _, nd := range tc.nodes {
			nd.stop()
		}
		if t.Failed() {
			for _, nd := range tc.nodes {
				log, _ := os.ReadFile(nd.logPath)
				t.Logf("--- %s log (tail) ---\n%s", nd.id, tail(string(log), 6000))
			}
		}
	})
	return tc
}

// addNode makes a node's directory and configuration (with a [cluster]
// section when clustered); it does not start it.
func (tc *testCluster) addNode(id string, clustered bool) *hermodNode {
	t := tc.t
	t.Helper()
	nd := &hermodNode{t: t, id: id, dir: t.TempDir(), bin: tc.bin,
		sub: testnet.FreeAddr(t), bounce: testnet.FreeAddr(t), api: testnet.FreeAddr(t)}
	nd.conf = filepath.Join(nd.dir, "hermod.toml")
	nd.logPath = filepath.Join(nd.dir, "hermod.log")
	if err := os.MkdirAll(filepath.Join(nd.dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, tc.verp, filepath.Join(nd.dir, "data", "verp.secret"))
	tc.writeConf(nd, clustered)
	tc.nodes = append(tc.nodes, nd)
	return nd
}

// writeConf writes nd's configuration.
func (tc *testCluster) writeConf(nd *hermodNode, clustered bool) {
	t := tc.t
	t.Helper()
	conf := fmt.Sprintf(`hostname = "%s.hermod.test"
data_dir = %q
shutdown_timeout = "5s"
[submission]
listen = %q
[[submission.users]]
name = "app"
password_hash = %q
accounts = ["*"]
[bounce]
listen = %q
domain = "m.makeleaps.test"
verp_secret_file = "verp.secret"
[sender]
default_from = "noreply@makeleaps.test"
dkim_domain = "makeleaps.test"
dkim_algorithm = "ed25519"
[relay]
resolvers = [%q]
retry = ["300ms"]
[[relay.route]]
domain = "*"
host = %q
[api]
listen = %q
[log]
level = "info"
`, nd.id, filepath.Join(nd.dir, "data"), nd.sub, tc.hash, nd.bounce, tc.dns.Addr(), tc.sink.Addr(), nd.api)
	if clustered {
		endpoints, _ := json.Marshal(tc.etcd.Endpoints())
		conf += fmt.Sprintf(`[cluster]
node_id = %q
etcd_endpoints = %s
advertise = "http://%s"
secret_file = %q
heartbeat = "1s"
etcd_request_timeout = "2s"
etcd_dial_timeout = "2s"
`, nd.id, endpoints, nd.api, tc.secret)
	}
	if err := os.WriteFile(nd.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func writeSecret(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs the node and waits until its API answers.
func (nd *hermodNode) start() {
	nd.t.Helper()
	cmd := exec.Command(nd.bin, "serve", "-config", nd.conf)
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		nd.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		nd.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	nd.mu.Lock()
	nd.cmd, nd.exited = cmd, exited
	nd.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if tok, err := os.ReadFile(filepath.Join(nd.dir, "data", "api.token")); err == nil {
			nd.token = strings.TrimSpace(string(tok))
			if c, err := net.Dial("tcp", nd.api); err == nil {
				c.Close()
				return
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(nd.logPath)
			nd.t.Fatalf("%s exited at start:\n%s", nd.id, tail(string(log), 4000))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(nd.logPath)
			nd.t.Fatalf("%s did not start:\n%s", nd.id, tail(string(log), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the exit.
func (nd *hermodNode) kill() { nd.signal(syscall.SIGKILL) }

// stop sends SIGTERM and waits for the exit.
func (nd *hermodNode) stop() { nd.signal(syscall.SIGTERM) }

func (nd *hermodNode) signal(sig syscall.Signal) {
	nd.mu.Lock()
	cmd, exited := nd.cmd, nd.exited
	nd.cmd = nil
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		nd.t.Errorf("%s did not stop on %v", nd.id, sig)
	}
}

// call makes an API request and decodes the JSON answer into out (if not
// nil); it returns the status and the raw body.
func (nd *hermodNode) call(method, path string, body any, out any) (int, string) {
	nd.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+nd.api+path, rd)
	req.Header.Set("Authorization", "Bearer "+nd.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		nd.t.Fatalf("%s %s on %s: %v", method, path, nd.id, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			nd.t.Fatalf("%s %s on %s: %v in %s", method, path, nd.id, err, raw)
		}
	}
	return resp.StatusCode, string(raw)
}

// mustCall is call that fails the test on a status other than want.
func (nd *hermodNode) mustCall(want int, method, path string, body any, out any) string {
	nd.t.Helper()
	code, raw := nd.call(method, path, body, out)
	if code != want {
		nd.t.Fatalf("%s %s on %s = %d %s; want %d", method, path, nd.id, code, raw, want)
	}
	return raw
}

var reClusterID = regexp.MustCompile(`^250 2\.0\.0 OK: queued as ([0-9a-z]+-[0-9a-v]{16})`)

// submit sends one message over authenticated SMTP and returns its id.
func (nd *hermodNode) submit(rcpt string, headers ...string) string {
	nd.t.Helper()
	id, reply := smtpSubmit(nd.sub, rcpt, headers...)
	if id == "" {
		nd.t.Fatalf("submit to %s for %s: %s", nd.id, rcpt, reply)
	}
	return id
}

// smtpSubmit is submit without a test: the id ("" when refused) and the
// last reply.
func smtpSubmit(addr, rcpt string, headers ...string) (id, reply string) {
	c, err := dialSMTP(addr)
	if err != nil {
		return "", err.Error()
	}
	defer c.Close()
	auth := base64.StdEncoding.EncodeToString([]byte("\x00app\x00pw"))
	hdr := "From: app@saas.test\r\n"
	for _, h := range headers {
		if strings.HasPrefix(h, "From:") {
			hdr = ""
		}
	}
	hdr += strings.Join(append(headers, "Subject: cluster test for "+rcpt), "\r\n") + "\r\n"
	for _, st := range []smtpStep{{"", "220"}, {"EHLO client.test\r\n", "250"}, {"AUTH PLAIN " + auth + "\r\n", "235"},
		{"MAIL FROM:<app@saas.test>\r\n", "250"}, {"RCPT TO:<" + rcpt + ">\r\n", "250"},
		{"DATA\r\n", "354"}, {hdr + "\r\nhello from the cluster test\r\n.\r\n", "250"}} {
		if reply = c.step(st); !strings.HasPrefix(reply, st.want) {
			return "", reply
		}
	}
	io.WriteString(c, "QUIT\r\n")
	if m := reClusterID.FindStringSubmatch(reply); m != nil {
		return m[1], reply
	}
	return "", reply
}

// smtpConn is a client connection that reads whole (multi-line) replies.
type smtpConn struct {
	net.Conn
	r *bufio.Reader
}

// smtpStep is a command ("" for none: the greeting) and the reply code wanted.
type smtpStep struct{ cmd, want string }

func dialSMTP(addr string) (*smtpConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &smtpConn{c, bufio.NewReader(c)}, nil
}

// step sends st.cmd and returns the last line of the reply.
func (c *smtpConn) step(st smtpStep) string {
	if st.cmd != "" {
		io.WriteString(c, st.cmd)
	}
	for {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		l, err := c.r.ReadString('\n')
		if err != nil {
			return "read: " + err.Error()
		}
		if l = strings.TrimRight(l, "\r\n"); len(l) < 4 || l[3] != '-' {
			return l
		}
	}
}

// sendDSN delivers a delivery status notification for rcpt (hard: 5.1.1)
// to the bounce listener at addr, addressed to the VERP address verp.
func sendDSN(t *testing.T, addr, verp, rcpt string) {
	t.Helper()
	c, err := dialSMTP(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dsn := strings.ReplaceAll(`From: MAILER-DAEMON@mx.dest.test
To: `+verp+`
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

The mail for <`+rcpt+`> could not be delivered: no such user.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.dest.test

Final-Recipient: rfc822; `+rcpt+`
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.dest.test
Diagnostic-Code: smtp; 550 5.1.1 <`+rcpt+`>: Recipient address rejected: User unknown

--BOUNDARY--
`, "\n", "\r\n")
	for _, st := range []smtpStep{
		{"", "220"}, {"EHLO mx.dest.test\r\n", "250"}, {"MAIL FROM:<>\r\n", "250"},
		{"RCPT TO:<" + verp + ">\r\n", "250"}, {"DATA\r\n", "354"}, {dsn + ".\r\n", "250"},
	} {
		if got := c.step(st); !strings.HasPrefix(got, st.want) {
			t.Fatalf("DSN to %s: after %q got %q, want %s", addr, strings.TrimSpace(st.cmd[:min(len(st.cmd), 40)]), got, st.want)
		}
	}
	io.WriteString(c, "QUIT\r\n")
}

// eventually polls cond until it holds or d passes, then fails with what
// the last try said.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, d, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sinkMessage waits for the MX to have a message for rcpt matching match.
func (tc *testCluster) sinkMessage(rcpt string, match func(testnet.Message) bool, d time.Duration) testnet.Message {
	tc.t.Helper()
	var found testnet.Message
	eventually(tc.t, d, "a message for "+rcpt+" at the MX", func() (bool, string) {
		for _, m := range tc.sink.Messages() {
			for _, to := range m.To {
				if to == rcpt && (match == nil || match(m)) {
					found = m
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("%d messages at the MX", len(tc.sink.Messages()))
	})
	return found
}

// sinkCount counts the MX's messages for rcpt whose decoded Subject
// contains s.
func (tc *testCluster) sinkCount(rcpt, s string) int {
	n := 0
	dec := new(mime.WordDecoder)
	for _, m := range tc.sink.Messages() {
		if !slices.Contains(m.To, rcpt) {
			continue
		}
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			continue
		}
		subj, err := dec.DecodeHeader(msg.Header.Get("Subject"))
		if err == nil && strings.Contains(subj, s) {
			n++
		}
	}
	return n
}

// messageView is the part of GET /v1/messages/{id} the tests read.
type messageView struct {
	ID         string `json:"id"`
	Recipients []struct {
		Address string `json:"address"`
		Status  string `json:"status"`
		Reason  string `json:"reason"`
	} `json:"recipients"`
}

// rcptStatus is the status of the first recipient of id as nd's API says.
func (nd *hermodNode) rcptStatus(id string) (string, string) {
	nd.t.Helper()
	var m messageView
	code, raw := nd.call("GET", "/v1/messages/"+id, nil, &m)
	if code != 200 || len(m.Recipients) == 0 {
		return fmt.Sprintf("HTTP %d", code), raw
	}
	return m.Recipients[0].Status, raw
}

func (nd *hermodNode) waitStatus(id, want string, d time.Duration) {
	nd.t.Helper()
	eventually(nd.t, d, fmt.Sprintf("message %s %s through %s", id, want, nd.id), func() (bool, string) {
		st, raw := nd.rcptStatus(id)
		return st == want, raw
	})
}

// TestClusterEndToEnd: an account and domain made through node 1 verify
// once and sign node 3's mail; node 2's message is read through node 1; a
// DSN for it at node 3 bounces it and suppresses the address for node 1.
func TestClusterEndToEnd(t *testing.T) {
	tc := startCluster(t, 3)
	n1, n2, n3 := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	n1.mustCall(200, "PUT", "/v1/accounts/acme", map[string]any{"owner": "owner@acme.test", "custom_domain": true}, nil)
	var dv struct {
		Records []struct {
			Zone string `json:"zone"`
		} `json:"records"`
	}
	n1.mustCall(201, "POST", "/v1/accounts/acme/domains", map[string]any{"domain": "acme.test"}, &dv)
	if len(dv.Records) != 2 {
		t.Fatalf("domain records: %+v", dv)
	}
	for _, r := range dv.Records {
		tc.dns.Add(r.Zone)
	}
	// Every node asks for a check at once: the cluster verifies once.
	var wg sync.WaitGroup
	for _, nd := range tc.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.call("POST", "/v1/accounts/acme/domains/acme.test/check", nil, nil)
		}()
	}
	wg.Wait()
	eventually(t, 10*time.Second, "acme.test verified through node 3", func() (bool, string) {
		var d struct {
			Status string `json:"status"`
		}
		_, raw := n3.call("GET", "/v1/accounts/acme/domains/acme.test", nil, &d)
		return d.Status == "verified", raw
	})

	// Node 3's sender rule uses the domain: From kept, signed d=acme.test.
	id3 := n3.submit("reader@dest.test", "From: Taro <taro@acme.test>", "X-Hermod-Account: acme")
	m := tc.sinkMessage("reader@dest.test", nil, 10*time.Second)
	if !bytes.Contains(m.Data, []byte("d=acme.test")) || !bytes.Contains(m.Data, []byte("taro@acme.test")) {
		t.Fatalf("node 3's message %s was not sent as acme.test:\n%s", id3, m.Data[:min(len(m.Data), 1500)])
	}

	// A message submitted to node 2, read through node 1.
	id2 := n2.submit("gone@dest.test")
	if !strings.HasPrefix(id2, "n2-") {
		t.Fatalf("node 2's id %q does not name node 2", id2)
	}
	bounced := tc.sinkMessage("gone@dest.test", nil, 10*time.Second)
	n1.waitStatus(id2, "sent", 10*time.Second)

	// Its DSN arrives at node 3: bounced (seen through node 2 and node 1),
	// and the address is suppressed for node 1's next submission.
	sendDSN(t, n3.bounce, bounced.From, "gone@dest.test")
	n2.waitStatus(id2, "bounced", 15*time.Second)
	n1.waitStatus(id2, "bounced", 5*time.Second)
	eventually(t, 10*time.Second, "gone@dest.test suppressed, seen through node 1", func() (bool, string) {
		code, raw := n1.call("GET", "/v1/suppressions/gone@dest.test", nil, nil)
		return code == 200, raw
	})
	id1 := n1.submit("gone@dest.test")
	n1.waitStatus(id1, "suppressed", 10*time.Second)

	// Lists and searches answer for every node.
	var found struct {
		Messages   []messageView `json:"messages"`
		Unanswered []string      `json:"unanswered"`
	}
	n3.mustCall(200, "GET", "/v1/messages?recipient=gone@dest.test", nil, &found)
	if len(found.Messages) != 2 || len(found.Unanswered) != 0 {
		t.Fatalf("search through node 3 = %d messages, unanswered %v; want node 1's and node 2's", len(found.Messages), found.Unanswered)
	}

	// Exactly one "started" and one "complete" mail reached the owner,
	// though three nodes checked the domain at once.
	eventually(t, 10*time.Second, "the owner's two notices at the MX", func() (bool, string) {
		started := tc.sinkCount("owner@acme.test", "Domain verification started")
		complete := tc.sinkCount("owner@acme.test", "Domain verification complete")
		return started >= 1 && complete >= 1, fmt.Sprintf("%d started, %d complete", started, complete)
	})
	started := tc.sinkCount("owner@acme.test", "Domain verification started")
	complete := tc.sinkCount("owner@acme.test", "Domain verification complete")
	if started != 1 || complete != 1 {
		t.Fatalf("the owner got %d started and %d complete mails; want exactly one of each", started, complete)
	}
}

// errorCode is the "code" of an API error answer.
func errorCode(raw string) string {
	var e struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal([]byte(raw), &e)
	return e.Code
}

// clusterStatus runs `hermod cluster status -json` with nd's configuration.
func (nd *hermodNode) clusterStatus() (ClusterStatus, string) {
	nd.t.Helper()
	out, err := exec.Command(nd.bin, "cluster", "status", "-json", "-config", nd.conf).CombinedOutput()
	var st ClusterStatus
	if err != nil {
		return st, fmt.Sprintf("%v: %s", err, out)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Sprintf("%v: %s", err, out)
	}
	return st, string(out)
}

// TestClusterEtcdFaults: with one etcd member down everything goes on;
// with two of three down the nodes accept and deliver from their copy,
// control writes answer 503, and a hard bounce meanwhile is applied to
// etcd once the quorum is back.
func TestClusterEtcdFaults(t *testing.T) {
	tc := startCluster(t, 3)
	n1, n2, n3 := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	t.Run("one member down", func(t *testing.T) {
		tc.etcd.Kill(0)
		defer tc.etcd.Restart(0)
		for i, nd := range tc.nodes {
			rcpt := fmt.Sprintf("one-down-%d@dest.test", i)
			nd.submit(rcpt)
			tc.sinkMessage(rcpt, nil, 10*time.Second)
		}
		// Killing the leader starts an election (election timeout 1 s): a
		// write may be refused while it runs, then goes through.
		eventually(t, 15*time.Second, "an account change on node 2 with one member down", func() (bool, string) {
			code, raw := n2.call("PUT", "/v1/accounts/during-one-down", map[string]any{"owner": "o@x.test"}, nil)
			return code == 200, raw
		})
		eventually(t, 10*time.Second, "the account made on node 2 seen by node 3", func() (bool, string) {
			code, raw := n3.call("GET", "/v1/accounts/during-one-down", nil, nil)
			return code == 200, raw
		})
		fmt.Println("cluster etcd: 1 of 3 members killed: 3 of 3 nodes accepted and delivered, control write and its watch went on")
		st, raw := n1.clusterStatus()
		down := 0
		for _, m := range st.Members {
			if !m.Healthy {
				down++
			}
		}
		if len(st.Members) != 3 || down != 1 || len(st.Nodes) != 3 {
			t.Fatalf("cluster status with one member killed: %d members, %d down, %d nodes; want 3, 1, 3:\n%s", len(st.Members), down, len(st.Nodes), raw)
		}
	})

	t.Run("two of three down", func(t *testing.T) {
		tc.etcd.Kill(0)
		tc.etcd.Kill(1)
		restarted := false
		defer func() {
			if !restarted {
				tc.etcd.RestartNoWait(0)
				tc.etcd.RestartNoWait(1)
			}
		}()
		// Mail still goes: each node serves from its copy.
		for i, nd := range tc.nodes {
			rcpt := fmt.Sprintf("no-quorum-%d@dest.test", i)
			nd.submit(rcpt)
			tc.sinkMessage(rcpt, nil, 15*time.Second)
		}
		// Control writes are refused with a clear 503.
		start := time.Now()
		code, raw := n1.call("PUT", "/v1/accounts/during-outage", map[string]any{"owner": "o@x.test"}, nil)
		if code != 503 || errorCode(raw) != "cluster_unavailable" {
			t.Fatalf("account change without etcd quorum = %d %s; want 503 cluster_unavailable", code, raw)
		}
		t.Logf("account change refused after %s", time.Since(start).Round(time.Millisecond))
		if code, raw := n2.call("PUT", "/v1/suppressions/manual@dest.test", map[string]any{"reason": "manual"}, nil); code != 503 {
			t.Fatalf("suppress add without etcd quorum = %d %s; want 503", code, raw)
		}
		// cluster status says etcd does not answer and what is stale.
		eventually(t, 20*time.Second, "cluster status during the outage names the stale copy", func() (bool, string) {
			out, err := n1.hermodCLI("cluster", "status")
			return err != nil && strings.Contains(out, "etcd does not answer") && strings.Contains(out, "stale since"), out
		})
		// A hard bounce during the outage.
		id := n1.submit("outage@dest.test")
		m := tc.sinkMessage("outage@dest.test", nil, 15*time.Second)
		sendDSN(t, n1.bounce, m.From, "outage@dest.test")
		n1.waitStatus(id, "bounced", 15*time.Second)
		// The node that took the bounce stops its own mail to the address
		// at once, though etcd cannot take the suppression yet.
		again := n1.submit("outage@dest.test")
		n1.waitStatus(again, "suppressed", 10*time.Second)
		if n := n1.metric("hermod_cluster_suppressions_pending"); n != 1 {
			t.Fatalf("node 1 holds %v suppressions for etcd; want 1", n)
		}

		refused := time.Since(start)
		tc.etcd.RestartNoWait(0)
		tc.etcd.RestartNoWait(1)
		restarted = true
		tc.etcd.WaitReady(0)
		tc.etcd.WaitReady(1)
		back := time.Now()
		eventually(t, 30*time.Second, "the bounce's suppression in etcd, seen through node 3", func() (bool, string) {
			code, raw := n3.call("GET", "/v1/suppressions/outage@dest.test", nil, nil)
			return code == 200, raw
		})
		fmt.Printf("cluster etcd: 2 of 3 members killed: 3 of 3 nodes accepted and delivered, control writes 503, a hard bounce meanwhile suppressed on every node %s after quorum returned (outage %s)\n",
			time.Since(back).Round(100*time.Millisecond), refused.Round(100*time.Millisecond))
		id3 := n3.submit("outage@dest.test")
		n3.waitStatus(id3, "suppressed", 10*time.Second)
		n1.mustCall(200, "PUT", "/v1/accounts/after-outage", map[string]any{"owner": "o@x.test"}, nil)
	})

	t.Run("status after recovery", func(t *testing.T) {
		eventually(t, 20*time.Second, "every node up and current in cluster status", func() (bool, string) {
			st, raw := n1.clusterStatus()
			ok := len(st.Members) == 3 && len(st.Nodes) == 3 && st.Background != ""
			for _, m := range st.Members {
				ok = ok && m.Healthy
			}
			for _, n := range st.Nodes {
				ok = ok && n.Alive && len(n.Stale) == 0
			}
			return ok, raw
		})
	})
}

// TestClusterNodeKill: a node killed with mail queued delivers it when it
// returns, a bounce for its mail that reached another node meanwhile is
// forwarded then, and its messages answer 503 naming it while it is down.
func TestClusterNodeKill(t *testing.T) {
	tc := startCluster(t, 3)
	n1, n2, n3 := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	tc.sink.Refuse("held@dest.test", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"})
	held := n2.submit("held@dest.test")
	n2.waitStatus(held, "deferred", 10*time.Second)
	bounced := n2.submit("gone2@dest.test")
	m := tc.sinkMessage("gone2@dest.test", nil, 10*time.Second)

	n2.kill()
	code, raw := n1.call("GET", "/v1/messages/"+held, nil, nil)
	if code != 503 || errorCode(raw) != "node_unavailable" || !strings.Contains(raw, "n2") {
		t.Fatalf("GET of node 2's message through node 1 while node 2 is down = %d %s; want 503 naming n2", code, raw)
	}
	var page struct {
		Unanswered []string `json:"unanswered"`
	}
	n1.mustCall(200, "GET", "/v1/queue", nil, &page)
	if !slices.Contains(page.Unanswered, "n2") {
		t.Fatalf("queue list through node 1 with node 2 down: unanswered %v; want n2", page.Unanswered)
	}
	// The DSN reaches node 3 while node 2 is down: kept, answered 250.
	sendDSN(t, n3.bounce, m.From, "gone2@dest.test")

	tc.sink.Refuse("held@dest.test", nil)
	n2.start()
	tc.sinkMessage("held@dest.test", nil, 20*time.Second)
	n2.waitStatus(held, "sent", 10*time.Second)
	n1.waitStatus(bounced, "bounced", 30*time.Second)
	eventually(t, 10*time.Second, "gone2@dest.test suppressed", func() (bool, string) {
		code, raw := n1.call("GET", "/v1/suppressions/gone2@dest.test", nil, nil)
		return code == 200, raw
	})
	if n := tc.sink.Count("held@dest.test"); n != 1 {
		t.Fatalf("held@dest.test delivered %d times; want once", n)
	}
	fmt.Println("cluster node: kill -9 with mail queued: its mail delivered once when it returned, a bounce kept by another node forwarded then, its messages 503 naming it meanwhile")
}

// metric returns the value of an unlabelled metric of nd's /metrics.
func (nd *hermodNode) metric(name string) float64 {
	nd.t.Helper()
	_, raw := nd.call("GET", "/metrics", nil, nil)
	for line := range strings.SplitSeq(raw, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// pause stops (SIGSTOP) or continues (SIGCONT) the node's process.
func (nd *hermodNode) pause(stop bool) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	sig := syscall.SIGCONT
	if stop {
		sig = syscall.SIGSTOP
	}
	if err := nd.cmd.Process.Signal(sig); err != nil {
		nd.t.Fatal(err)
	}
}

// TestClusterCompactionReload: a node whose watch falls behind a
// compaction (it was stopped while 2000 suppressions were written and etcd
// compacted) reloads the whole snapshot, and has the changes made meanwhile.
func TestClusterCompactionReload(t *testing.T) {
	tc := startCluster(t, 3)
	n1, n3 := tc.nodes[0], tc.nodes[2]
	reloads := n3.metric("hermod_cluster_control_reloads_total")
	if reloads < 1 {
		t.Fatalf("node 3 reports %v reloads; want its start-up load counted", reloads)
	}
	cli := tc.etcd.Client(t)
	n3.pause(true)
	continued := false
	defer func() {
		if !continued {
			n3.pause(false)
		}
	}()
	const flood = 2000
	var wg sync.WaitGroup
	errs := make(chan error, flood)
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < flood; i += 20 {
				addr := fmt.Sprintf("flood-%d@dest.test", i)
				v, _ := json.Marshal(map[string]any{"address": addr, "reason": "user-unknown", "source": "dsn",
					"created": time.Now().UTC()})
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := cli.Put(ctx, "/hermod/c/suppress/"+hex.EncodeToString([]byte("\x00"+addr)), string(v))
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write a suppression into etcd: %v", err)
	}
	n1.mustCall(200, "PUT", "/v1/accounts/during-stop", map[string]any{"owner": "o@x.test"}, nil)
	rev := tc.etcd.CompactNow(t, cli)
	n3.pause(false)
	continued = true
	eventually(t, 30*time.Second, "node 3 reloads after the compaction at "+fmt.Sprint(rev), func() (bool, string) {
		r := n3.metric("hermod_cluster_control_reloads_total")
		return r > reloads, fmt.Sprintf("reloads %v (before %v)", r, reloads)
	})
	log, _ := os.ReadFile(n3.logPath)
	if !bytes.Contains(log, []byte("compacted past the replica's revision")) {
		t.Fatalf("node 3 reloaded, but not for the compaction:\n%s", tail(string(log), 3000))
	}
	for line := range strings.SplitSeq(string(log), "\n") {
		if strings.Contains(line, "compacted") || strings.Contains(line, "snapshot") {
			t.Log(line)
		}
	}
	n3.mustCall(200, "GET", "/v1/accounts/during-stop", nil, nil)
	n3.mustCall(200, "GET", fmt.Sprintf("/v1/suppressions/flood-%d@dest.test", flood-1), nil, nil)
	id := n3.submit("flood-7@dest.test")
	n3.waitStatus(id, "suppressed", 10*time.Second)
}

// makeVerifiedDomain creates account acct with its domain through nd,
// publishes the records and checks the domain through nd until verified.
func (tc *testCluster) makeVerifiedDomain(nd *hermodNode, acct, name string) (selector string) {
	t := tc.t
	t.Helper()
	nd.mustCall(200, "PUT", "/v1/accounts/"+acct, map[string]any{"owner": "owner@" + name, "custom_domain": true}, nil)
	var dv struct {
		Selector string `json:"selector"`
		Records  []struct {
			Zone string `json:"zone"`
		} `json:"records"`
	}
	nd.mustCall(201, "POST", "/v1/accounts/"+acct+"/domains", map[string]any{"domain": name}, &dv)
	if dv.Selector == "" || len(dv.Records) != 2 {
		t.Fatalf("domain %s: %+v", name, dv)
	}
	for _, r := range dv.Records {
		tc.dns.Add(r.Zone)
	}
	eventually(t, 10*time.Second, name+" verified", func() (bool, string) {
		var d struct {
			Status string `json:"status"`
		}
		_, raw := nd.call("POST", "/v1/accounts/"+acct+"/domains/"+name+"/check", nil, &d)
		return d.Status == "verified", raw
	})
	return dv.Selector
}

// hermodCLI runs a hermod subcommand and returns its output and error.
func (nd *hermodNode) hermodCLI(args ...string) (string, error) {
	out, err := exec.Command(nd.bin, append(args, "-config", nd.conf)...).CombinedOutput()
	return string(out), err
}

// TestClusterImport moves a single node's accounts, domains, keys and
// suppressions into an empty cluster: a second run changes nothing, a
// conflicting single node is refused with a list and writes nothing, and
// the imported node signs with its own key as a cluster node.
func TestClusterImport(t *testing.T) {
	tc := newTestCluster(t)
	single := tc.addNode("n1", false)
	single.start()
	selector := tc.makeVerifiedDomain(single, "acme", "acme.test")
	single.mustCall(200, "PUT", "/v1/suppressions/gone@dest.test", map[string]any{"reason": "user-unknown"}, nil)
	single.stop()

	tc.writeConf(single, true)
	data := filepath.Join(single.dir, "data")
	out, err := single.hermodCLI("cluster", "import", "-from", data)
	if err != nil || !strings.Contains(out, "1 accounts, 1 domains, 1 keys, 1 suppressions") {
		t.Fatalf("cluster import: %v\n%s", err, out)
	}
	written := regexp.MustCompile(`(\d+) entries written, (\d+) already there`)
	first := written.FindStringSubmatch(out)
	out, err = single.hermodCLI("cluster", "import", "-from", data)
	again := written.FindStringSubmatch(out)
	if err != nil || first == nil || again == nil || again[1] != "0" || again[2] != first[1] {
		t.Fatalf("second import = %v\n%s\nwant 0 written, %v already there", err, out, first)
	}

	// Another single node with a different owner for acme: refused, listed.
	other := tc.addNode("n2", false)
	other.start()
	other.mustCall(200, "PUT", "/v1/accounts/acme", map[string]any{"owner": "someone-else@acme.test", "custom_domain": true}, nil)
	other.mustCall(200, "PUT", "/v1/accounts/beta", map[string]any{"owner": "owner@beta.test"}, nil)
	other.stop()
	tc.writeConf(other, true)
	out, err = other.hermodCLI("cluster", "import", "-from", filepath.Join(other.dir, "data"))
	if err == nil || !strings.Contains(out, "conflict: account acme") {
		t.Fatalf("conflicting import = %v\n%s\nwant a refusal listing account acme", err, out)
	}
	cli := tc.etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := cli.Get(ctx, "/hermod/c/account/"+hex.EncodeToString([]byte("beta"))); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("the refused import wrote account beta (%v, %v)", resp, err)
	}
	// The DKIM key is sealed in etcd: its PEM is not there in clear.
	keys, err := cli.Get(ctx, "/hermod/c/domainkeys/", clientv3.WithPrefix())
	if err != nil || len(keys.Kvs) != 1 || bytes.Contains(keys.Kvs[0].Value, []byte("PRIVATE KEY")) {
		t.Fatalf("domain keys in etcd: %v, %d keys, clear PEM %v", err, len(keys.Kvs), len(keys.Kvs) == 1 && bytes.Contains(keys.Kvs[0].Value, []byte("PRIVATE KEY")))
	}

	// The imported node, now a cluster node, signs with the imported key
	// and keeps the suppression.
	single.start()
	single.submit("reader@dest.test", "From: Taro <taro@acme.test>", "X-Hermod-Account: acme")
	m := tc.sinkMessage("reader@dest.test", nil, 10*time.Second)
	if !bytes.Contains(m.Data, []byte("d=acme.test")) || !bytes.Contains(m.Data, []byte("s="+selector+";")) {
		t.Fatalf("the imported node did not sign as acme.test with selector %s:\n%s", selector, m.Data[:min(len(m.Data), 1500)])
	}
	id := single.submit("gone@dest.test")
	single.waitStatus(id, "suppressed", 10*time.Second)
}

// startFails runs nd and returns its output once it exits; it fails the
// test if nd is still running after 30 s.
func (nd *hermodNode) startFails() string {
	nd.t.Helper()
	cmd := exec.Command(nd.bin, "serve", "-config", nd.conf)
	done := make(chan []byte, 1)
	go func() {
		out, _ := cmd.CombinedOutput()
		done <- out
	}()
	select {
	case out := <-done:
		return string(out)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		nd.t.Fatalf("%s started; want a refusal", nd.id)
		return ""
	}
}

// TestClusterMembership: a node whose VERP secret or cluster secret differs
// from the cluster's, or whose node id a running node holds, refuses to
// start and says why; the background lease moves when its node dies.
func TestClusterMembership(t *testing.T) {
	tc := startCluster(t, 3)

	other := tc.addNode("n4", true)
	tc.nodes = tc.nodes[:3] // not stopped by the cleanup: it never runs
	writeSecret(t, filepath.Join(other.dir, "data", "verp.secret"), "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n")
	if out := other.startFails(); !strings.Contains(out, "bounce.verp_secret_file differs from the cluster's") {
		t.Fatalf("a node with another VERP secret: %s", out)
	}
	copyFile(t, tc.verp, filepath.Join(other.dir, "data", "verp.secret"))
	otherSecret := filepath.Join(other.dir, "other.secret")
	writeSecret(t, otherSecret, "another-cluster-secret-0123456789abcdef")
	conf, _ := os.ReadFile(other.conf)
	os.WriteFile(other.conf, bytes.Replace(conf, []byte(tc.secret), []byte(otherSecret), 1), 0o600)
	if out := other.startFails(); !strings.Contains(out, "cluster.secret_file differs from the cluster's") {
		t.Fatalf("a node with another cluster secret: %s", out)
	}
	// The same node id as a running node.
	os.WriteFile(other.conf, bytes.Replace(conf, []byte(`node_id = "n4"`), []byte(`node_id = "n2"`), 1), 0o600)
	if out := other.startFails(); !strings.Contains(out, `cluster.node_id "n2" is held by a running node`) {
		t.Fatalf("a second node n2: %s", out)
	}

	// The background lease: held by one node; when it dies, another.
	var holder string
	eventually(t, 10*time.Second, "a node holds the background lease", func() (bool, string) {
		st, raw := tc.nodes[0].clusterStatus()
		holder = st.Background
		return holder != "", raw
	})
	var victim, witness *hermodNode
	for _, nd := range tc.nodes {
		if nd.id == holder {
			victim = nd
		} else {
			witness = nd
		}
	}
	victim.kill()
	start := time.Now()
	eventually(t, 20*time.Second, "another node takes the background lease from "+holder, func() (bool, string) {
		st, raw := witness.clusterStatus()
		return st.Background != "" && st.Background != holder, raw
	})
	took := time.Since(start)
	// A node gone for good is forgotten; a live one is not.
	if out, err := witness.hermodCLI("cluster", "forget", witness.id); err == nil || !strings.Contains(out, "is alive") {
		t.Fatalf("forget a live node = %v: %s", err, out)
	}
	eventually(t, 10*time.Second, "forget "+victim.id, func() (bool, string) {
		out, err := witness.hermodCLI("cluster", "forget", victim.id)
		return err == nil, out
	})
	var page struct {
		Unanswered []string `json:"unanswered"`
	}
	witness.mustCall(200, "GET", "/v1/queue", nil, &page)
	if len(page.Unanswered) != 0 {
		t.Fatalf("after forgetting %s, lists still name %v as not answering", victim.id, page.Unanswered)
	}
	t.Logf("background lease moved from %s %s after its kill -9", holder, took.Round(time.Millisecond))
	fmt.Printf("cluster membership: other VERP secret, other cluster secret and a taken node id refused at start; background lease moved %s after kill -9 of its holder (lease 3s)\n", took.Round(100*time.Millisecond))
}

// writeTLSFiles writes a CA, a server certificate for 127.0.0.1 and a
// client certificate (both signed by the CA) as PEM files in dir.
func writeTLSFiles(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hermod test etcd CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(crand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	ca = write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, base string) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(crand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(k)
		return write(base+".pem", "CERTIFICATE", der), write(base+"-key.pem", "PRIVATE KEY", kder)
	}
	serverCert, serverKey = leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, "server")
	clientCert, clientKey = leaf(3, "hermod", x509.ExtKeyUsageClientAuth, "client")
	return
}

// TestClusterEtcdTLS: a node reaches an etcd that takes only TLS clients
// with a certificate from its CA (cluster.etcd_ca_file, etcd_cert_file,
// etcd_key_file); without its client certificate it refuses to start.
func TestClusterEtcdTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd and hermod processes")
	}
	etcdtest.Require(t)
	dir := t.TempDir()
	ca, sc, sk, cc, ck := writeTLSFiles(t, dir)
	client, peer := "https://"+testnet.FreeAddr(t), "http://"+testnet.FreeAddr(t)
	cmd := exec.Command(etcdtest.Binary, "--name", "tls0", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "tls0="+peer,
		"--cert-file", sc, "--key-file", sk, "--trusted-ca-file", ca, "--client-cert-auth",
		"--listen-metrics-urls", "", "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	etcdLog := func() string { b, _ := os.ReadFile(logf.Name()); return tail(string(b), 2000) }
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait until etcd serves a client with the certificate, so that the
	// refusal below is about the missing certificate, not a slow start.
	pair, err := tls.LoadX509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(caPEM)
	probe, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 2 * time.Second,
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	eventually(t, 30*time.Second, "etcd with TLS answers", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := probe.Get(ctx, "probe")
		return err == nil, fmt.Sprint(err, etcdLog())
	})

	tc := &testCluster{t: t, dns: testnet.NewDNS(t), sink: testnet.NewSink(t), bin: buildHermod(t)}
	tc.secret, tc.verp = filepath.Join(dir, "cluster.secret"), filepath.Join(dir, "verp.secret")
	writeSecret(t, tc.secret, "cluster-secret-for-tests-0123456789abcdef")
	writeSecret(t, tc.verp, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	tc.hash = string(hash)
	nd := &hermodNode{t: t, id: "n1", dir: t.TempDir(), bin: tc.bin, sub: testnet.FreeAddr(t), bounce: testnet.FreeAddr(t), api: testnet.FreeAddr(t)}
	nd.conf, nd.logPath = filepath.Join(nd.dir, "hermod.toml"), filepath.Join(nd.dir, "hermod.log")
	os.MkdirAll(filepath.Join(nd.dir, "data"), 0o700)
	copyFile(t, tc.verp, filepath.Join(nd.dir, "data", "verp.secret"))
	base := func() string {
		tc.writeConf(nd, false)
		b, _ := os.ReadFile(nd.conf)
		return string(b) + fmt.Sprintf(`[cluster]
node_id = "n1"
etcd_endpoints = [%q]
advertise = "http://%s"
secret_file = %q
etcd_ca_file = %q
etcd_request_timeout = "3s"
etcd_dial_timeout = "3s"
`, client, nd.api, tc.secret, ca)
	}
	// Without a client certificate: refused, naming etcd.
	os.WriteFile(nd.conf, []byte(base()), 0o600)
	if out := nd.startFails(); !strings.Contains(out, "does not answer") {
		t.Fatalf("a node without its etcd client certificate: %s\netcd: %s", out, etcdLog())
	}
	os.WriteFile(nd.conf, []byte(base()+fmt.Sprintf("etcd_cert_file = %q\netcd_key_file = %q\n", cc, ck)), 0o600)
	tc.nodes = append(tc.nodes, nd)
	t.Cleanup(func() { nd.stop() })
	nd.start()
	nd.mustCall(200, "PUT", "/v1/accounts/acme", map[string]any{"owner": "owner@acme.test"}, nil)
	nd.mustCall(200, "GET", "/v1/accounts/acme", nil, nil)
	if st, raw := nd.clusterStatus(); len(st.Members) != 1 || !st.Members[0].Healthy || len(st.Nodes) != 1 {
		t.Fatalf("cluster status over TLS: %s", raw)
	}
}

// TestClusterEtcdAuth: with etcd's authentication on, a node with
// cluster.etcd_username and etcd_password_file, granted read and write on
// its prefix only, joins and writes; with a wrong password it refuses to
// start.
func TestClusterEtcdAuth(t *testing.T) {
	tc := newTestCluster(t)
	cli := tc.etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "hermod"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "hermod", "/hermod", clientv3.GetPrefixRangeEnd("/hermod"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "hermod", "s3cret-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "hermod", "hermod"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcd auth setup step %d: %v", i, err)
		}
	}
	nd := tc.addNode("n1", true)
	pwFile := filepath.Join(nd.dir, "data", "etcd.password")
	conf, _ := os.ReadFile(nd.conf)
	withAuth := string(conf) + fmt.Sprintf("etcd_username = \"hermod\"\netcd_password_file = %q\n", pwFile)
	os.WriteFile(nd.conf, []byte(withAuth), 0o600)

	writeSecret(t, pwFile, "wrong-pw\n")
	tc.nodes = nil // the refused start leaves nothing to stop
	if out := nd.startFails(); !strings.Contains(out, "cluster.etcd_password_file: etcd refused them") {
		t.Fatalf("a node with a wrong etcd password: %s", out)
	}
	writeSecret(t, pwFile, "s3cret-pw\n")
	tc.nodes = []*hermodNode{nd}
	nd.start()
	nd.mustCall(200, "PUT", "/v1/accounts/acme", map[string]any{"owner": "owner@acme.test"}, nil)
	nd.mustCall(200, "GET", "/v1/accounts/acme", nil, nil)
	id := nd.submit("reader@dest.test")
	nd.waitStatus(id, "sent", 10*time.Second)
	if st, raw := nd.clusterStatus(); len(st.Members) != 3 || len(st.Nodes) != 1 || st.Background != "n1" {
		t.Fatalf("cluster status as the hermod etcd user: %s", raw)
	}
}
