package relay

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/vocab"
)

const testBody = "From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nline one\r\n.line with a leading dot\r\n"

// fakeClock is an injectable clock advanced by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testDialer dials loopback only. Addresses in dead (192.0.2.0/24 in the
// tests' DNS) are sent to a closed port on 127.0.0.1, so they refuse.
type testDialer struct {
	t    *testing.T
	dead string // 127.0.0.1:<closed port>
	to   map[netip.Addr]string

	mu    sync.Mutex
	dials []string
}

func newTestDialer(t *testing.T) *testDialer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	return &testDialer{t: t, dead: dead, to: make(map[netip.Addr]string)}
}

// redirect sends dials of ip (any port) to the loopback address to.
func (d *testDialer) redirect(ip, to string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.to[netip.MustParseAddr(ip)] = to
}

func (d *testDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		d.t.Errorf("dial of non-literal address %q", addr)
		return nil, err
	}
	d.mu.Lock()
	d.dials = append(d.dials, addr)
	to, redirected := d.to[ap.Addr()]
	d.mu.Unlock()
	switch {
	case redirected:
		addr = to
	case ap.Addr().IsLoopback():
	case netip.MustParsePrefix("192.0.2.0/24").Contains(ap.Addr()):
		addr = d.dead
	default:
		d.t.Errorf("dial of non-loopback address %q", addr)
		return nil, fmt.Errorf("test: refusing to dial %s", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *testDialer) log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dials...)
}

type testEnv struct {
	dns    *testnet.DNS
	sink   *sink
	dialer *testDialer
	relay  *Relay
	clock  *fakeClock
}

// setup starts a DNS server with example.test's MX pointing at the sink,
// a sink configured by sinkCfg and a Relay configured by mod.
func setup(t *testing.T, sinkCfg func(*sink), mod func(*Options)) *testEnv {
	t.Helper()
	e := &testEnv{dns: testnet.NewDNS(t), sink: newSink(t, sinkCfg), dialer: newTestDialer(t), clock: newFakeClock()}
	e.dns.Add(
		"example.test. 300 IN MX 10 mx.example.test.",
		"mx.example.test. 300 IN A 127.0.0.1",
	)
	opts := Options{
		Hostname:   "relay.test",
		Resolvers:  []string{e.dns.Addr()},
		DNSTimeout: 2 * time.Second,
		Port:       e.sink.port,
		Dialer:     e.dialer.Dial,
		Now:        e.clock.Now,
	}
	if mod != nil {
		mod(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	e.relay = r
	return e
}

func (e *testEnv) deliver(t *testing.T, rcpt string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	return e.relay.Deliver(ctx, "bounce-md_x1@m.relay.test", rcpt, Bytes(testBody))
}

func TestDeliverSent(t *testing.T) {
	e := setup(t, nil, nil)
	got := e.deliver(t, "taro@example.test")
	want := Result{Outcome: Sent, Host: "mx.example.test", Addr: e.sink.addr, Code: 250, EnhancedCode: "2.0.0", Text: "OK: queued", Stage: StageEndOfData, Phase: vocab.PhaseEndOfData}
	if got != want {
		t.Errorf("Deliver result\n got %+v\nwant %+v", got, want)
	}
	msgs := e.sink.messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(msgs))
	}
	wantMsg := received{From: "bounce-md_x1@m.relay.test", To: []string{"taro@example.test"}, Data: []byte(testBody)}
	if !reflect.DeepEqual(wantMsg, msgs[0]) {
		t.Errorf("delivered message\n got %+v\nwant %+v", msgs[0], wantMsg)
	}
}

func TestDeliverStageReplies(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func(*sink)
		want Result
	}{
		{"greeting 421", func(s *sink) { s.greeting = "421-4.3.2 busy\r\n421 4.3.2 come back later\r\n" },
			Result{Outcome: Temporary, Phase: vocab.PhaseConnect, Stage: StageGreeting, Code: 421, EnhancedCode: "4.3.2", Text: "busy\ncome back later"}},
		{"greeting 554", func(s *sink) { s.greeting = "554 5.7.1 no SMTP service here\r\n" },
			Result{Outcome: Permanent, Phase: vocab.PhaseConnect, Stage: StageGreeting, Code: 554, EnhancedCode: "5.7.1", Text: "no SMTP service here"}},
		{"ehlo 421", func(s *sink) { s.ehlo = func(int) error { return smtpErr(421, "4.7.0", "too many sessions") } },
			Result{Outcome: Temporary, Phase: vocab.PhaseEHLO, Stage: StageEHLO, Code: 421, EnhancedCode: "4.7.0", Text: "too many sessions"}},
		{"ehlo 550", func(s *sink) { s.ehlo = func(int) error { return smtpErr(550, "5.7.1", "go away") } },
			Result{Outcome: Permanent, Phase: vocab.PhaseEHLO, Stage: StageEHLO, Code: 550, EnhancedCode: "5.7.1", Text: "go away"}},
		{"mail 451", func(s *sink) { s.mail = func(string) error { return smtpErr(451, "4.3.0", "local error, try again") } },
			Result{Outcome: Temporary, Phase: vocab.PhaseMail, Stage: StageMail, Code: 451, EnhancedCode: "4.3.0", Text: "local error, try again"}},
		{"mail 553", func(s *sink) { s.mail = func(string) error { return smtpErr(553, "5.7.1", "sender rejected") } },
			Result{Outcome: Permanent, Phase: vocab.PhaseMail, Stage: StageMail, Code: 553, EnhancedCode: "5.7.1", Text: "sender rejected"}},
		{"rcpt 450 greylist", func(s *sink) {
			s.rcpt = func(string) error { return smtpErr(450, "4.2.0", "Greylisted, see https://grey.test/") }
		},
			Result{Outcome: Temporary, Phase: vocab.PhaseRcpt, Stage: StageRcpt, Code: 450, EnhancedCode: "4.2.0", Text: "Greylisted, see https://grey.test/"}},
		{"rcpt 550 unknown", func(s *sink) {
			s.rcpt = func(to string) error {
				return smtpErr(550, "5.1.1", "<"+to+">: Recipient address rejected: User unknown in local recipient table")
			}
		}, Result{Outcome: Permanent, Phase: vocab.PhaseRcpt, Stage: StageRcpt, Code: 550, EnhancedCode: "5.1.1", Text: "<taro@example.test>: Recipient address rejected: User unknown in local recipient table"}},
		{"rcpt 550 no enhanced code", func(s *sink) { s.rcpt = func(string) error { return smtpErr(550, "", "no such user") } },
			Result{Outcome: Permanent, Phase: vocab.PhaseRcpt, Stage: StageRcpt, Code: 550, Text: "no such user"}},
		{"data 452", func(s *sink) {
			s.data = func([]byte) error { return smtpErr(452, "4.3.1", "Insufficient system storage") }
		},
			Result{Outcome: Temporary, Phase: vocab.PhaseEndOfData, Stage: StageEndOfData, Code: 452, EnhancedCode: "4.3.1", Text: "Insufficient system storage"}},
		{"data 554 spam", func(s *sink) {
			s.data = func([]byte) error { return smtpErr(554, "5.7.1", "Message rejected as spam") }
		},
			Result{Outcome: Permanent, Phase: vocab.PhaseEndOfData, Stage: StageEndOfData, Code: 554, EnhancedCode: "5.7.1", Text: "Message rejected as spam"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, tc.cfg, nil)
			got := e.deliver(t, "taro@example.test")
			tc.want.Host, tc.want.Addr = "mx.example.test", e.sink.addr
			if got != tc.want {
				t.Errorf("Deliver result\n got %+v\nwant %+v", got, tc.want)
			}
			if n := len(e.sink.messages()); n != 0 {
				t.Errorf("sink stored %d messages, want 0", n)
			}
		})
	}
}

func TestHELOFallback(t *testing.T) {
	e := setup(t, func(s *sink) {
		s.ehlo = func(n int) error {
			if n == 1 {
				return smtpErr(502, "5.5.1", "EHLO not implemented")
			}
			return nil
		}
	}, nil)
	if got := e.deliver(t, "taro@example.test"); got.Outcome != Sent {
		t.Fatalf("Deliver = %v, want sent after HELO", got)
	}
}

func TestDropMidData(t *testing.T) {
	e := setup(t, func(s *sink) { s.dropInData = true }, nil)
	got := e.deliver(t, "taro@example.test")
	if got.Outcome != Temporary || got.Stage != StageEndOfData || got.Phase != vocab.PhaseEndOfData || got.Code != 0 || got.Text == "" {
		t.Errorf("Deliver = %+v, want Temporary at data without code, with a description", got)
	}
	if n := len(e.sink.messages()); n != 0 {
		t.Errorf("sink stored %d messages, want 0", n)
	}
}

func TestDNSFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(d *testnet.DNS)
		rcpt    string
		outcome Outcome
		dns     string
	}{
		{"nxdomain", func(*testnet.DNS) {}, "a@nowhere.test", Permanent, KindNXDomain},
		{"null MX", func(d *testnet.DNS) { d.Add("nomail.test. 300 IN MX 0 .") }, "a@nomail.test", Permanent, KindNullMX},
		{"servfail", func(d *testnet.DNS) { d.ServFail("broken.test", true) }, "a@broken.test", Temporary, KindServFail},
		{"timeout", func(d *testnet.DNS) { d.Timeout("slow.test", true) }, "a@slow.test", Temporary, KindTimeout},
		{"MX host without address", func(d *testnet.DNS) {
			d.Add("noaddr.test. 300 IN MX 10 mx.noaddr.test.", "noaddr.test. 300 IN TXT \"v=spf1 -all\"")
		}, "a@noaddr.test", Permanent, KindNoAddress},
		{"MX host lookup servfail", func(d *testnet.DNS) {
			d.Add("flaky.test. 300 IN MX 10 mx.flaky.test.")
			d.ServFail("mx.flaky.test", true)
		}, "a@flaky.test", Temporary, KindServFail},
		{"no MX and no address", func(d *testnet.DNS) { d.Add("txtonly.test. 300 IN TXT \"hello\"") }, "a@txtonly.test", Permanent, KindNoAddress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, nil, func(o *Options) { o.DNSTimeout = 100 * time.Millisecond })
			tc.prepare(e.dns)
			got := e.deliver(t, tc.rcpt)
			if got.Outcome != tc.outcome || got.DNS != tc.dns || got.Stage != StageDNS || got.Code != 0 || got.Text == "" {
				t.Errorf("Deliver(%s) = %+v, want %v with DNS %q at stage dns", tc.rcpt, got, tc.outcome, tc.dns)
			}
			if len(e.dialer.log()) != 0 {
				t.Errorf("dialled %v, want nothing", e.dialer.log())
			}
		})
	}
}

func TestTruncatedAnswerUsesTCP(t *testing.T) {
	e := setup(t, nil, nil)
	e.dns.Truncate("example.test", true)
	if got := e.deliver(t, "taro@example.test"); got.Outcome != Sent {
		t.Fatalf("Deliver = %v, want sent", got)
	}
	if e.dns.TCPQueries() == 0 {
		t.Error("no query over TCP after a truncated UDP answer")
	}
}

func TestImplicitMX(t *testing.T) {
	e := setup(t, nil, nil)
	e.dns.Add("implicit.test. 300 IN A 127.0.0.1")
	got := e.deliver(t, "a@implicit.test")
	if got.Outcome != Sent || got.Host != "implicit.test" {
		t.Fatalf("Deliver = %+v, want sent via implicit.test", got)
	}
}

func TestMXPreferenceAndFailover(t *testing.T) {
	e := setup(t, nil, nil)
	e.dns.Add(
		"pref.test. 300 IN MX 20 backup.pref.test.",
		"pref.test. 300 IN MX 10 primary.pref.test.",
		"primary.pref.test. 300 IN A 192.0.2.1", // refuses connections
		"backup.pref.test. 300 IN A 127.0.0.1",
	)
	got := e.deliver(t, "a@pref.test")
	if got.Outcome != Sent || got.Host != "backup.pref.test" {
		t.Fatalf("Deliver = %+v, want sent via backup.pref.test", got)
	}
	port := fmt.Sprint(e.sink.port)
	want := []string{"192.0.2.1:" + port, "127.0.0.1:" + port}
	if got := e.dialer.log(); !reflect.DeepEqual(got, want) {
		t.Errorf("dial order = %v, want %v", got, want)
	}
}

func TestAllMXDown(t *testing.T) {
	e := setup(t, nil, nil)
	e.dns.Add(
		"down.test. 300 IN MX 10 mx1.down.test.",
		"down.test. 300 IN MX 20 mx2.down.test.",
		"mx1.down.test. 300 IN A 192.0.2.1",
		"mx2.down.test. 300 IN A 192.0.2.2",
	)
	got := e.deliver(t, "a@down.test")
	if got.Outcome != Temporary || got.Stage != StageConnect || got.Host != "mx2.down.test" || got.Code != 0 {
		t.Errorf("Deliver = %+v, want Temporary connect failure reported for the last host", got)
	}
	if n := len(e.dialer.log()); n != 2 {
		t.Errorf("dialled %d addresses, want 2", n)
	}
}

func TestGreetingRefusalTriesNextHost(t *testing.T) {
	for _, greeting := range []string{"421 4.3.2 busy\r\n", "554 5.7.1 go away\r\n"} {
		e := setup(t, nil, nil)
		busy := newSink(t, func(s *sink) { s.greeting = greeting })
		e.dialer.redirect("192.0.2.50", busy.addr)
		e.dns.Add(
			"busy.test. 300 IN MX 10 mx1.busy.test.",
			"busy.test. 300 IN MX 20 mx2.busy.test.",
			"mx1.busy.test. 300 IN A 192.0.2.50",
			"mx2.busy.test. 300 IN A 127.0.0.1",
		)
		got := e.deliver(t, "a@busy.test")
		if got.Outcome != Sent || got.Host != "mx2.busy.test" {
			t.Errorf("first MX greets %q: Deliver = %+v, want sent via mx2.busy.test", greeting, got)
		}
		if busy.connections() != 1 {
			t.Errorf("busy MX saw %d connections, want 1", busy.connections())
		}
	}
}

func TestRoutes(t *testing.T) {
	e := setup(t, nil, nil)
	port := fmt.Sprint(e.sink.port)
	e.dns.Add("smart.test. 300 IN A 127.0.0.1")
	e.relay.SetRoutes([]Route{
		{Domain: "*.corp.test", Host: "192.0.2.9:" + port}, // refuses
		{Domain: "a.corp.test", Host: "smart.test:" + port},
		{Domain: "*.b.corp.test", Host: "127.0.0.1:" + port},
	})
	for _, tc := range []struct {
		rcpt    string
		outcome Outcome
		host    string
	}{
		{"x@a.corp.test", Sent, "smart.test"},         // exact beats *.corp.test
		{"x@z.b.corp.test", Sent, "127.0.0.1"},        // longer suffix wins
		{"x@other.corp.test", Temporary, "192.0.2.9"}, // the wildcard
		{"x@corp.test", Permanent, ""},                // not a subdomain: MX lookup, NXDOMAIN
		{"x@example.test", Sent, "mx.example.test"},   // no route: MX
		{"x@A.Corp.Test", Sent, "smart.test"},         // case-insensitive
		{"x@b.corp.test", Temporary, "192.0.2.9"},     // *.b.corp.test does not match b.corp.test
		{"x@deep.z.b.corp.test", Sent, "127.0.0.1"},   // any depth
		{"x@a.corp.test.invalid", Permanent, ""},      // suffix must end the name
		{"x@xa.corp.test", Temporary, "192.0.2.9"},    // exact means exact
		{"x@nothing.b.corp.test", Sent, "127.0.0.1"},  //
		{"x@other.example.test", Permanent, ""},       // NXDOMAIN
		{"x@example.test", Sent, "mx.example.test"},   // again, from the pool
		{"x@sub.a.corp.test", Temporary, "192.0.2.9"}, // exact does not cover subdomains
		{"x@a.corp.test", Sent, "smart.test"},         //
		{"x@z.b.corp.test", Sent, "127.0.0.1"},        //
		{"x@other.corp.test", Temporary, "192.0.2.9"}, //
		{"x@example.test", Sent, "mx.example.test"},   //
		{"x@corp.test", Permanent, ""},                //
		{"x@a.corp.test", Sent, "smart.test"},         //
	} {
		got := e.deliver(t, tc.rcpt)
		if got.Outcome != tc.outcome || got.Host != tc.host {
			t.Errorf("Deliver(%s) = %+v, want %v via %q", tc.rcpt, got, tc.outcome, tc.host)
		}
	}

	// Hot reload: the same domain now goes elsewhere.
	e.relay.SetRoutes([]Route{{Domain: "a.corp.test", Host: "192.0.2.10:" + port}})
	if got := e.deliver(t, "x@a.corp.test"); got.Outcome != Temporary || got.Host != "192.0.2.10" {
		t.Errorf("after SetRoutes: Deliver = %+v, want Temporary via 192.0.2.10", got)
	}
	// A catch-all smarthost.
	e.relay.SetRoutes([]Route{{Domain: "*", Host: "127.0.0.1:" + port}})
	if got := e.deliver(t, "x@anything.invalid"); got.Outcome != Sent || got.Host != "127.0.0.1" {
		t.Errorf("catch-all: Deliver = %+v, want sent via 127.0.0.1", got)
	}
}

func TestCheckRoutes(t *testing.T) {
	for _, tc := range []struct {
		r  Route
		ok bool
	}{
		{Route{"example.test", "smart.test:587"}, true},
		{Route{"*.example.test", "[::1]:25"}, true},
		{Route{"example.test", "smart.test"}, true},
		{Route{"*", "192.0.2.1:2525"}, true},
		{Route{"bücher.test", "smart.test:25"}, true},
		{Route{"example.test", "smart.test:0"}, false},
		{Route{"example.test", "smart.test:99999"}, false},
		{Route{"example.test", ""}, false},
		{Route{"", "smart.test:25"}, false},
		{Route{"a.*.test", "smart.test:25"}, false},
	} {
		err := CheckRoutes([]Route{tc.r})
		if (err == nil) != tc.ok {
			t.Errorf("CheckRoutes(%+v) = %v, want ok=%v", tc.r, err, tc.ok)
		}
	}
}

func TestConnectionReuse(t *testing.T) {
	e := setup(t, nil, nil)
	const n = 5
	for i := range n {
		if got := e.deliver(t, fmt.Sprintf("u%d@example.test", i)); got.Outcome != Sent {
			t.Fatalf("delivery %d: %v", i, got)
		}
	}
	if c := e.sink.connections(); c != 1 {
		t.Errorf("sink saw %d connections for %d sequential deliveries, want 1", c, n)
	}
	st := e.relay.Stats()
	if st.ConnectionsOpened != 1 || st.ConnectionsReused != n-1 {
		t.Errorf("Stats = %+v, want 1 opened, %d reused", st, n-1)
	}
	if st.Open[e.sink.addr] != 1 || st.Idle != 1 {
		t.Errorf("Stats.Open = %v, Idle = %d; want 1 open idle connection to %s", st.Open, st.Idle, e.sink.addr)
	}
	msgs := e.sink.messages()
	for i, m := range msgs {
		if want := fmt.Sprintf("u%d@example.test", i); len(m.To) != 1 || m.To[0] != want {
			t.Errorf("message %d to %v, want [%s] (one recipient per transaction)", i, m.To, want)
		}
	}
}

func TestIdleConnectionExpires(t *testing.T) {
	e := setup(t, nil, func(o *Options) { o.IdleTimeout = time.Minute })
	if got := e.deliver(t, "a@example.test"); got.Outcome != Sent {
		t.Fatal(got)
	}
	e.clock.Advance(2 * time.Minute)
	if got := e.deliver(t, "b@example.test"); got.Outcome != Sent {
		t.Fatal(got)
	}
	if c := e.sink.connections(); c != 2 {
		t.Errorf("sink saw %d connections, want 2 (the idle one expired)", c)
	}
}

func TestReusedConnectionDroppedByServer(t *testing.T) {
	e := setup(t, nil, nil)
	if got := e.deliver(t, "a@example.test"); got.Outcome != Sent {
		t.Fatal(got)
	}
	e.sink.dropAll()
	if got := e.deliver(t, "b@example.test"); got.Outcome != Sent {
		t.Fatalf("after the server dropped the pooled connection: %v, want sent on a fresh one", got)
	}
	if c := e.sink.connections(); c != 2 {
		t.Errorf("sink saw %d connections, want 2", c)
	}
}

func TestPerDestinationCap(t *testing.T) {
	const limit, n = 2, 20
	e := setup(t, nil, func(o *Options) { o.PerDestination = limit })
	var wg sync.WaitGroup
	results := make([]Result, n)
	for i := range n {
		wg.Go(func() { results[i] = e.deliver(t, fmt.Sprintf("u%d@example.test", i)) })
	}
	wg.Wait()
	for i, r := range results {
		if r.Outcome != Sent {
			t.Errorf("delivery %d: %v", i, r)
		}
	}
	if c := e.sink.connections(); c > limit {
		t.Errorf("sink saw %d connections, want at most %d", c, limit)
	}
	if p := e.sink.peakActive(); p > limit {
		t.Errorf("sink saw %d simultaneous transactions, want at most %d", p, limit)
	}
	if got := len(e.sink.messages()); got != n {
		t.Errorf("sink got %d messages, want %d", got, n)
	}
	if o := e.relay.Stats().Open[e.sink.addr]; o > limit {
		t.Errorf("Stats.Open = %d, want at most %d", o, limit)
	}
}

func TestConcurrencyWaitHonoursContext(t *testing.T) {
	e := setup(t, func(s *sink) { s.tarpit = make(chan struct{}) }, func(o *Options) {
		o.Concurrency = 1
		o.CommandTimeout = 5 * time.Second
	})
	ctx, cancel := context.WithCancel(t.Context())
	first := make(chan Result, 1)
	go func() { first <- e.relay.Deliver(ctx, "f@relay.test", "a@example.test", Bytes(testBody)) }()
	// Wait (bounded) until the first delivery holds the only slot.
	for i := 0; i < 2000 && e.relay.Stats().InProgress == 0; i++ {
		time.Sleep(time.Millisecond)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if got := e.relay.Deliver(ctx2, "f@relay.test", "b@example.test", Bytes(testBody)); got.Outcome != Temporary {
		t.Errorf("second delivery with a cancelled context = %v, want Temporary", got)
	}
	cancel()
	if got := <-first; got.Outcome != Temporary {
		t.Errorf("cancelled tarpitted delivery = %v, want Temporary", got)
	}
}

func TestTarpitCommandTimeout(t *testing.T) {
	e := setup(t, func(s *sink) { s.tarpit = make(chan struct{}) }, func(o *Options) { o.CommandTimeout = 200 * time.Millisecond })
	got := e.deliver(t, "a@example.test")
	if got.Outcome != Temporary || got.Stage != StageMail || got.Code != 0 {
		t.Errorf("Deliver = %+v, want Temporary at MAIL without a reply", got)
	}
	if !strings.Contains(got.Text, "timeout") {
		t.Errorf("Text = %q, want a timeout description", got.Text)
	}
	if o := e.relay.Stats().Open[e.sink.addr]; o != 0 {
		t.Errorf("timed-out connection still counted open (%d)", o)
	}
}

func TestGreetingTimeout(t *testing.T) {
	e := setup(t, func(s *sink) { s.silent = true }, func(o *Options) { o.ConnectTimeout = 200 * time.Millisecond })
	got := e.deliver(t, "a@example.test")
	if got.Outcome != Temporary || got.Stage != StageGreeting || !strings.Contains(got.Text, "timeout") {
		t.Errorf("Deliver = %+v, want Temporary greeting timeout", got)
	}
}

func TestDataTimeout(t *testing.T) {
	release := make(chan struct{})
	e := setup(t, func(s *sink) {
		s.data = func([]byte) error { <-release; return nil }
	}, func(o *Options) { o.DataTimeout = 200 * time.Millisecond })
	t.Cleanup(func() { close(release) })
	got := e.deliver(t, "a@example.test")
	if got.Outcome != Temporary || got.Stage != StageEndOfData || got.Phase != vocab.PhaseEndOfData || got.Code != 0 || !strings.Contains(got.Text, "timeout") {
		t.Errorf("Deliver = %+v, want Temporary data timeout", got)
	}
}

func TestSTARTTLS(t *testing.T) {
	e := setup(t, withTLS(t), nil)
	got := e.deliver(t, "a@example.test")
	if got.Outcome != Sent || !got.TLS {
		t.Fatalf("Deliver = %+v, want sent over TLS", got)
	}
	// The sink's config allows TLS 1.3, which Go negotiates by default; its
	// suites are the three TLS_AES/CHACHA20 ones.
	if got.TLSVersion != "TLS 1.3" || !strings.HasPrefix(got.TLSCipher, "TLS_") || strings.HasPrefix(got.TLSCipher, "0x") {
		t.Errorf("TLS details = %q %q, want TLS 1.3 and a named suite", got.TLSVersion, got.TLSCipher)
	}
	msgs := e.sink.messages()
	if len(msgs) != 1 || !msgs[0].TLS || !bytes.Equal(msgs[0].Data, Bytes(testBody)) {
		t.Errorf("sink got %+v, want the message over TLS", msgs)
	}
	// The pooled TLS connection is reused.
	if got := e.deliver(t, "b@example.test"); got.Outcome != Sent || !got.TLS || got.TLSVersion != "TLS 1.3" {
		t.Fatalf("second Deliver = %+v, want sent over TLS", got)
	}
	if c := e.sink.connections(); c != 1 {
		t.Errorf("sink saw %d connections, want 1", c)
	}
}

func TestSTARTTLSHandshakeFailureFallsBack(t *testing.T) {
	e := setup(t, withBrokenTLS, nil)
	got := e.deliver(t, "a@example.test")
	if got.Outcome != Sent || got.TLS || got.TLSVersion != "" || got.TLSCipher != "" {
		t.Fatalf("Deliver = %+v, want sent in plain text", got)
	}
	if c := e.sink.connections(); c != 2 {
		t.Errorf("sink saw %d connections, want 2 (TLS attempt, then plain)", c)
	}
	if msgs := e.sink.messages(); len(msgs) != 1 || msgs[0].TLS {
		t.Errorf("sink got %+v, want one plain-text message", msgs)
	}
}

func TestInternationalRecipient(t *testing.T) {
	e := setup(t, nil, nil)
	e.dns.Add(
		"xn--bcher-kva.test. 300 IN MX 10 mx.example.test.",
	)
	got := e.deliver(t, "taro@Bücher.test")
	if got.Outcome != Sent {
		t.Fatalf("Deliver = %+v", got)
	}
	if m := e.sink.messages(); len(m) != 1 || m[0].To[0] != "taro@xn--bcher-kva.test" || m[0].UTF8 {
		t.Errorf("sink got %+v, want RCPT TO the A-label domain without SMTPUTF8", m)
	}
	// A non-ASCII local part needs SMTPUTF8, which the sink does not offer.
	got = e.deliver(t, "太郎@example.test")
	if got.Outcome != Permanent || got.EnhancedCode != "5.6.7" {
		t.Errorf("Deliver(UTF-8 local part) = %+v, want Permanent 5.6.7", got)
	}
}

func TestSMTPUTF8WhenOffered(t *testing.T) {
	e := setup(t, nil, nil)
	e.sink.srv.EnableSMTPUTF8 = true
	got := e.deliver(t, "太郎@example.test")
	if got.Outcome != Sent {
		t.Fatalf("Deliver = %+v", got)
	}
	if m := e.sink.messages(); len(m) != 1 || !m[0].UTF8 || m[0].To[0] != "太郎@example.test" {
		t.Errorf("sink got %+v, want SMTPUTF8 transaction", m)
	}
}

func TestInvalidAddresses(t *testing.T) {
	e := setup(t, nil, nil)
	for _, rcpt := range []string{"", "nobody", "a@", "@example.test", "a@[192.0.2.1]", "a\r\nRSET@example.test"} {
		if got := e.deliver(t, rcpt); got.Outcome != Permanent {
			t.Errorf("Deliver(%q) = %v, want Permanent", rcpt, got)
		}
	}
	if len(e.dialer.log()) != 0 {
		t.Errorf("dialled %v, want nothing", e.dialer.log())
	}
}

func TestClose(t *testing.T) {
	e := setup(t, nil, nil)
	if got := e.deliver(t, "a@example.test"); got.Outcome != Sent {
		t.Fatal(got)
	}
	if err := e.relay.Close(); err != nil {
		t.Fatal(err)
	}
	if st := e.relay.Stats(); st.Idle != 0 || len(st.Open) != 0 {
		t.Errorf("after Close: Stats = %+v, want no open connection", st)
	}
	if got := e.deliver(t, "b@example.test"); got.Outcome != Temporary {
		t.Errorf("Deliver after Close = %v, want Temporary", got)
	}
}

func TestPerDestinationWaitHonoursContext(t *testing.T) {
	e := setup(t, func(s *sink) { s.tarpit = make(chan struct{}) }, func(o *Options) {
		o.PerDestination = 1
		o.CommandTimeout = 5 * time.Second
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	first := make(chan Result, 1)
	go func() { first <- e.relay.Deliver(ctx, "f@relay.test", "a@example.test", Bytes(testBody)) }()
	for i := 0; i < 2000 && e.sink.connections() == 0; i++ {
		time.Sleep(time.Millisecond)
	}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel2()
	got := e.relay.Deliver(ctx2, "f@relay.test", "b@example.test", Bytes(testBody))
	if got.Outcome != Temporary || got.Stage != StageConnect || !strings.Contains(got.Text, "waiting for a connection") {
		t.Errorf("second delivery = %+v, want Temporary while waiting for the only connection", got)
	}
	if c := e.sink.connections(); c != 1 {
		t.Errorf("sink saw %d connections, want 1", c)
	}
	cancel()
	<-first
}

func TestIdleConnectionsReaped(t *testing.T) {
	e := setup(t, nil, func(o *Options) {
		o.IdleTimeout = 50 * time.Millisecond
		o.Now = nil // the reaper runs on real time
	})
	if got := e.deliver(t, "a@example.test"); got.Outcome != Sent {
		t.Fatal(got)
	}
	for i := 0; i < 5000 && e.relay.Stats().Idle != 0; i++ {
		time.Sleep(time.Millisecond)
	}
	if st := e.relay.Stats(); st.Idle != 0 || len(st.Open) != 0 {
		t.Errorf("Stats = %+v, want the idle connection closed by the reaper", st)
	}
}

func TestResultString(t *testing.T) {
	for _, tc := range []struct {
		r    Result
		want string
	}{
		{Result{Outcome: Permanent, Host: "mx.example.test", Addr: "192.0.2.1:25", Stage: StageRcpt, Code: 550, EnhancedCode: "5.1.1", Text: "no such user"},
			"permanent mx.example.test[192.0.2.1:25] rcpt 550 5.1.1 no such user"},
		{Result{Outcome: Temporary, Stage: StageDNS, DNS: KindServFail, Text: "dns: lookup x.test: servfail"},
			"temporary dns dns: lookup x.test: servfail"},
		{Result{}, "Outcome(0)"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
