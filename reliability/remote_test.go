package reliability

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
)

// TestRemoteFaults delivers one message per misbehaving destination, MX
// found through a miekg/dns server on loopback, and checks each ends in the
// right status with the remote reply kept. MX names resolve to 127.0.0.N; a
// relay dialer sends 127.0.0.1 to the sink and 127.0.0.N to scenario N's
// fake MX (always on 127.0.0.1), refusing anything else.
func TestRemoteFaults(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	dnsSrv := testnet.NewDNS(t)
	relayPort := portOf(t, sink.Addr())

	type scenario struct {
		name   string
		mx     *fakeMX // nil: DNS scenario or the sink
		want   queue.Status
		code   int
		text   string // the remote text (or error) must contain this
		reason string
	}
	sc := []*scenario{
		{name: "greet-421", mx: &fakeMX{replies: map[string]string{"greet": "421 4.3.2 greeting: too busy, come back later"}}, want: queue.StatusDeferred, code: 421, text: "too busy"},
		{name: "greet-554", mx: &fakeMX{replies: map[string]string{"greet": "554 5.7.1 greeting: no SMTP service here"}}, want: queue.StatusBounced, code: 554, text: "no SMTP service"},
		{name: "ehlo-451", mx: &fakeMX{replies: map[string]string{"ehlo": "451 4.3.0 ehlo: try later"}}, want: queue.StatusDeferred, code: 451, text: "ehlo: try later"},
		{name: "ehlo-550", mx: &fakeMX{replies: map[string]string{"ehlo": "550 5.7.1 ehlo: go away"}}, want: queue.StatusBounced, code: 550, text: "ehlo: go away"},
		{name: "mail-451", mx: &fakeMX{replies: map[string]string{"mail": "451 4.7.1 mail: greylisted, retry later"}}, want: queue.StatusDeferred, code: 451, text: "greylisted"},
		{name: "mail-553", mx: &fakeMX{replies: map[string]string{"mail": "553 5.1.8 mail: sender domain does not exist"}}, want: queue.StatusBounced, code: 553, text: "sender domain"},
		{name: "rcpt-452", mx: &fakeMX{replies: map[string]string{"rcpt": "452 4.2.2 rcpt: mailbox full, try later"}}, want: queue.StatusDeferred, code: 452, text: "mailbox full"},
		{name: "rcpt-550", mx: &fakeMX{replies: map[string]string{"rcpt": "550 5.1.1 rcpt: no such user here"}}, want: queue.StatusBounced, code: 550, text: "no such user", reason: "user-unknown"},
		{name: "data-451", mx: &fakeMX{replies: map[string]string{"data": "451 4.3.0 data: not now"}}, want: queue.StatusDeferred, code: 451, text: "data: not now"},
		{name: "data-554", mx: &fakeMX{replies: map[string]string{"data": "554 5.3.0 data: no thanks"}}, want: queue.StatusBounced, code: 554, text: "data: no thanks"},
		{name: "end-452", mx: &fakeMX{replies: map[string]string{"end": "452 4.3.1 end: queue full"}}, want: queue.StatusDeferred, code: 452, text: "queue full"},
		{name: "end-554", mx: &fakeMX{replies: map[string]string{"end": "554 5.7.1 end: message looks like spam"}}, want: queue.StatusBounced, code: 554, text: "looks like spam"},
		{name: "drop-in-data", mx: &fakeMX{dropInData: true}, want: queue.StatusDeferred},
		{name: "tarpit", mx: &fakeMX{delays: map[string]time.Duration{"mail": 3 * time.Second}}, want: queue.StatusDeferred},
		{name: "starttls-broken", mx: &fakeMX{starttls: true}, want: queue.StatusSent, code: 250},
		{name: "first-mx-dead", want: queue.StatusSent, code: 250},
		{name: "dns-servfail", want: queue.StatusDeferred, text: "servfail", reason: "network"},
		{name: "dns-timeout", want: queue.StatusDeferred, text: "timeout", reason: "network"},
		{name: "dns-truncated", want: queue.StatusSent, code: 250},
		{name: "dns-nxdomain", want: queue.StatusBounced, reason: "host-unknown"},
		{name: "dns-nullmx", want: queue.StatusBounced, reason: "not-accept"},
	}
	hang := &fakeMX{hold: make(chan struct{}), replies: map[string]string{"end": "451 4.4.2 hang: released at last"}}
	newFakeMX(t, hang)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(hang.hold) }) }
	t.Cleanup(release)

	// A dead port: listened on, then closed.
	dl, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := dl.Addr().String()
	dl.Close()

	routes := map[string]string{"127.0.0.1": sink.Addr(), "127.0.0.2": dead, "127.0.0.3": hang.addr}
	dnsSrv.Add("healthy.test. 300 IN MX 10 mx.healthy.test.", "mx.healthy.test. 300 IN A 127.0.0.1",
		"hang.test. 300 IN MX 10 mx.hang.test.", "mx.hang.test. 300 IN A 127.0.0.3")
	for i, s := range sc {
		dom := s.name + ".test."
		switch {
		case s.mx != nil:
			newFakeMX(t, s.mx)
			ip := fmt.Sprintf("127.0.0.%d", 10+i)
			routes[ip] = s.mx.addr
			dnsSrv.Add(dom+" 300 IN MX 10 mx."+dom, "mx."+dom+" 300 IN A "+ip)
		case s.name == "first-mx-dead":
			dnsSrv.Add(dom+" 300 IN MX 10 mx1."+dom, dom+" 300 IN MX 20 mx2."+dom,
				"mx1."+dom+" 300 IN A 127.0.0.2", "mx2."+dom+" 300 IN A 127.0.0.1")
		case s.name == "dns-servfail":
			dnsSrv.ServFail(dom, true)
		case s.name == "dns-timeout":
			dnsSrv.Timeout(dom, true)
		case s.name == "dns-truncated":
			dnsSrv.Add(dom+" 300 IN MX 10 mx."+dom, "mx."+dom+" 300 IN A 127.0.0.1")
			dnsSrv.Truncate(dom, true)
		case s.name == "dns-nullmx":
			dnsSrv.Add(dom + " 300 IN MX 0 .")
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
	cfg := testConfig(t, cfgOpts{resolver: dnsSrv.Addr(), relayPort: relayPort, commandTimeout: "500ms", connectTimeout: "20s", retry: `"1h"`})
	o := daemonOpts()
	o.RelayDialer = dialer
	d := startDaemon(t, cfg, o)
	sub := d.Addr("submission.listen")

	// A hanging destination first; then every scenario and a healthy one.
	hangID := submit(t, sub, "user@hang.test")
	deadline := time.Now().Add(10 * time.Second)
	for _, open, _ := hang.stats(); open == 0 && time.Now().Before(deadline); _, open, _ = hang.stats() {
		time.Sleep(20 * time.Millisecond)
	}
	ids := make([]string, len(sc))
	for i, s := range sc {
		ids[i] = submit(t, sub, "user@"+s.name+".test")
	}
	healthyID := submit(t, sub, "user@healthy.test")
	waitRcpt(t, d, healthyID, 0, queue.StatusSent, 15*time.Second)
	_, hangOpen, _ := hang.stats()
	hm, _ := d.Store.Get(hangID)
	blocked := hangOpen == 0 || hm.Recipients[0].Status != queue.StatusQueued
	if blocked {
		t.Errorf("the healthy destination was sent only after the hanging one ended (hang open %d, status %s)", hangOpen, hm.Recipients[0].Status)
	}
	release()
	hr := waitRcpt(t, d, hangID, 0, queue.StatusDeferred, 15*time.Second)
	if hr.Last == nil || hr.Last.Code != 451 || !strings.Contains(hr.Last.Text, "released at last") {
		t.Errorf("hang: last %+v", hr.Last)
	}

	right := 0
	for i, s := range sc {
		r := waitRcpt(t, d, ids[i], 0, s.want, 20*time.Second)
		ok := r.Status == s.want && r.Last != nil
		if ok && s.code != 0 && r.Last.Code != s.code {
			ok = false
		}
		if ok && s.text != "" && !strings.Contains(strings.ToLower(r.Last.Text), strings.ToLower(s.text)) {
			ok = false
		}
		if ok && s.reason != "" && r.Reason != s.reason {
			ok = false
		}
		if ok && s.want != queue.StatusSent && r.Last.Text == "" {
			ok = false // the reply or error must be kept
		}
		if ok {
			right++
		} else {
			t.Errorf("%s: status %s reason %q, want %s %d %q %q; last %+v", s.name, r.Status, r.Reason, s.want, s.code, s.text, s.reason, r.Last)
		}
		if s.mx != nil {
			c, _, dlv := s.mx.stats()
			t.Logf("%-16s %-9s %3d %-40.40q conns %d delivered %d", s.name, r.Status, r.Last.Code, r.Last.Text, c, dlv)
		} else {
			t.Logf("%-16s %-9s %3d %-40.40q", s.name, r.Status, r.Last.Code, r.Last.Text)
		}
	}
	if c, _, _ := sc[14].mx.stats(); c < 2 {
		t.Errorf("starttls-broken: %d connections, want a retry without STARTTLS", c)
	}
	if dnsSrv.TCPQueries() == 0 {
		t.Error("dns-truncated: no query came over TCP")
	}
	dialMu.Lock()
	if dialed["127.0.0.2"] == 0 {
		t.Error("first-mx-dead: the dead MX was never tried")
	}
	dialMu.Unlock()
	for _, s := range sc {
		if s.want == queue.StatusSent && s.mx == nil && sink.Count("user@"+s.name+".test") != 1 {
			t.Errorf("%s: the sink got %d copies", s.name, sink.Count("user@"+s.name+".test"))
		}
	}
	notBlocked := "a hanging destination did not block another"
	if blocked {
		notBlocked = "A HANGING DESTINATION BLOCKED ANOTHER"
	}
	summary(t, "remote faults: %d scenarios, %d ended right (%s)", len(sc)+1, right+btoi(hr.Status == queue.StatusDeferred && !blocked), notBlocked)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
