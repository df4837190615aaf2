// Package etcdtest runs a real etcd cluster for tests: n members, each an
// /usr/bin/etcd process (Debian's etcd-server, see scripts/deps.sh) on
// 127.0.0.1 with its own ports and a data directory under t.TempDir(). Every
// member is stopped, by its PID, when the test ends.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary is the etcd server the members run, exactly as the deps.sh probe
// runs it.
const Binary = "/usr/bin/etcd"

// startTimeout bounds how long a member (or the whole cluster) may take to
// answer with a leader.
const startTimeout = 30 * time.Second

// Cluster is a running etcd cluster of real processes.
type Cluster struct {
	t       testing.TB
	token   string
	extra   []string
	members []*member
}

type member struct {
	name    string
	dir     string // data directory
	logPath string // stderr of every run, appended
	client  string // http://127.0.0.1:port
	peer    string // http://127.0.0.1:port
	initial string // --initial-cluster value
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Require skips the test when the etcd binary is missing, or fails it under
// scripts/test.sh (HERMOD_REQUIRE_TOOLS=1), where skipping is a failure.
func Require(t testing.TB) {
	t.Helper()
	require(t, Binary)
}

func require(t testing.TB, binary string) {
	t.Helper()
	if _, err := os.Stat(binary); err != nil {
		if os.Getenv("HERMOD_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s is missing (HERMOD_REQUIRE_TOOLS=1): see the etcd row of scripts/deps.sh", binary)
		}
		t.Skipf("%s is missing (install etcd-server, see scripts/deps.sh): %v", binary, err)
	}
}

// Start runs an n-member cluster and returns when it has a leader and every
// member answers. It fails the test, with the member's stderr tail, if a
// member does not start.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return start(t, n, nil)
}

// start is Start with extra flags for every member.
func start(t testing.TB, n int, extra []string) *Cluster {
	t.Helper()
	Require(t)
	if n < 1 {
		t.Fatalf("etcdtest: %d members", n)
	}
	ports := freePorts(t, 2*n)
	root := t.TempDir()
	c := &Cluster{t: t, extra: extra, token: "hermod-test-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var initial []string
	for i := 0; i < n; i++ {
		m := &member{
			name:   fmt.Sprintf("m%d", i),
			dir:    filepath.Join(root, fmt.Sprintf("m%d", i), "data"),
			client: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			peer:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
		m.logPath = filepath.Join(root, fmt.Sprintf("m%d", i), "stderr.log")
		if err := os.MkdirAll(filepath.Dir(m.dir), 0o700); err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		initial = append(initial, m.name+"="+m.peer)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initial = strings.Join(initial, ",")
	}
	t.Cleanup(c.stopAll)
	for i := range c.members {
		if err := c.spawn(i, "new"); err != nil {
			t.Fatalf("etcdtest: start member %d: %v\n%s", i, err, c.members[i].tail())
		}
	}
	for i := range c.members {
		if err := c.waitReady(i, startTimeout); err != nil {
			t.Fatalf("etcdtest: member %d did not start: %v\n--- stderr tail ---\n%s", i, err, c.members[i].tail())
		}
	}
	return c
}

// freePorts finds n distinct free TCP ports on 127.0.0.1 by listening on :0
// and closing the listeners together.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: probe a port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func (c *Cluster) spawn(i int, state string) error {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("member %d is running", i)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(Binary,
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-client-urls", m.client,
		"--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer,
		"--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", m.initial,
		"--initial-cluster-state", state,
		"--initial-cluster-token", c.token,
		"--heartbeat-interval", "100",
		"--election-timeout", "1000",
		"--listen-metrics-urls", "",
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	)
	cmd.Args = append(cmd.Args, c.extra...)
	// etcd reads ETCD_* variables as flags: none of the caller's reach a
	// member.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "ETCD_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd = cmd
	exited := make(chan struct{})
	m.exited = exited
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return nil
}

// tail is the end of the member's stderr (all its runs).
func (m *member) tail() string {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return "(no stderr: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitReady polls member i until it reports a leader and serves a read.
func (c *Cluster) waitReady(i int, d time.Duration) error {
	m := c.members[i]
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{m.client},
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		select {
		case <-exited:
			return errors.New("the process exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		st, err := cli.Status(ctx, m.client)
		if err == nil && st.Leader != 0 {
			_, err = cli.Get(ctx, "etcdtest-ready")
			if err == nil {
				cancel()
				return nil
			}
		} else if err == nil {
			err = errors.New("no leader yet")
		}
		cancel()
		last = err
		time.Sleep(50 * time.Millisecond) // poll interval, not a condition
	}
	return fmt.Errorf("not ready after %v: %v", d, last)
}

// Endpoints lists every member's client URL.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client)
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].client }

// Client returns a client of every member, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return c.ClientOf(t, c.Endpoints()...)
}

// ClientOf returns a client of the given endpoints, closed when the test
// ends.
func (c *Cluster) ClientOf(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Kill sends SIGKILL to member i and waits for it to exit.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	if pid, ok := c.kill(i); !ok {
		c.t.Fatalf("etcdtest: member %d (pid %d) did not exit after SIGKILL", i, pid)
	}
}

// kill sends SIGKILL to member i, if it runs, and waits up to 10 s for it
// to exit; ok is false if it did not.
func (c *Cluster) kill(i int) (pid int, ok bool) {
	m := c.members[i]
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return 0, true
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-exited:
		return cmd.Process.Pid, true
	case <-time.After(10 * time.Second):
		return cmd.Process.Pid, false
	}
}

// Restart starts member i again on its ports and data directory
// (--initial-cluster-state existing) and waits until it answers with a
// leader, which needs a quorum of members running.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if err := c.spawn(i, "existing"); err != nil {
		c.t.Fatalf("etcdtest: restart member %d: %v\n%s", i, err, c.members[i].tail())
	}
	if err := c.waitReady(i, startTimeout); err != nil {
		c.t.Fatalf("etcdtest: member %d did not come back: %v\n--- stderr tail ---\n%s", i, err, c.members[i].tail())
	}
}

// RestartNoWait starts member i again without waiting for it to answer
// (for restarting members that only make a quorum together).
func (c *Cluster) RestartNoWait(i int) {
	c.t.Helper()
	if err := c.spawn(i, "existing"); err != nil {
		c.t.Fatalf("etcdtest: restart member %d: %v\n%s", i, err, c.members[i].tail())
	}
}

// WaitReady waits until member i answers with a leader.
func (c *Cluster) WaitReady(i int) {
	c.t.Helper()
	if err := c.waitReady(i, startTimeout); err != nil {
		c.t.Fatalf("etcdtest: member %d not ready: %v\n--- stderr tail ---\n%s", i, err, c.members[i].tail())
	}
}

// CompactNow compacts the cluster's key space at its current revision and
// returns that revision; a watch from an older revision then fails with
// ErrCompacted.
func (c *Cluster) CompactNow(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "etcdtest-compact", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("etcdtest: read the revision to compact: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact at %d: %v", rev, err)
	}
	return rev
}

func (c *Cluster) stopAll() {
	for i := range c.members {
		c.kill(i)
	}
}
