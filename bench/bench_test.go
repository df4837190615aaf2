package bench

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBenchEndToEnd builds the real binary and runs the whole benchmark with
// tiny numbers: every message must reach the sink and every figure be printed.
func TestBenchEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary")
	}
	bin := filepath.Join(t.TempDir(), "hermod")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/hermod").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"-n", "50", "-c", "5", "-dkim", "ed25519"},
		{"-n", "50", "-c", "5", "-rcpts", "3", "-sink-delay", "20ms"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, append([]string{"bench", "-timeout", "90s"}, args...)...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("hermod bench %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
			}
			t.Logf("%v in %v:\n%s", args, time.Since(start).Round(time.Millisecond), stdout.String())
			out := stdout.String()
			rcpts := "50"
			if strings.Contains(strings.Join(args, " "), "-rcpts 3") {
				rcpts = "150"
			}
			for _, want := range []string{`messages_accepted\s+50\n`, `recipients_delivered\s+` + rcpts + `\n`, `signed_at_sink_pct\s+100\n`} {
				if !regexp.MustCompile(want).MatchString(out) {
					t.Errorf("output lacks %q", want)
				}
			}
			for _, k := range figureOrder {
				if k == "etcd_requests_per_1000_msgs" {
					continue // only with -etcd (TestBenchCluster)
				}
				m := regexp.MustCompile(`(?m)^` + k + `\s+(\S+)$`).FindStringSubmatch(out)
				if m == nil {
					t.Errorf("figure %s not printed", k)
				} else if m[1] == "n/a" {
					t.Errorf("figure %s not measured", k)
				}
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP hermod_store_commits_total x
# TYPE hermod_store_commits_total counter
hermod_store_commits_total 42
hermod_dkim_signatures_total{algorithm="rsa",domain="a"} 3
hermod_dkim_signatures_total{algorithm="ed25519",domain="b, c}"} 4.5e+00
hermod_relay_connections_opened_total{host="127.0.0.1:25"} 7 1700000000000
`
	got, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"hermod_store_commits_total": 42, "hermod_dkim_signatures_total": 7.5, "hermod_relay_connections_opened_total": 7}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestArrivalKey(t *testing.T) {
	for in, want := range map[string]string{
		"bounce-md_0123456789abcdefghi01234567@bounce.bench.test": "0123456789abcdef",
		"Bounce-MD_0123456789ABCDEFghi01234567@x":                 "0123456789abcdef",
		"bench-42@bench.test":                                     "bench-42",
		"bounce-md_b1-0123456789abcdefghi0123456789abcdef@x":      "b1-0123456789abcdef",
		"other@bench.test":                                        "",
		"":                                                        "",
	} {
		if got := arrivalKey(in); got != want {
			t.Errorf("arrivalKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for p, want := range map[float64]time.Duration{50: 50, 99: 99, 100: 100, 0: 1} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func TestMakeBody(t *testing.T) {
	for _, n := range []int{0, 3, 100, 4096, 100000} {
		b := makeBody(n)
		if len(b) > n || n-len(b) > 2 || (len(b) > 0 && !strings.HasSuffix(b, "\r\n")) || strings.Contains(b, "\r\n.") {
			t.Errorf("makeBody(%d): %d bytes", n, len(b))
		}
	}
}
