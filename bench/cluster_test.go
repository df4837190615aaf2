package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/etcdtest"
)

// TestBenchCluster runs `hermod bench -etcd` against a real three-member
// etcd: the same workload on a single node and on a node of a cluster. It
// prints both columns and the etcd requests per 1000 messages, and fails if
// the cluster makes etcd requests per message (the hot path must read only
// the local copy): what etcd receives must be the heartbeats and watch
// progress of the run's duration, whatever the number of messages.
func TestBenchCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary and etcd")
	}
	etcd := etcdtest.Start(t, 3)
	bin := filepath.Join(t.TempDir(), "hermod")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/hermod").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("HERMOD_BENCH_N")); err == nil && v > 0 {
		n = v // a longer run for the figures quoted in notes
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "-timeout", "180s", "-n", strconv.Itoa(n), "-c", "20", "-dkim", "ed25519",
		"-etcd", strings.Join(etcd.Endpoints(), ","))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("hermod bench -etcd: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	t.Logf("in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	m := regexp.MustCompile(`(?m)^etcd_requests_per_1000_msgs\s+(\S+)\s`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no etcd_requests_per_1000_msgs figure")
	}
	perK, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("etcd_requests_per_1000_msgs %q", m[1])
	}
	// A heartbeat (keep-alive and a put) every 5 s, a watch progress
	// request every few seconds, the election: a few requests per second
	// of the run. One request per message would be 1000 per 1000.
	if perK >= 100 {
		t.Errorf("etcd received %.1f requests per 1000 messages: the cluster asks etcd per message", perK)
	}
	d := regexp.MustCompile(`(?m)^delivered_msgs_per_s\s+(\S+)\s+(\S+)\s+(\S+)$`).FindStringSubmatch(out)
	if d == nil {
		t.Fatalf("no delivered_msgs_per_s comparison line")
	}
	fmt.Printf("cluster bench: %d msgs, etcd requests per 1000 msgs %.1f, delivered msgs/s cluster %s vs single %s (ratio %s)\n", n, perK, d[1], d[2], d[3])
}
