package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// hermodInstance is the hermod under test: started by the bench with a
// throw-away configuration, or already running (-target).
type hermodInstance struct {
	subAddr        string
	user, password string
	apiAddr, token string // empty: no metrics
	pid            int    // 0: no /proc figures

	cmd  *exec.Cmd
	done chan struct{}
	dir  string
	log  *os.File
}

// hermodConfig is the throw-away configuration: loopback listeners on free
// ports, every recipient routed to the sink.
func hermodConfig(dataDir, subAddr, bounceAddr, apiAddr, hash, sinkAddr, dkimAlg string, sessions int) string {
	return fmt.Sprintf(`# Written by hermod bench; removed when it ends.
hostname = "bench.test"
data_dir = %q
shutdown_timeout = "10s"

[submission]
listen = %q
max_recipients = 1000
max_connections = %d
max_connections_per_ip = %d

[[submission.users]]
name = "bench"
password_hash = %q
accounts = ["*"]

[bounce]
listen = %q
domain = "bounce.bench.test"

[sender]
default_from = "noreply@bench.test"
dkim_domain = "bench.test"
dkim_selector = "bench"
dkim_algorithm = %q

[relay]
resolvers = ["127.0.0.1:1"]
concurrency = 100
per_destination = 20
retry = ["1s"]
connect_timeout = "10s"

[[relay.route]]
domain = "*"
host = %q

[api]
listen = %q
pprof = true

[log]
level = "warn"
`, dataDir, subAddr, max(1000, sessions+100), max(50, sessions+50), hash, bounceAddr, dkimAlg, sinkAddr, apiAddr)
}

// startHermod runs `<this binary> serve` on a throw-away configuration in dir.
// With a cluster (etcd endpoints), the configuration has a [cluster]
// section making it the one node of a cluster under a fresh etcd prefix.
func startHermod(ctx context.Context, dir, sinkAddr, dkimAlg string, sessions int, etcd []string, stderr io.Writer) (*hermodInstance, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("hermod: find own binary: %w", err)
	}
	var pw [12]byte
	rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	hash, err := bcrypt.GenerateFromPassword([]byte(password), 4)
	if err != nil {
		return nil, err
	}
	var addrs [3]string
	for i := range addrs {
		if addrs[i], err = freeAddr(); err != nil {
			return nil, err
		}
	}
	dataDir := filepath.Join(dir, "data")
	conf := filepath.Join(dir, "hermod.toml")
	text := hermodConfig(dataDir, addrs[0], addrs[1], addrs[2], string(hash), sinkAddr, dkimAlg, sessions)
	if len(etcd) > 0 {
		section, err := clusterSection(dir, addrs[2], etcd)
		if err != nil {
			return nil, err
		}
		text += section
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "hermod.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "serve", "-config", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("hermod: start %s serve: %w", exe, err)
	}
	h := &hermodInstance{subAddr: addrs[0], user: "bench", password: password, apiAddr: addrs[2],
		pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), dir: dir, log: logf}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(h.done) }()
	// The first start generates the DKIM key (RSA-2048 takes a moment).
	ready := make(chan error, 1)
	go func() { ready <- waitListening(ctx, h.subAddr, 60*time.Second) }()
	select {
	case err = <-ready:
	case <-h.done:
		err = fmt.Errorf("exited: %v", waitErr)
	}
	if err == nil {
		err = waitListening(ctx, h.apiAddr, 10*time.Second)
	}
	if err == nil {
		var tok []byte
		tok, err = os.ReadFile(filepath.Join(dataDir, "api.token"))
		h.token = strings.TrimSpace(string(tok))
	}
	if err != nil {
		h.stop()
		out, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("hermod did not start: %w\n%s", err, tail(string(out), 2000))
	}
	return h, nil
}

// stop ends a hermod the bench started (SIGTERM, then SIGKILL).
func (h *hermodInstance) stop() {
	if h.cmd != nil {
		stopProcess(h.cmd.Process, h.done, 15*time.Second)
		h.log.Close()
	}
}

// logTail returns the end of hermod's log (warnings and errors).
func (h *hermodInstance) logTail() string {
	if h.log == nil {
		return ""
	}
	b, _ := os.ReadFile(h.log.Name())
	return tail(string(b), 1500)
}

// metrics reads the counters the bench uses from GET /metrics; each value is
// the sum over its labels. It returns nil if the endpoint is not there.
func (h *hermodInstance) metrics(ctx context.Context) (map[string]float64, error) {
	if h.apiAddr == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.apiAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, summing every sample of a
// metric over its labels.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
