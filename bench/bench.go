// Package bench is `hermod bench`: a bounded load benchmark on loopback.
//
// It starts hermod (this very binary, `serve`) with a throw-away
// configuration, or targets a running one, and a sink MX on loopback that
// every recipient is routed to; drives concurrent authenticated SMTP
// sessions that each reuse their connection for many messages; waits until
// every recipient reached the sink; and prints one figure per line. With
// -peer postfix it runs the same workload against a private Postfix (plus
// OpenDKIM) and prints both side by side.
//
// Every connection goes to 127.0.0.1, and the run is bounded by -n and by
// -timeout.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	n, c, size, rcpts, domains int
	dkim                       string
	sink                       string
	sinkDelay                  time.Duration
	sinkListen                 string
	peer                       string
	peerDKIM                   bool
	target, user, password     string
	api, tokenFile             string
	pid                        int
	timeout                    time.Duration
	keep                       bool
	peerOnly                   bool
	rate                       float64
	etcd                       []string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("hermod bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.n, "n", 5000, "messages to submit in all")
	fs.IntVar(&o.c, "c", 50, "concurrent SMTP sessions, each reusing its connection")
	fs.IntVar(&o.size, "size", 4096, "message size in bytes, header included")
	fs.IntVar(&o.rcpts, "rcpts", 1, "recipients per message")
	fs.IntVar(&o.domains, "domains", 1, "spread recipients over this many domains")
	fs.Float64Var(&o.rate, "rate", 0, "pace submissions at this many msgs/s in all (0: as fast as the sessions go)")
	fs.StringVar(&o.dkim, "dkim", "rsa", "hermod's DKIM algorithm in the throw-away config: rsa (2048) or ed25519")
	fs.StringVar(&o.sink, "sink", "go", "the MX: go (in-process, counts and times each delivery) or smtp-sink (Postfix's; counts only)")
	fs.DurationVar(&o.sinkDelay, "sink-delay", 0, "time the sink takes per message before its 250 (smtp-sink: whole seconds)")
	fs.StringVar(&o.sinkListen, "sink-listen", "127.0.0.1:0", "address of the go sink (with -target: where that hermod routes its mail)")
	fs.StringVar(&o.peer, "peer", "", `"postfix": run the same workload against a private Postfix and compare`)
	fs.BoolVar(&o.peerDKIM, "peer-dkim", true, "sign with OpenDKIM (RSA-2048 milter) in the Postfix peer")
	fs.StringVar(&o.target, "target", "", "host:port of a running hermod's submission listener (loopback only) instead of starting one")
	fs.StringVar(&o.user, "user", "", "AUTH user for -target")
	fs.StringVar(&o.password, "password", "", "AUTH password for -target")
	fs.StringVar(&o.api, "api", "", "with -target: host:port of its API, for /metrics")
	fs.StringVar(&o.tokenFile, "token-file", "", "with -target: its api.token file")
	fs.IntVar(&o.pid, "pid", 0, "with -target: its process id, for RSS and CPU")
	fs.DurationVar(&o.timeout, "timeout", 120*time.Second, "hard limit on the whole run")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, logs, data)")
	fs.BoolVar(&o.peerOnly, "peer-only", false, "with -peer: run only the peer, not hermod")
	etcd := fs.String("etcd", "", "comma-separated etcd client URLs (loopback only): run hermod a second time as a node of a cluster on this etcd and compare, counting etcd's requests")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.n < 1 || o.c < 1 || o.rcpts < 1 || o.domains < 1:
		return nil, errors.New("bench: -n, -c, -rcpts and -domains must be positive")
	case o.size < 512:
		return nil, errors.New("bench: -size must be at least 512 bytes")
	case o.timeout <= 0:
		return nil, errors.New("bench: -timeout must be positive")
	case o.dkim != "rsa" && o.dkim != "ed25519":
		return nil, fmt.Errorf("bench: -dkim %q: want rsa or ed25519 (hermod always signs)", o.dkim)
	case o.sink != "go" && o.sink != "smtp-sink":
		return nil, fmt.Errorf("bench: -sink %q: want go or smtp-sink", o.sink)
	case o.peerOnly && o.peer == "":
		return nil, errors.New("bench: -peer-only needs -peer")
	case o.peer != "" && o.peer != "postfix":
		return nil, fmt.Errorf("bench: -peer %q: only postfix is supported", o.peer)
	case o.target != "" && !loopback(o.target):
		return nil, fmt.Errorf("bench: -target %s: loopback addresses only", o.target)
	case o.api != "" && !loopback(o.api):
		return nil, fmt.Errorf("bench: -api %s: loopback addresses only", o.api)
	case !loopback(o.sinkListen):
		return nil, fmt.Errorf("bench: -sink-listen %s: loopback addresses only", o.sinkListen)
	case o.target != "" && o.sink != "go" && o.sinkListen != "127.0.0.1:0":
		return nil, errors.New("bench: -sink-listen needs -sink go")
	}
	if *etcd != "" {
		for ep := range strings.SplitSeq(*etcd, ",") {
			host := strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
			if !loopback(strings.TrimSuffix(host, "/")) {
				return nil, fmt.Errorf("bench: -etcd %s: loopback addresses only", ep)
			}
			o.etcd = append(o.etcd, ep)
		}
		if o.target != "" || o.peerOnly {
			return nil, errors.New("bench: -etcd starts hermod itself: not with -target or -peer-only")
		}
	}
	o.c = min(o.c, o.n)
	return o, nil
}

func loopback(addr string) bool {
	host, _, ok := strings.Cut(addr, ":")
	if strings.HasPrefix(addr, "[") {
		host, _, ok = strings.Cut(addr[1:], "]")
	}
	return ok && (host == "localhost" || host == "::1" || strings.HasPrefix(host, "127."))
}

// Main runs the benchmark with command-line args and prints one figure per line.
func Main(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	// An interrupt ends the run like the timeout does, so that hermod,
	// Postfix and OpenDKIM are still stopped and the directory removed.
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	dir, err := makeTempDir()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if o.keep {
		fmt.Fprintf(stderr, "bench: keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	var sk sink
	if o.sink == "go" {
		sk, err = startGoSink(o.sinkListen, o.sinkDelay)
	} else {
		sk, err = startSMTPSink(ctx, o.sinkDelay)
	}
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer sk.Close()

	fmt.Fprintf(stdout, "# hermod bench: %d msgs x %d rcpt, %d bytes, %d sessions, sink %s (delay %v) on %s, %d CPUs, %s\n",
		o.n, o.rcpts, o.size, o.c, o.sink, o.sinkDelay, sk.Addr(), runtime.NumCPU(), runtime.Version())

	var results []*result
	var h *hermodInstance
	if o.peerOnly {
		// no hermod
	} else if o.target != "" {
		h = &hermodInstance{subAddr: o.target, user: o.user, password: o.password, apiAddr: o.api, pid: o.pid}
		if o.tokenFile != "" {
			tok, err := os.ReadFile(o.tokenFile)
			if err != nil {
				return fmt.Errorf("bench: -token-file: %w", err)
			}
			h.token = strings.TrimSpace(string(tok))
		}
		fmt.Fprintf(stdout, "# hermod: running instance at %s (its routes must point to the sink)\n", o.target)
	} else {
		h, err = startHermod(ctx, dir, sk.Addr(), o.dkim, o.c, nil, stderr)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer h.stop()
		fmt.Fprintf(stdout, "# hermod: %s serve, pid %d, dkim %s, relay.concurrency 100, relay.per_destination 20, AUTH PLAIN\n",
			exeName(), h.pid, dkimName(o.dkim))
	}
	if h != nil {
		if _, err := h.metrics(ctx); err != nil {
			fmt.Fprintf(stdout, "# hermod: /metrics unavailable (%v): fsyncs and signature figures from the sink only\n", err)
		}
		hr := runOne(ctx, o, sk, &subject{name: "hermod", addr: h.subAddr, user: h.user, password: h.password,
			keyByQueueID: true, metrics: h.metrics, pids: func() []int { return nonzero(h.pid) }})
		results = append(results, hr)
		if hr.err != nil && h.cmd != nil {
			fmt.Fprintf(stderr, "bench: hermod log:\n%s\n", h.logTail())
		}
		h.stop() // leave the CPUs to the peer
	}
	if len(o.etcd) > 0 {
		cr, err := runClustered(ctx, o, sk, dir, stdout, stderr)
		if err != nil {
			printResults(stdout, o, results)
			return err
		}
		results = append([]*result{cr}, results...) // printed as cluster / single
	}

	if o.peer == "postfix" {
		sk.Reset()
		desc := "no AUTH (mynetworks = 127.0.0.0/8; Postfix SASL needs Cyrus or Dovecot)"
		if o.peerDKIM {
			desc += ", OpenDKIM milter rsa-sha256 2048"
		} else {
			desc += ", unsigned"
		}
		p, err := startPostfix(ctx, dir, sk.Addr(), o.peerDKIM, o.c, stderr)
		if err != nil {
			printResults(stdout, o, results)
			return fmt.Errorf("bench: %w", err)
		}
		fmt.Fprintf(stdout, "# postfix: private instance (%s), %s, smtp_destination_concurrency_limit 20\n", p.confDir, desc)
		pr := runOne(ctx, o, sk, &subject{name: "postfix", addr: p.subAddr, pids: p.pids, postfix: true, dkim: o.peerDKIM})
		if pr.err != nil {
			fmt.Fprintf(stderr, "bench: postfix log:\n%s\n", p.logTail())
		}
		p.stop()
		results = append(results, pr)
	}
	printResults(stdout, o, results)
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("bench: %s: %w", r.name, r.err))
		}
	}
	return errors.Join(errs...)
}

// runClustered runs the workload again on a hermod that is a node of a
// cluster on o.etcd, and counts the requests etcd received meanwhile.
func runClustered(ctx context.Context, o *options, sk sink, dir string, stdout, stderr io.Writer) (*result, error) {
	sk.Reset()
	cdir := filepath.Join(dir, "cluster")
	if err := os.MkdirAll(cdir, 0o700); err != nil {
		return nil, err
	}
	h, err := startHermod(ctx, cdir, sk.Addr(), o.dkim, o.c, o.etcd, stderr)
	if err != nil {
		return nil, fmt.Errorf("bench: clustered hermod: %w", err)
	}
	defer h.stop()
	fmt.Fprintf(stdout, "# hermod+cluster: the same hermod as node b1 of a cluster on etcd %s (heartbeat 5s)\n", strings.Join(o.etcd, ","))
	before, err := etcdRequests(ctx, o.etcd)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	start := time.Now()
	r := runOne(ctx, o, sk, &subject{name: "hermod+cluster", addr: h.subAddr, user: h.user, password: h.password,
		keyByQueueID: true, metrics: h.metrics, pids: func() []int { return nonzero(h.pid) }})
	after, err := etcdRequests(ctx, o.etcd)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	total, byMethod := etcdDelta(before, after)
	if acc, ok := r.figures["messages_accepted"]; ok && acc.ok && acc.v > 0 {
		r.figures["etcd_requests_per_1000_msgs"] = figure{total * 1000 / acc.v, true}
	}
	r.notes = append(r.notes, fmt.Sprintf("etcd received %.0f requests in %s of the run (%s)", total, time.Since(start).Round(time.Millisecond), byMethod))
	if r.err != nil {
		fmt.Fprintf(stderr, "bench: hermod+cluster log:\n%s\n", h.logTail())
	}
	return r, nil
}

func nonzero(pid int) []int {
	if pid == 0 {
		return nil
	}
	return []int{pid}
}

func exeName() string {
	exe, _ := os.Executable()
	return exe
}

func dkimName(alg string) string {
	if alg == "rsa" {
		return "rsa-sha256 2048"
	}
	return "ed25519-sha256"
}

// subject is one MTA under test.
type subject struct {
	name           string
	addr           string
	user, password string
	keyByQueueID   bool
	metrics        func(context.Context) (map[string]float64, error)
	pids           func() []int
	postfix, dkim  bool
}

// result holds the figures of one run; a figure that could not be measured
// is NaN-free: its ok flag is false.
type result struct {
	name    string
	figures map[string]figure
	notes   []string
	err     error
}

type figure struct {
	v  float64
	ok bool
}

// runOne submits the workload to s, waits for the sink, and computes the figures.
func runOne(ctx context.Context, o *options, sk sink, s *subject) *result {
	r := &result{name: s.name, figures: map[string]figure{}}
	set := func(k string, v float64) { r.figures[k] = figure{v, true} }

	var m0 map[string]float64
	if s.metrics != nil {
		m0, _ = s.metrics(ctx)
	}
	cpu0, _ := treeUsage(s.pids()...)
	self0 := selfCPU()
	load0 := loadAvg()
	// Postfix is many processes: sample the sum of their PSS (hermod's
	// VmHWM is read at the end).
	var peak int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		if !s.postfix {
			return
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			_, members := treeUsage(s.pids()...)
			var sum int64
			for _, p := range members {
				sum += pss(p)
			}
			peak = max(peak, sum)
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
		}
	}()

	lo := loadOptions{Addr: s.addr, User: s.user, Password: s.password, Messages: o.n, Sessions: o.c,
		Size: o.size, Rcpts: o.rcpts, Domains: o.domains, Rate: o.rate}
	load := runLoad(ctx, lo, s.keyByQueueID)
	if load.Rejected > 0 {
		r.notes = append(r.notes, fmt.Sprintf("%d messages not accepted, e.g. %q", load.Rejected, load.Errors))
	} else if len(load.Errors) > 0 {
		r.notes = append(r.notes, fmt.Sprintf("sessions reopened after errors, e.g. %q", load.Errors))
	}

	// Wait for every accepted recipient at the sink.
	want := int64(load.Accepted * o.rcpts)
	if o.sink == "smtp-sink" && s.postfix {
		// smtp-sink counts transactions; Postfix puts up to
		// smtp_destination_recipient_limit (50) recipients in one.
		want = int64(load.Accepted * ((o.rcpts + 49) / 50))
	}
	lastSeen, lastCount := time.Now(), sk.Delivered()
	for sk.Delivered() < want && ctx.Err() == nil {
		time.Sleep(2 * time.Millisecond)
		if n := sk.Delivered(); n != lastCount {
			lastSeen, lastCount = time.Now(), n
		}
	}
	delivered := sk.Delivered()
	doneAt := lastSeen
	if delivered >= want {
		doneAt = time.Now()
	}
	stopSampling()
	<-sampled
	cpu1, _ := treeUsage(s.pids()...)
	self1 := selfCPU()
	r.notes = append(r.notes, fmt.Sprintf("load average %s before, %s after (other work on the machine skews every figure)", load0, loadAvg()))
	var m1 map[string]float64
	if s.metrics != nil {
		m1, _ = s.metrics(context.WithoutCancel(ctx))
	}
	st := sk.Stats()

	set("messages_accepted", float64(load.Accepted))
	set("recipients_delivered", float64(delivered))
	if delivered < want {
		r.err = fmt.Errorf("only %d of %d recipients delivered when the run ended (-timeout %v or interrupt; %d of %d messages accepted)",
			delivered, want, o.timeout, load.Accepted, o.n)
	} else if load.Accepted < o.n {
		r.err = fmt.Errorf("%d of %d messages accepted", load.Accepted, o.n)
	}
	if load.Accepted == 0 {
		return r
	}

	// Throughput.
	acceptDur := load.End.Sub(load.Start).Seconds()
	set("accepted_msgs_per_s", float64(load.Accepted)/acceptDur)
	var lastArrival time.Time
	var deliveryLat []time.Duration
	for key, times := range st.Arrivals {
		ack, ok := load.Acks[key]
		for _, t := range times {
			lastArrival = maxTime(lastArrival, t)
			if ok {
				deliveryLat = append(deliveryLat, max(t.Sub(ack), 0))
			}
		}
	}
	if lastArrival.IsZero() {
		lastArrival = doneAt
	}
	if delivered >= want {
		set("delivered_msgs_per_s", float64(load.Accepted)/lastArrival.Sub(load.Start).Seconds())
	}

	// Latencies.
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	slices.Sort(load.Latencies)
	set("submit_latency_p50_ms", ms(percentile(load.Latencies, 50)))
	set("submit_latency_p99_ms", ms(percentile(load.Latencies, 99)))
	set("submit_latency_max_ms", ms(load.Latencies[len(load.Latencies)-1]))
	if len(deliveryLat) > 0 {
		slices.Sort(deliveryLat)
		set("delivery_latency_p50_ms", ms(percentile(deliveryLat, 50)))
		set("delivery_latency_p99_ms", ms(percentile(deliveryLat, 99)))
	}

	// Resources.
	pids := s.pids()
	if len(pids) == 1 && !s.postfix {
		var ps procStat
		if err := readMem(pids[0], &ps); err == nil && ps.hwmBytes > 0 {
			set("peak_rss_mb", float64(ps.hwmBytes)/(1<<20))
		}
	} else if peak > 0 {
		set("peak_rss_mb", float64(peak)/(1<<20))
		r.notes = append(r.notes, "peak_rss_mb: largest sum of PSS over all its processes, sampled every second")
	}
	per1000 := func(v float64) float64 { return v * 1000 / float64(load.Accepted) }
	if len(pids) > 0 {
		set("cpu_s_per_1000_msgs", per1000(cpu1-cpu0))
	}
	set("loadgen_cpu_s_per_1000_msgs", per1000(self1-self0))

	// Counters: hermod's metrics, else what the sink saw.
	delta := func(name string) (float64, bool) {
		a, ok0 := m0[name]
		b, ok1 := m1[name]
		return b - a, ok0 && ok1
	}
	if v, ok := delta("hermod_store_commits_total"); ok {
		set("fsyncs_per_1000_msgs", per1000(v))
	}
	if v, ok := delta("hermod_dkim_signatures_total"); ok {
		set("dkim_signatures_per_s", v/acceptDur)
	} else if st.Signed >= 0 && (!s.postfix || s.dkim) {
		set("dkim_signatures_per_s", float64(st.Signed)/acceptDur)
	}
	if st.Signed >= 0 {
		set("signed_at_sink_pct", 100*float64(st.Signed)/float64(max(st.Messages, 1)))
	}
	if o.sink == "go" {
		set("connections_per_1000_msgs", per1000(float64(st.Connections)))
	} else if v, ok := delta("hermod_relay_connections_opened_total"); ok {
		set("connections_per_1000_msgs", per1000(v))
	}
	return r
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// figureOrder is the order of the printed lines.
var figureOrder = []string{
	"messages_accepted", "recipients_delivered",
	"accepted_msgs_per_s", "delivered_msgs_per_s",
	"submit_latency_p50_ms", "submit_latency_p99_ms", "submit_latency_max_ms",
	"delivery_latency_p50_ms", "delivery_latency_p99_ms",
	"peak_rss_mb", "cpu_s_per_1000_msgs", "loadgen_cpu_s_per_1000_msgs", "fsyncs_per_1000_msgs",
	"dkim_signatures_per_s", "signed_at_sink_pct", "connections_per_1000_msgs",
	"etcd_requests_per_1000_msgs",
}

func printResults(w io.Writer, o *options, rs []*result) {
	for _, r := range rs {
		for _, n := range r.notes {
			fmt.Fprintf(w, "# %s: %s\n", r.name, n)
		}
	}
	val := func(r *result, k string) string {
		f, ok := r.figures[k]
		if !ok || !f.ok {
			return "n/a"
		}
		return fmtNum(f.v)
	}
	if len(rs) == 0 {
		return
	}
	if len(rs) == 1 {
		for _, k := range figureOrder {
			fmt.Fprintf(w, "%-27s %12s\n", k, val(rs[0], k))
		}
		return
	}
	fmt.Fprintf(w, "%-27s %12s %12s %9s\n", "figure", rs[0].name, rs[1].name, rs[0].name+"/"+rs[1].name)
	for _, k := range figureOrder {
		ratio := "n/a"
		a, b := rs[0].figures[k], rs[1].figures[k]
		if a.ok && b.ok && b.v != 0 {
			ratio = fmt.Sprintf("%.2f", a.v/b.v)
		}
		fmt.Fprintf(w, "%-27s %12s %12s %9s\n", k, val(rs[0], k), val(rs[1], k), ratio)
	}
}

func fmtNum(v float64) string {
	switch {
	case v == float64(int64(v)):
		return fmt.Sprintf("%d", int64(v))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
