package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// clusterSection is the [cluster] section of a bench hermod: node "b1",
// alone under a fresh etcd prefix, with a new cluster secret in dir.
func clusterSection(dir, apiAddr string, etcd []string) (string, error) {
	var secret, prefix [16]byte
	rand.Read(secret[:])
	rand.Read(prefix[:4])
	secretFile := filepath.Join(dir, "cluster.secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret[:])), 0o600); err != nil {
		return "", err
	}
	endpoints, _ := json.Marshal(etcd)
	return fmt.Sprintf(`
[cluster]
node_id = "b1"
etcd_endpoints = %s
advertise = "http://%s"
secret_file = %q
etcd_prefix = "/hermod-bench-%s"
`, endpoints, apiAddr, secretFile, hex.EncodeToString(prefix[:4])), nil
}

// etcdRequests reads every member's /metrics and returns the gRPC request
// messages etcd received, by method (unary requests and each message of a
// stream: a lease keep-alive, a watch request).
func etcdRequests(ctx context.Context, endpoints []string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, ep := range endpoints {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, strings.TrimSuffix(ep, "/")+"/metrics", nil)
		if err != nil {
			cancel()
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("etcd metrics at %s: %w", ep, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "grpc_server_msg_received_total{") {
				continue
			}
			_, labels, _ := strings.Cut(line, "{")
			labels, value, _ := strings.Cut(labels, "} ")
			method := ""
			for l := range strings.SplitSeq(labels, ",") {
				if v, ok := strings.CutPrefix(l, `grpc_method="`); ok {
					method = strings.TrimSuffix(v, `"`)
				}
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err == nil && method != "" {
				out[method] += v
			}
		}
		resp.Body.Close()
		cancel()
	}
	return out, nil
}

// etcdDelta is after minus before, and their total.
func etcdDelta(before, after map[string]float64) (total float64, text string) {
	var parts []string
	for m, v := range after {
		if d := v - before[m]; d > 0 {
			total += d
			parts = append(parts, fmt.Sprintf("%s %.0f", m, d))
		}
	}
	sort.Strings(parts)
	return total, strings.Join(parts, ", ")
}
