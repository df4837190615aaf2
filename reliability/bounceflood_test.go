package reliability

import (
	"bufio"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// lockedBuf is a log sink safe for concurrent writers.
type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDaemonLog is startDaemon with the log written to the returned buffer.
func startDaemonLog(t *testing.T, cfg *config.Config) (*daemon.Daemon, *lockedBuf) {
	t.Helper()
	lb := &lockedBuf{}
	d, err := daemon.New(cfg, slog.New(slog.NewTextHandler(lb, nil)), daemonOpts())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(t.Context()) })
	return d, lb
}

func dirBytes(dir string) (n int, bytes int64) {
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			fi, _ := e.Info()
			n++
			bytes += fi.Size()
		}
		return nil
	})
	return n, bytes
}

// TestBounceListenerFlood (issue 11): mail to postmaster@ and abuse@ from
// anyone cannot fill the disk or the memory: one copy per transaction
// however many RCPTs, a total quota, bounded concurrent DATA with the
// bodies streamed to disk, and the filesystem's reserve kept.
func TestBounceListenerFlood(t *testing.T) {
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr()})
	cfg.Bounce.Mailbox.MaxBytes = 12 << 20
	cfg.Bounce.Mailbox.RateBytes = 1 << 30
	size := 1 << 20
	if soak() {
		size = 10 << 20
	}
	d := startDaemon(t, cfg, daemonOpts())
	addr := d.Addr("bounce.listen")
	mboxDir := filepath.Join(cfg.DataDir, "mailbox")

	// 50 RCPTs of postmaster@ in one transaction: one file.
	cl := mustDial(t, addr)
	cl.cmd("EHLO flood.test")
	cl.cmd("MAIL FROM:<x@flood.test>")
	for range 50 {
		cl.cmd("RCPT TO:<postmaster@m.makeleaps.test>")
	}
	cl.cmd("DATA")
	dup := cl.cmd("Subject: dup\r\n\r\n" + strings.Repeat("d", 900) + "\r\n.")
	files1, _ := dirBytes(mboxDir)
	if !strings.HasPrefix(dup, "250") || files1 != 1 {
		t.Fatalf("50 RCPTs, one transaction: %q, %d files; want 250 and 1 file", dup, files1)
	}

	// 50 concurrent messages of size bytes from 5 addresses.
	stop := heapPeak()
	body := strings.Repeat(strings.Repeat("z", 998)+"\r\n", size/1000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	replies := map[string]int{}
	start := time.Now()
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, g, err := dialFrom(addr, fmt.Sprintf("127.0.4.%d", 1+i%5))
			r := g
			if err == nil && strings.HasPrefix(g, "220") {
				defer cl.close()
				cl.cmd("EHLO flood.test")
				cl.cmd("MAIL FROM:<x@flood.test>")
				cl.cmd("RCPT TO:<abuse@m.makeleaps.test>")
				cl.cmd("DATA")
				w := bufio.NewWriterSize(cl.c, 64<<10)
				w.WriteString("Subject: flood\r\n\r\n")
				w.WriteString(body)
				w.Flush()
				r = cl.cmd(".")
			}
			mu.Lock()
			replies[r[:min(9, len(r))]]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	peak := stop()
	files, stored := dirBytes(mboxDir)
	var st syscall.Statfs_t
	syscall.Statfs(cfg.DataDir, &st)
	free := st.Bavail * uint64(st.Bsize)
	if stored > cfg.Bounce.Mailbox.MaxBytes {
		t.Errorf("%d bytes stored, over the quota %d", stored, cfg.Bounce.Mailbox.MaxBytes)
	}
	if peak > 200<<20 {
		t.Errorf("heap peak %d MB for 50 concurrent messages", peak>>20)
	}
	if free < 64<<20 {
		t.Errorf("free space %d below the reserve", free)
	}
	// The submission side still works.
	subAddr := d.Addr("submission.listen")
	submit(t, subAddr, "after-flood@dest.test")
	summary(t, "bounce listener: 50 RCPTs in one transaction → 1 file; %d MB flood (50 concurrent %d MiB messages from 5 addresses) in %.1f s: replies %v; %.1f MB stored in %d files (quota 12 MiB), heap peak %d MB, spool reserve intact (%d GB free), submissions unaffected",
		50*size>>20, size>>20, time.Since(start).Seconds(), replies, float64(stored)/(1<<20), files, peak>>20, free>>30)
}

// TestVERPGuessing (issue 11): guessing VERP addresses at line speed meets
// the per-session and per-address failure budgets (421 and close), the
// refusal log line is rate-limited, and a real bounce from elsewhere is
// still taken.
func TestVERPGuessing(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d, lb := startDaemonLog(t, testConfig(t, cfgOpts{sink: sink.Addr()}))
	addr := d.Addr("bounce.listen")
	id := submit(t, d.Addr("submission.listen"), "victim@dest.test")
	waitRcpt(t, d, id, 0, "sent", 30*time.Second)
	sent := 0
	refused550, conns, blocked := 0, 0, 0
	first421 := 0
	for sent < 5000 && conns < 500 {
		cl, g, err := dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		conns++
		r := cl.cmd("EHLO guesser.test")
		if !strings.HasPrefix(g, "220") || strings.HasPrefix(r, "421") {
			blocked++
			cl.close()
			sent += 100 // what this connection would have tried
			continue
		}
		cl.cmd("MAIL FROM:<>")
		var b strings.Builder
		for i := range 100 {
			fmt.Fprintf(&b, "RCPT TO:<bounce-md_%s%03d%016d@m.makeleaps.test>\r\n", id, 0, sent+i)
		}
		cl.write(b.String())
		sent += 100
		for _, line := range cl.rest(2 * time.Second) {
			switch {
			case strings.HasPrefix(line, "550"):
				refused550++
			case strings.HasPrefix(line, "421") && first421 == 0:
				first421 = refused550 + 1
			case strings.HasPrefix(line, "250"):
				t.Fatalf("a guess was accepted: %q", line)
			}
		}
		cl.close()
	}
	lines := strings.Count(lb.String(), "bounce: refused recipient")
	// A real bounce (the victim's own VERP address) from another address is still taken.
	m, _ := d.Store.Get(id)
	real := m.Recipients[0].EnvelopeFrom
	cl, _, err := dialFrom(addr, "127.0.5.1")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.close()
	cl.cmd("EHLO mx.dest.test")
	cl.cmd("MAIL FROM:<>")
	realRcpt := cl.cmd("RCPT TO:<" + real + ">")
	if !strings.HasPrefix(realRcpt, "250") {
		t.Errorf("real VERP address from another client: %q", realRcpt)
	}
	if refused550 > 30 || lines > 3 {
		t.Errorf("%d guesses evaluated (want ≤ 30 per address per hour), %d log lines", refused550, lines)
	}
	summary(t, "verp guessing: %d guesses on %d connections, %d evaluated (550), first 421 after %d, %d connections refused at once, 0 accepted, %d log lines; VERP MAC 80 bits (v1 40-bit tokens still verify); real bounce from elsewhere: %.3s",
		sent, conns, refused550, first421, blocked, lines, realRcpt)
}

// TestAPIConnectionFlood (issue 11): 5000 idle connections to the API do
// not exhaust file descriptors: at most max_connections_per_ip are held,
// the rest get 503 and are closed, and both SMTP listeners keep working.
func TestAPIConnectionFlood(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr()})
	d := startDaemon(t, cfg, daemonOpts())
	addr := d.Addr("api.listen")
	var held []net.Conn
	refused := 0
	for range 5000 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial API: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		buf := make([]byte, 12)
		n, _ := c.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "HTTP/1.1 503") {
			refused++
			c.Close()
			continue
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// A connection is only held if the server still has it: look for the
	// ones closed meanwhile.
	open := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); isTimeoutErr(err) {
			open++
		}
	}
	id := submit(t, d.Addr("submission.listen"), "api-flood@dest.test")
	bcl, g, err := dial(d.Addr("bounce.listen"))
	if err != nil || !strings.HasPrefix(g, "220") {
		t.Fatalf("bounce listener during the API flood: %q %v", g, err)
	}
	bcl.close()
	if open > cfg.API.MaxConnectionsPerIP {
		t.Errorf("%d idle API connections held, cap %d", open, cfg.API.MaxConnectionsPerIP)
	}
	summary(t, "api: 5000 idle connections, %d held (cap %d per address), %d refused 503, smtp listeners unaffected (queued %s, bounce greeting %.3s)",
		open, cfg.API.MaxConnectionsPerIP, refused, id, g)
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
