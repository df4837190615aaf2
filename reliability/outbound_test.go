package reliability

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// TestOutboundHostileServers (issue #11, remote MX hosts): hostile MX
// hosts on loopback, each found through a miekg/dns server, one message
// each: replies that never end at every step, a one-byte trickle, a TLS
// handshake that never ends, DATA never answered, a host greeting with
// hermod's own name (a loop), and a domain with 12 MX hosts that accept
// and never greet. Each must end deferred (or, for the loop, bounced with
// reason network; for the TLS hang, sent in plain text) within its bound,
// the heap must stay flat, and a healthy destination must still be served
// afterwards. Not parallel: the heap figure is this test's alone.
func TestOutboundHostileServers(t *testing.T) {
	sink := testnet.NewSink(t)
	dnsSrv := testnet.NewDNS(t)
	relayPort := portOf(t, sink.Addr())
	const connectTimeout = time.Second

	type scenario struct {
		name   string
		h      *testnet.HostileMX
		mx     int // > 1: that many MX hosts, all h
		want   queue.Status
		reason string
		text   string        // the kept text must contain this
		within time.Duration // from submission to the final status
	}
	flood := func(at string, act testnet.HostileAct) *testnet.HostileMX {
		return &testnet.HostileMX{At: at, Act: act}
	}
	sc := []*scenario{
		{name: "greeting-flood", h: flood("greet", testnet.FloodLines), want: queue.StatusDeferred, reason: "network", text: "reply longer than", within: 5 * time.Second},
		{name: "greeting-endless-line", h: flood("greet", testnet.FloodLine), want: queue.StatusDeferred, reason: "network", text: "reply line longer than", within: 5 * time.Second},
		{name: "ehlo-flood", h: flood("ehlo", testnet.FloodLines), want: queue.StatusDeferred, reason: "network", text: "reply longer than", within: 5 * time.Second},
		{name: "rcpt-endless-line", h: flood("rcpt", testnet.FloodLine), want: queue.StatusDeferred, reason: "network", text: "reply line longer than", within: 5 * time.Second},
		{name: "final-reply-flood", h: flood("end", testnet.FloodLines), want: queue.StatusDeferred, reason: "network", text: "reply longer than", within: 5 * time.Second},
		{name: "mail-trickle", h: &testnet.HostileMX{At: "mail", Act: testnet.Trickle, Every: 50 * time.Millisecond}, want: queue.StatusDeferred, reason: "network", text: "timeout", within: 5 * time.Second},
		{name: "tls-handshake-hang", h: &testnet.HostileMX{At: "starttls", Act: testnet.TLSHang}, want: queue.StatusSent, within: 5 * time.Second},
		{name: "data-never-answered", h: &testnet.HostileMX{At: "data", Act: testnet.Silent}, want: queue.StatusDeferred, reason: "network", text: "timeout", within: 5 * time.Second},
		{name: "loop", h: &testnet.HostileMX{Greet: "220 hermod.test ESMTP"}, want: queue.StatusBounced, reason: "network", text: "loops back to myself", within: 5 * time.Second},
		{name: "12-mx-never-greet", h: &testnet.HostileMX{At: "greet", Act: testnet.Silent}, mx: 12, want: queue.StatusDeferred, reason: "network", text: "timeout",
			within: 2*connectTimeout + 3*time.Second}, // mx_session_limit (default 2) × connect_timeout, not 12 ×
	}
	routes := map[string]string{"127.0.0.1": sink.Addr()}
	dnsSrv.Add("healthy.test. 300 IN MX 10 mx.healthy.test.", "mx.healthy.test. 300 IN A 127.0.0.1")
	for i, s := range sc {
		testnet.NewHostileMX(t, s.h)
		dom := s.name + ".test."
		for j := range max(s.mx, 1) {
			ip := fmt.Sprintf("127.0.%d.%d", 10+i, 1+j)
			routes[ip] = s.h.Addr()
			host := fmt.Sprintf("mx%d.%s", j, dom)
			dnsSrv.Add(fmt.Sprintf("%s 300 IN MX %d %s", dom, 10*(j+1), host), host+" 300 IN A "+ip)
		}
	}
	var dialMu sync.Mutex
	dialed := map[string]int{}
	dialer := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || port != fmt.Sprint(relayPort) || routes[host] == "" {
			return nil, fmt.Errorf("test dialer: refusing %s (not a test MX)", addr)
		}
		dialMu.Lock()
		dialed[host]++
		dialMu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, "tcp", routes[host])
	}
	cfg := testConfig(t, cfgOpts{resolver: dnsSrv.Addr(), relayPort: relayPort, commandTimeout: "500ms", connectTimeout: connectTimeout.String(), retry: `"1h"`})
	o := daemonOpts()
	o.RelayDialer = dialer
	d := startDaemon(t, cfg, o)
	sub := d.Addr("submission.listen")

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	// The long form sends each hostile server several messages at once.
	per := 1
	if soak() {
		per = 8
	}
	ids := make([][]string, len(sc))
	start := make([]time.Time, len(sc))
	for i, s := range sc {
		start[i] = time.Now()
		for range per {
			ids[i] = append(ids[i], submit(t, sub, "user@"+s.name+".test"))
		}
	}
	held := 0 // attempts that got past their bound or ended wrong
	for i, s := range sc {
		for _, id := range ids[i] {
			r := waitRcpt(t, d, id, 0, s.want, 60*time.Second)
			took := time.Since(start[i])
			if r.Last != nil {
				took = r.Last.Time.Sub(start[i]) // when it ended, not when we looked
			}
			ok := r.Status == s.want && r.Last != nil && (s.reason == "" || r.Reason == s.reason) &&
				(s.text == "" || strings.Contains(r.Last.Text, s.text)) && took <= s.within
			if !ok {
				held++
				t.Errorf("%s: status %s reason %q after %s, want %s %q %q within %s; last %+v", s.name, r.Status, r.Reason, took, s.want, s.reason, s.text, s.within, r.Last)
			}
			if id == ids[i][0] {
				t.Logf("%-22s %-9s %-8s %6s conns %2d server wrote %6d KiB  %.60q", s.name, r.Status, r.Reason, took.Round(time.Millisecond), s.h.Connections(), s.h.Sent()>>10, r.Last.Text)
			}
		}
	}
	dialMu.Lock()
	mxTried := 0
	for j := range 12 {
		mxTried += min(dialed[fmt.Sprintf("127.0.%d.%d", 10+len(sc)-1, 1+j)], 1)
	}
	dialMu.Unlock()
	if mxTried != 2 && per == 1 {
		t.Errorf("12-mx-never-greet: %d of the 12 MX hosts tried, want 2 (mx_session_limit)", mxTried)
	}
	// Still alive and serving: a healthy destination after all of them.
	healthy := submit(t, sub, "user@healthy.test")
	hr := waitRcpt(t, d, healthy, 0, queue.StatusSent, 15*time.Second)
	crashes := 0
	if hr.Status != queue.StatusSent {
		crashes++
	}
	close(stop)
	<-sampled
	const maxGrowth = 64 << 20
	if peak-base > maxGrowth {
		t.Errorf("heap grew from %d MiB to a peak of %d MiB, want under %d MiB growth", base>>20, peak>>20, maxGrowth>>20)
	}
	summary(t, "outbound: %d hostile servers, %d message(s) each, %d held a delivery past its bound, heap peak %d MB (+%d MB), %d crashes, %d of a 12-MX domain's hosts tried",
		len(sc), per, held, peak>>20, (peak-base)>>20, crashes, mxTried)
}
