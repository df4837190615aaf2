package relay

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/miekg/dns"

	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/vocab"
)

// hostileEnv is setup plus hostile.test, whose one MX (127.0.0.2) is h.
func hostileEnv(t *testing.T, h *testnet.HostileMX, mod func(*Options)) *testEnv {
	t.Helper()
	testnet.NewHostileMX(t, h)
	e := setup(t, nil, mod)
	e.dns.Add("hostile.test. 300 IN MX 10 mx.hostile.test.", "mx.hostile.test. 300 IN A 127.0.0.2")
	e.dialer.redirect("127.0.0.2", h.Addr())
	return e
}

// heapSampler records the peak of HeapInuse above the level at start.
type heapSampler struct {
	base uint64
	stop chan struct{}
	done chan struct{}
	peak uint64
}

func sampleHeap() *heapSampler {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &heapSampler{base: ms.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > s.base && ms.HeapInuse-s.base > s.peak {
				s.peak = ms.HeapInuse - s.base
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// end stops sampling and returns the peak growth in bytes.
func (s *heapSampler) end() uint64 {
	close(s.stop)
	<-s.done
	return s.peak
}

// TestEndlessRepliesBounded: an MX that answers a step with endless
// continuation lines, or with one endless line, gets a Temporary result
// without a reply code at that step, quickly (long before the 20s command
// timeout) and without the reply piling up in memory.
func TestEndlessRepliesBounded(t *testing.T) {
	const within = 3 * time.Second
	const maxGrowth = 32 << 20
	phases := []struct {
		at    string
		phase vocab.Phase
	}{
		{"greet", vocab.PhaseConnect}, {"ehlo", vocab.PhaseEHLO}, {"mail", vocab.PhaseMail},
		{"rcpt", vocab.PhaseRcpt}, {"data", vocab.PhaseData}, {"end", vocab.PhaseEndOfData},
	}
	hs := sampleHeap()
	for _, p := range phases {
		for _, act := range []testnet.HostileAct{testnet.FloodLines, testnet.FloodLine} {
			name := fmt.Sprintf("%s/%s", p.at, map[testnet.HostileAct]string{testnet.FloodLines: "lines", testnet.FloodLine: "line"}[act])
			t.Run(name, func(t *testing.T) {
				h := &testnet.HostileMX{At: p.at, Act: act}
				e := hostileEnv(t, h, func(o *Options) {
					o.ConnectTimeout, o.CommandTimeout, o.DataTimeout = 20*time.Second, 20*time.Second, 20*time.Second
				})
				start := time.Now()
				got := e.deliver(t, "a@hostile.test")
				took := time.Since(start)
				if got.Outcome != Temporary || got.Code != 0 || got.Phase != p.phase || !strings.Contains(got.Text, "reply") {
					t.Errorf("Deliver = %+v (phase %q), want Temporary at %s without a code, describing the reply", got, got.Phase, p.phase)
				}
				if took > within {
					t.Errorf("took %s, want under %s", took, within)
				}
				if o := e.relay.Stats().Open[e.dialer.log()[0]]; o != 0 {
					t.Errorf("the connection to the flooding server is still open (%d)", o)
				}
				t.Logf("%s: %s in %s, server wrote %d KiB", name, got.Text, took.Round(time.Millisecond), h.Sent()>>10)
			})
		}
	}
	if g := hs.end(); g > maxGrowth {
		t.Errorf("heap grew by %d MiB during the floods, want under %d MiB", g>>20, maxGrowth>>20)
	} else {
		t.Logf("heap peak growth %.1f MiB over 12 floods", float64(g)/(1<<20))
	}
}

// TestReplyLimits checks the limits one by one with replies just inside and
// just outside them, written raw by a go-smtp-free server.
func TestReplyLimits(t *testing.T) {
	line := func(n int) string { // a "250-" line of n bytes, CRLF included
		return "250-" + strings.Repeat("z", n-6) + "\r\n"
	}
	for _, tc := range []struct {
		name  string
		reply string // the EHLO reply
		ok    bool
	}{
		{"line at limit", line(MaxReplyLineBytes) + "250 8BITMIME\r\n", true},
		{"line over limit", line(MaxReplyLineBytes+1) + "250 8BITMIME\r\n", false},
		{"lines at limit", strings.Repeat("250-X\r\n", MaxReplyLines-1) + "250 8BITMIME\r\n", true},
		{"lines over limit", strings.Repeat("250-X\r\n", MaxReplyLines) + "250 8BITMIME\r\n", false},
		{"bytes over limit", strings.Repeat(line(MaxReplyBytes/(MaxReplyLines-2)), MaxReplyLines-2) + "250 8BITMIME\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := hostileEnv(t, &testnet.HostileMX{EHLOReply: tc.reply}, nil)
			got := e.deliver(t, "a@hostile.test")
			if tc.ok && got.Outcome != Sent {
				t.Errorf("Deliver = %+v, want sent", got)
			}
			if !tc.ok && (got.Outcome != Temporary || got.Phase != vocab.PhaseEHLO || !IsReplyLimitText(got.Text)) {
				t.Errorf("Deliver = %+v, want Temporary at EHLO for the reply limit", got)
			}
		})
	}
}

// IsReplyLimitText reports whether a Result text describes a reply limit.
func IsReplyLimitText(s string) bool { return strings.Contains(s, "remote server misbehaved: reply") }

// TestMailLoop: a host that greets, or answers EHLO, with one of our own
// names is a loop: Permanent 5.4.6, Loop set, no other host tried.
func TestMailLoop(t *testing.T) {
	for _, tc := range []struct {
		name     string
		greet    string
		ehlo     string
		own      []string
		loop     bool
		phase    vocab.Phase
		inResult string
	}{
		{"greeting names me", "220 relay.test ESMTP hermod", "", nil, true, vocab.PhaseConnect, `greeted with "220 relay.test ESMTP hermod"`},
		{"EHLO names me (case, dot)", "", "RELAY.TEST.", nil, true, vocab.PhaseEHLO, `answered EHLO with "250-RELAY.TEST. hello"`},
		{"greeting names an own name", "220-bounce.relay.test ESMTP\r\n220 ready", "", []string{"Bounce.Relay.Test"}, true, vocab.PhaseConnect, "loops back to myself"},
		{"similar names are not me", "220 mx.relay.test ESMTP relay.test", "relay.test.example", nil, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &testnet.HostileMX{Greet: tc.greet, EHLOName: tc.ehlo}
			e := hostileEnv(t, h, func(o *Options) { o.OwnNames = tc.own })
			// A second, healthy MX (the sink) that a loop must not fall back to.
			e.dns.Add("hostile.test. 300 IN MX 20 mx.example.test.")
			got := e.deliver(t, "a@hostile.test")
			if !tc.loop {
				if got.Outcome != Sent || got.Loop || got.Host != "mx.hostile.test" {
					t.Errorf("Deliver = %+v, want sent through mx.hostile.test, no loop", got)
				}
				return
			}
			if got.Outcome != Permanent || !got.Loop || got.EnhancedCode != "5.4.6" || got.Code != 0 || got.Phase != tc.phase ||
				!strings.Contains(got.Text, "mail for hostile.test loops back to myself") || !strings.Contains(got.Text, tc.inResult) {
				t.Errorf("Deliver = %+v (phase %q, loop %v), want a Permanent 5.4.6 loop at %s mentioning %q", got, got.Phase, got.Loop, tc.phase, tc.inResult)
			}
			if n := len(e.sink.messages()) + e.sink.connections(); n != 0 {
				t.Errorf("the next MX was tried after a loop (%d connections/messages)", n)
			}
		})
	}
}

// manyMX adds n MX hosts for domain, mx1..mxn, at 127.0.1.1..n, all
// redirected to to (or, to == "", left to the dead port via 192.0.2.i).
func manyMX(e *testEnv, domain string, n int, to string) {
	for i := 1; i <= n; i++ {
		ip := fmt.Sprintf("127.0.1.%d", i)
		if to == "" {
			ip = fmt.Sprintf("192.0.2.%d", i)
		} else {
			e.dialer.redirect(ip, to)
		}
		e.dns.Add(fmt.Sprintf("%s. 300 IN MX %d mx%d.%s.", domain, i*10, i, domain), fmt.Sprintf("mx%d.%s. 300 IN A %s", i, domain, ip))
	}
}

// TestMXLimits: 12 MX hosts that accept and never greet cost
// MXSessionLimit × ConnectTimeout; 12 that refuse cost MXAddressLimit dials.
func TestMXLimits(t *testing.T) {
	const ct = 300 * time.Millisecond
	for _, tc := range []struct {
		name         string
		silent       bool
		addrs, sess  int // options (0 = default)
		wantDials    int
		wantStage    string
		wantMaxTaken time.Duration
	}{
		{"never greet, defaults", true, 0, 0, DefaultMXSessionLimit, StageGreeting, DefaultMXSessionLimit*ct + time.Second},
		{"never greet, session limit 4", true, 0, 4, 4, StageGreeting, 4*ct + time.Second},
		{"refuse, defaults", false, 0, 0, DefaultMXAddressLimit, StageConnect, time.Second},
		{"refuse, address limit 3", false, 3, 0, 3, StageConnect, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			silent := ""
			if tc.silent {
				silent = testnet.NewHostileMX(t, &testnet.HostileMX{At: "greet", Act: testnet.Silent}).Addr()
			}
			e := setup(t, nil, func(o *Options) {
				o.ConnectTimeout, o.MXAddressLimit, o.MXSessionLimit = ct, tc.addrs, tc.sess
			})
			manyMX(e, "many.test", 12, silent)
			start := time.Now()
			got := e.deliver(t, "a@many.test")
			took := time.Since(start)
			if got.Outcome != Temporary || got.Stage != tc.wantStage || got.Phase != vocab.PhaseConnect {
				t.Errorf("Deliver = %+v, want Temporary at %s", got, tc.wantStage)
			}
			if d := len(e.dialer.log()); d != tc.wantDials {
				t.Errorf("dialled %d of the 12 MX addresses, want %d", d, tc.wantDials)
			}
			if took > tc.wantMaxTaken {
				t.Errorf("took %s, want at most %s", took, tc.wantMaxTaken)
			}
			t.Logf("%s: %d dials, %s: %s", tc.name, len(e.dialer.log()), took.Round(time.Millisecond), got)
		})
	}
}

// TestAttemptTimeout: the whole attempt ends at AttemptTimeout, whatever
// the per-step timeouts allow: a trickling RCPT reply with a 30s command
// timeout, and 12 silent MX hosts with a session limit of 12.
func TestAttemptTimeout(t *testing.T) {
	const limit = 600 * time.Millisecond
	t.Run("trickle at rcpt", func(t *testing.T) {
		h := &testnet.HostileMX{At: "rcpt", Act: testnet.Trickle, Every: 50 * time.Millisecond}
		e := hostileEnv(t, h, func(o *Options) { o.CommandTimeout, o.AttemptTimeout = 30*time.Second, limit })
		start := time.Now()
		got := e.deliver(t, "a@hostile.test")
		took := time.Since(start)
		if got.Outcome != Temporary || got.Phase != vocab.PhaseRcpt || !strings.Contains(got.Text, "time limit") {
			t.Errorf("Deliver = %+v, want Temporary at rcpt for the attempt time limit", got)
		}
		if took > limit+time.Second {
			t.Errorf("took %s, want about %s", took, limit)
		}
	})
	t.Run("12 silent MX", func(t *testing.T) {
		silent := testnet.NewHostileMX(t, &testnet.HostileMX{At: "greet", Act: testnet.Silent}).Addr()
		e := setup(t, nil, func(o *Options) {
			o.ConnectTimeout, o.MXSessionLimit, o.MXAddressLimit, o.AttemptTimeout = time.Second, 12, 12, limit
		})
		manyMX(e, "many.test", 12, silent)
		start := time.Now()
		got := e.deliver(t, "a@many.test")
		took := time.Since(start)
		if got.Outcome != Temporary || !strings.Contains(got.Text, "time limit") {
			t.Errorf("Deliver = %+v, want Temporary for the attempt time limit", got)
		}
		if took > limit+time.Second {
			t.Errorf("took %s, want about %s", took, limit)
		}
	})
	t.Run("default derived from the timeouts", func(t *testing.T) {
		r, err := New(Options{Hostname: "relay.test", Resolvers: []string{"127.0.0.1:1"}, ConnectTimeout: time.Second, DataTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if want := DefaultMXSessionLimit*time.Second + time.Minute; r.opts.AttemptTimeout != want {
			t.Errorf("AttemptTimeout = %s, want %s", r.opts.AttemptTimeout, want)
		}
	})
}

// TestHostileBeyondTheList covers the other ways an MX can hold a delivery:
// each must end within its own timeout.
func TestHostileBeyondTheList(t *testing.T) {
	const to = 400 * time.Millisecond
	for _, tc := range []struct {
		name   string
		h      *testnet.HostileMX
		big    bool // send a 24 MiB message
		want   Outcome
		phase  vocab.Phase
		within time.Duration
		conns  int
	}{
		// One byte every 50ms: a deadline reset on each read would never fire.
		{"trickled greeting", &testnet.HostileMX{At: "greet", Act: testnet.Trickle, Every: 50 * time.Millisecond}, false, Temporary, vocab.PhaseConnect, to + time.Second, 1},
		{"trickled EHLO reply", &testnet.HostileMX{At: "ehlo", Act: testnet.Trickle, Every: 50 * time.Millisecond}, false, Temporary, vocab.PhaseEHLO, to + time.Second, 1},
		{"trickled MAIL reply", &testnet.HostileMX{At: "mail", Act: testnet.Trickle, Every: 50 * time.Millisecond}, false, Temporary, vocab.PhaseMail, to + time.Second, 1},
		{"trickled final reply", &testnet.HostileMX{At: "end", Act: testnet.Trickle, Every: 50 * time.Millisecond}, false, Temporary, vocab.PhaseEndOfData, to + time.Second, 1},
		// Never greets: the connect budget.
		{"greeting never comes", &testnet.HostileMX{At: "greet", Act: testnet.Silent}, false, Temporary, vocab.PhaseConnect, to + time.Second, 1},
		// A handshake that never ends: given up after the command timeout,
		// then the message goes in plain text on a new connection.
		{"TLS handshake never ends", &testnet.HostileMX{At: "starttls", Act: testnet.TLSHang}, false, Sent, vocab.PhaseEndOfData, to + time.Second, 2},
		// An endless reply to STARTTLS: that connection is given up, the
		// message goes in plain text on a new one.
		{"STARTTLS reply flood", &testnet.HostileMX{At: "starttls", Act: testnet.FloodLines}, false, Sent, vocab.PhaseEndOfData, to + time.Second, 2},
		// RCPT accepted, then DATA never answered.
		{"DATA never answered", &testnet.HostileMX{At: "data", Act: testnet.Silent}, false, Temporary, vocab.PhaseData, to + time.Second, 1},
		// The server stops reading mid-message (the TCP window closes).
		{"stops reading the message", &testnet.HostileMX{At: "end", Act: testnet.StopReading}, true, Temporary, vocab.PhaseEndOfData, to + 2*time.Second, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			e := hostileEnv(t, h, func(o *Options) {
				o.ConnectTimeout, o.CommandTimeout, o.DataTimeout = to, to, to
				o.AttemptTimeout = time.Minute
			})
			body := []byte(testBody)
			if tc.big {
				body = append([]byte(testBody), bytes.Repeat([]byte(strings.Repeat("b", 78)+"\r\n"), 24<<20/80)...)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			start := time.Now()
			got := e.relay.Deliver(ctx, "f@relay.test", "a@hostile.test", Bytes(body))
			took := time.Since(start)
			if got.Outcome != tc.want || got.Phase != tc.phase {
				t.Errorf("Deliver = %+v (phase %q), want %s at %s", got, got.Phase, tc.want, tc.phase)
			}
			if got.Outcome == Temporary && (got.Code != 0 || !strings.Contains(got.Text, "timeout")) {
				t.Errorf("Text = %q, want a timeout without a reply code", got.Text)
			}
			if took > tc.within {
				t.Errorf("took %s, want at most %s", took, tc.within)
			}
			if c := h.Connections(); c != tc.conns {
				t.Errorf("%d connections, want %d", c, tc.conns)
			}
		})
	}
}

// TestPhaseOfEveryResult: every kind of result carries the phase its reply
// (or failure) answered.
func TestPhaseOfEveryResult(t *testing.T) {
	for _, tc := range []struct {
		name  string
		h     *testnet.HostileMX // nil: no server (DNS or connection failures)
		rcpt  string
		mod   func(*Options)
		want  Outcome
		code  int
		phase vocab.Phase
		stage string
	}{
		{"nxdomain", nil, "a@nowhere.test", nil, Permanent, 0, vocab.PhaseConnect, StageDNS},
		{"connection refused", nil, "a@refused.test", nil, Temporary, 0, vocab.PhaseConnect, StageConnect},
		{"greeting 554", &testnet.HostileMX{Greet: "554 5.7.1 go away"}, "a@hostile.test", nil, Permanent, 554, vocab.PhaseConnect, StageGreeting},
		{"EHLO 421", &testnet.HostileMX{EHLOReply: "421 4.7.0 too busy\r\n"}, "a@hostile.test", nil, Temporary, 421, vocab.PhaseEHLO, StageEHLO},
		{"TLS handshake cut by the attempt deadline", &testnet.HostileMX{At: "starttls", Act: testnet.TLSHang}, "a@hostile.test",
			func(o *Options) { o.AttemptTimeout = 300 * time.Millisecond }, Temporary, 0, vocab.PhaseTLS, StageSTARTTLS},
		{"MAIL 553", &testnet.HostileMX{Replies: map[string]string{"mail": "553 5.1.8 bad sender"}}, "a@hostile.test", nil, Permanent, 553, vocab.PhaseMail, StageMail},
		{"RCPT 550", &testnet.HostileMX{Replies: map[string]string{"rcpt": "550 5.1.1 no such user"}}, "a@hostile.test", nil, Permanent, 550, vocab.PhaseRcpt, StageRcpt},
		{"DATA 451", &testnet.HostileMX{Replies: map[string]string{"data": "451 4.3.0 not now"}}, "a@hostile.test", nil, Temporary, 451, vocab.PhaseData, StageData},
		{"end of data 554", &testnet.HostileMX{Replies: map[string]string{"end": "554 5.7.1 spam"}}, "a@hostile.test", nil, Permanent, 554, vocab.PhaseEndOfData, StageEndOfData},
		{"sent", &testnet.HostileMX{}, "a@hostile.test", nil, Sent, 250, vocab.PhaseEndOfData, StageEndOfData},
		{"invalid address", nil, "no-at-sign", nil, Permanent, 0, vocab.PhaseRcpt, StageRcpt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *testEnv
			if tc.h != nil {
				e = hostileEnv(t, tc.h, tc.mod)
			} else {
				e = setup(t, nil, tc.mod)
				e.dns.Add("refused.test. 300 IN MX 10 mx.refused.test.", "mx.refused.test. 300 IN A 192.0.2.9")
			}
			got := e.deliver(t, tc.rcpt)
			if got.Outcome != tc.want || got.Code != tc.code || got.Phase != tc.phase || got.Stage != tc.stage {
				t.Errorf("Deliver = %+v (phase %q), want %s %d at phase %q stage %q", got, got.Phase, tc.want, tc.code, tc.phase, tc.stage)
			}
			if !got.Phase.Valid() || got.Phase == vocab.PhaseUnknown {
				t.Errorf("phase %q is not a known phase", got.Phase)
			}
		})
	}
}

// TestMXLookupFailuresLimited: 12 MX names whose address lookups time out
// cost MXAddressLimit lookups, not 12.
func TestMXLookupFailuresLimited(t *testing.T) {
	e := setup(t, nil, func(o *Options) { o.DNSTimeout = 100 * time.Millisecond })
	for i := 1; i <= 12; i++ {
		host := fmt.Sprintf("mx%d.blackhole.test.", i)
		e.dns.Add(fmt.Sprintf("blackhole.test. 300 IN MX %d %s", i*10, host), host+" 300 IN A 127.0.0.1")
		e.dns.Timeout(host, true)
	}
	start := time.Now()
	got := e.deliver(t, "a@blackhole.test")
	took := time.Since(start)
	if got.Outcome != Temporary || got.Stage != StageDNS || got.DNS != KindTimeout {
		t.Errorf("Deliver = %+v, want a Temporary DNS timeout", got)
	}
	looked := 0
	for i := 1; i <= 12; i++ {
		if e.dns.Queries(fmt.Sprintf("mx%d.blackhole.test.", i), dns.TypeA) > 0 {
			looked++
		}
	}
	if looked != DefaultMXAddressLimit {
		t.Errorf("looked up %d of the 12 MX names, want %d", looked, DefaultMXAddressLimit)
	}
	t.Logf("%d lookups in %s: %s", looked, took.Round(time.Millisecond), got)
}

// TestFloodAfterDelivery: a server that takes the message and then floods
// its reply to the RSET that readies the connection for reuse: the
// delivery stands, the connection is not pooled, the next delivery gets a
// fresh one.
func TestFloodAfterDelivery(t *testing.T) {
	h := &testnet.HostileMX{At: "rset", Act: testnet.FloodLine}
	e := hostileEnv(t, h, nil)
	for i := range 2 {
		if got := e.deliver(t, "a@hostile.test"); got.Outcome != Sent {
			t.Fatalf("delivery %d = %+v, want sent", i+1, got)
		}
		if st := e.relay.Stats(); st.Idle != 0 || len(st.Open) != 0 {
			t.Errorf("after delivery %d: Stats = %+v, want the flooding connection closed, not pooled", i+1, st)
		}
	}
	if c := h.Connections(); c != 2 {
		t.Errorf("%d connections, want 2 (none reused)", c)
	}
}

// TestLongReplyTextBounded: a long (but within the limits) refusal is kept
// up to MaxResultText bytes, cut on a character boundary.
func TestLongReplyTextBounded(t *testing.T) {
	var b strings.Builder
	for range 100 {
		b.WriteString("550-5.7.1 " + strings.Repeat("拒", 90) + "\r\n") // 280 bytes a line
	}
	b.WriteString("550 5.7.1 go away\r\n")
	e := hostileEnv(t, &testnet.HostileMX{EHLOReply: b.String()}, nil)
	got := e.deliver(t, "a@hostile.test")
	if got.Outcome != Permanent || got.Code != 550 || got.Phase != vocab.PhaseEHLO {
		t.Fatalf("Deliver = %+v, want the Permanent 550 at EHLO", got)
	}
	if len(got.Text) > MaxResultText || !strings.HasSuffix(got.Text, " [...]") || !utf8.ValidString(got.Text) || !strings.HasPrefix(got.Text, "拒拒") {
		t.Errorf("Text is %d bytes (valid UTF-8 %v), want the start of the reply cut at %d with a mark: %.80q…", len(got.Text), utf8.ValidString(got.Text), MaxResultText, got.Text)
	}
}
