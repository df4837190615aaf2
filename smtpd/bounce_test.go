package smtpd

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/mailbox"
	"github.com/hermod-mta/hermod/verp"
)

// intake is a BounceIntake over a fixed set of known messages; hold, when
// set, blocks Receive until it is closed.
type intake struct {
	mu       sync.Mutex
	got      [][]BounceRcpt
	inside   int
	peak     int
	hold     chan struct{}
	received chan struct{}
}

func (in *intake) Known(id string, index int) bool { return id == "0123456789abcdef" && index < 3 }

func (in *intake) Receive(ctx context.Context, remote netip.Addr, mailFrom string, rcpts []BounceRcpt, data []byte) error {
	in.mu.Lock()
	in.got = append(in.got, rcpts)
	in.inside++
	in.peak = max(in.peak, in.inside)
	in.mu.Unlock()
	if in.received != nil {
		in.received <- struct{}{}
	}
	if in.hold != nil {
		<-in.hold
	}
	in.mu.Lock()
	in.inside--
	in.mu.Unlock()
	return nil
}

type bounceEnv struct {
	addr  string
	codec *verp.Codec
	in    *intake
	dir   string
	log   *logBuf
}

func startBounce(t *testing.T, opts BounceOptions, mb *mailbox.Options) *bounceEnv {
	t.Helper()
	codec, err := verp.New([]byte("bounce test secret 0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	env := &bounceEnv{codec: codec, in: &intake{}, log: &logBuf{}}
	if opts.Intake == nil {
		opts.Intake = env.in
	} else {
		env.in = opts.Intake.(*intake)
	}
	opts.Hostname, opts.BounceDomain, opts.ReturnPathLabel = "hermod.test", "bounce.test", "hermod-bounce"
	opts.VERP = codec
	opts.Logger = slog.New(slog.NewTextHandler(env.log, nil))
	if mb != nil {
		env.dir = t.TempDir()
		mb.Dir = env.dir
		m, err := mailbox.New(*mb)
		if err != nil {
			t.Fatal(err)
		}
		opts.Mailbox = m
	}
	b := NewBounceServer(opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); b.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		b.Shutdown(ctx)
		l.Close()
		<-done
	})
	env.addr = l.Addr().String()
	return env
}

func (e *bounceEnv) verpAddr(idx int) string {
	return e.codec.LocalPart("0123456789abcdef", idx) + "@bounce.test"
}

func countFiles(dir string) (n int) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// TestBounceMailboxOneCopy: postmaster@ and abuse@ mail is stored once per
// transaction however many RCPTs name them, and not handed to the intake.
func TestBounceMailboxOneCopy(t *testing.T) {
	t.Parallel()
	e := startBounce(t, BounceOptions{}, &mailbox.Options{})
	cl := dialT(t, e.addr)
	cl.cmd("EHLO remote.test")
	cl.cmd("MAIL FROM:<someone@remote.test>")
	for range 20 {
		if r := cl.cmd("RCPT TO:<postmaster@bounce.test>"); !strings.HasPrefix(r, "250") {
			t.Fatalf("RCPT postmaster: %q", r)
		}
	}
	cl.cmd("RCPT TO:<abuse@bounce.test>")
	cl.cmd("DATA")
	if r := cl.cmd("Subject: hello postmaster\r\n\r\nhi\r\n."); !strings.HasPrefix(r, "250 2.0.0") {
		t.Fatalf("DATA: %q", r)
	}
	if n := countFiles(e.dir); n != 1 {
		t.Fatalf("%d files for one transaction with 21 RCPTs, want 1", n)
	}
	if len(e.in.got) != 0 {
		t.Fatalf("intake got %v", e.in.got)
	}
	// The same VERP twice is one recipient.
	cl.cmd("MAIL FROM:<>")
	cl.cmd("RCPT TO:<" + e.verpAddr(1) + ">")
	cl.cmd("RCPT TO:<" + strings.ToUpper(e.verpAddr(1)) + ">")
	cl.cmd("DATA")
	cl.cmd("Subject: bounce\r\n\r\nx\r\n.")
	if len(e.in.got) != 1 || len(e.in.got[0]) != 1 {
		t.Fatalf("intake got %v, want one recipient once", e.in.got)
	}
}

// TestBounceMailboxLimits: the mailbox's limits reach the client as the
// right replies, and nothing is left on disk for refused mail.
func TestBounceMailboxLimits(t *testing.T) {
	t.Parallel()
	e := startBounce(t, BounceOptions{MaxMessagesPerMinutePerIP: 1000}, &mailbox.Options{MaxMessageBytes: 3000, MaxTotalBytes: 8000, RateBytes: 1 << 30})
	cl := dialT(t, e.addr)
	cl.cmd("EHLO remote.test")
	send := func(n int) string {
		cl.cmd("MAIL FROM:<someone@remote.test>")
		cl.cmd("RCPT TO:<postmaster@bounce.test>")
		cl.cmd("DATA")
		return cl.cmd(message(n) + ".")
	}
	if r := send(5000); !strings.HasPrefix(r, "552 5.3.4") {
		t.Errorf("5000 bytes with a 3000-byte cap: %q", r)
	}
	var replies []string
	for range 5 {
		replies = append(replies, send(2500))
	}
	if !strings.HasPrefix(replies[0], "250") || !strings.HasPrefix(replies[4], "452 4.2.2") {
		t.Errorf("5 × 2500 bytes with a total of 8000: %q", replies)
	}
	if n := countFiles(e.dir); n != 3 {
		t.Errorf("%d files, want 3 (8000 / ~2600)", n)
	}
}

// TestBounceFreeSpaceReserve: the listener does not eat into the spool's
// reserve (on the real filesystem).
func TestBounceFreeSpaceReserve(t *testing.T) {
	t.Parallel()
	e := startBounce(t, BounceOptions{}, &mailbox.Options{MinFree: 1 << 62})
	cl := dialT(t, e.addr)
	cl.cmd("EHLO remote.test")
	cl.cmd("MAIL FROM:<someone@remote.test>")
	cl.cmd("RCPT TO:<abuse@bounce.test>")
	cl.cmd("DATA")
	if r := cl.cmd(message(2000) + "."); !strings.HasPrefix(r, "452 4.3.1") {
		t.Errorf("with the reserve reached: %q, want 452 4.3.1", r)
	}
	if n := countFiles(e.dir); n != 0 {
		t.Errorf("%d files written", n)
	}
}

// TestVERPGuessBudget: refused RCPTs are counted per session (then 421 and
// close) and per client address (then 421 at once on a new connection);
// the refusal log line comes at most once per client per minute.
func TestVERPGuessBudget(t *testing.T) {
	t.Parallel()
	now := time.Unix(2e9, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := startBounce(t, BounceOptions{MaxRcptFailures: 10, MaxRcptFailuresPerIP: 25, Now: clock}, nil)
	guesses, sessions := 0, 0
	closedAfter := []int{}
	for sessions < 5 {
		cl, g := dialFrom(t, e.addr, "")
		sessions++
		if !strings.HasPrefix(g, "220") {
			t.Fatalf("greeting %q", g)
		}
		if r := cl.cmd("EHLO guesser.test"); !strings.HasPrefix(r, "250") {
			if !strings.HasPrefix(r, "421 4.7.0") {
				t.Fatalf("EHLO: %q", r)
			}
			if closed, _ := cl.closedWithin(2 * time.Second); !closed {
				t.Fatal("blocked client's connection not closed")
			}
			break
		}
		cl.cmd("MAIL FROM:<>")
		n := 0
		for i := range 100 {
			tok := fmt.Sprintf("bounce-md_0123456789abcdef001%016d@bounce.test", i)
			r := cl.cmd("RCPT TO:<" + tok + ">")
			guesses++
			n++
			if strings.HasPrefix(r, "421 4.7.0") {
				break
			}
			if !strings.HasPrefix(r, "550") {
				t.Fatalf("guess %d: %q", i, r)
			}
		}
		if closed, _ := cl.closedWithin(2 * time.Second); !closed {
			t.Fatal("connection open after 421")
		}
		closedAfter = append(closedAfter, n)
	}
	if fmt.Sprint(closedAfter) != "[10 10 5]" || sessions != 4 {
		t.Errorf("sessions closed after %v guesses, %d sessions; want [10 10 5] then 421 at EHLO on the 4th", closedAfter, sessions)
	}
	lines := strings.Count(e.log.String(), "bounce: refused recipient")
	if lines != 1 {
		t.Errorf("%d log lines for %d refusals within a minute, want 1:\n%s", lines, guesses, e.log.String())
	}
	// A valid VERP address from another client is still accepted.
	cl, _ := dialFrom(t, e.addr, "127.0.0.2")
	cl.cmd("EHLO ok.test")
	cl.cmd("MAIL FROM:<>")
	if r := cl.cmd("RCPT TO:<" + e.verpAddr(2) + ">"); !strings.HasPrefix(r, "250") {
		t.Errorf("valid VERP from another client: %q", r)
	}
}

// TestBounceDataBounded: at most MaxConcurrentData DATA phases run at once.
func TestBounceDataBounded(t *testing.T) {
	t.Parallel()
	in := &intake{hold: make(chan struct{}), received: make(chan struct{}, 10)}
	e := startBounce(t, BounceOptions{MaxConcurrentData: 2, Intake: in}, nil)
	replies := make(chan string, 5)
	for i := range 5 {
		cl, _ := dialFrom(t, e.addr, fmt.Sprintf("127.0.0.%d", 10+i))
		cl.cmd("EHLO remote.test")
		cl.cmd("MAIL FROM:<>")
		cl.cmd("RCPT TO:<" + e.verpAddr(0) + ">")
		cl.cmd("DATA")
		go func() { replies <- cl.cmd("Subject: b\r\n\r\nx\r\n.") }()
	}
	<-in.received
	<-in.received
	select {
	case <-in.received:
		t.Fatal("a third DATA ran while two were held (MaxConcurrentData 2)")
	case <-time.After(300 * time.Millisecond):
	}
	close(in.hold)
	for range 5 {
		if r := <-replies; !strings.HasPrefix(r, "250") {
			t.Errorf("reply %q", r)
		}
	}
	if in.peak != 2 {
		t.Errorf("peak concurrency %d, want 2", in.peak)
	}
}
