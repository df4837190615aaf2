package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the remote MX every route points to: it counts what arrives and
// throws it away.
type sink interface {
	Addr() string
	// Delivered is the number of recipients (go sink) or transactions
	// (smtp-sink) received so far.
	Delivered() int64
	// Stats returns what the sink observed since the last Reset.
	Stats() sinkStats
	// Reset forgets everything received so far (between two runs).
	Reset()
	Close() error
}

// sinkStats is what a sink can tell about the mail it received.
type sinkStats struct {
	Recipients  int64 // recipients received (RCPT TO accepted and DATA completed)
	Messages    int64 // transactions completed
	Signed      int64 // transactions whose header has a DKIM-Signature (-1: unknown)
	Connections int64 // sessions opened
	// Arrivals maps a key taken from the envelope sender (the hermod queue id
	// of a VERP address, or the bench's own token) to the arrival time of
	// each recipient delivered with it. Nil when the sink cannot tell.
	Arrivals map[string][]time.Time
}

// goSink is an in-process go-smtp server.
type goSink struct {
	srv   *smtp.Server
	ln    net.Listener
	delay time.Duration

	rcpts, msgs, signed, conns atomic.Int64

	mu       sync.Mutex
	arrivals map[string][]time.Time
}

func startGoSink(addr string, delay time.Duration) (*goSink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sink: listen on %s: %w", addr, err)
	}
	s := &goSink{ln: ln, delay: delay, arrivals: map[string][]time.Time{}}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		s.conns.Add(1)
		return &sinkSession{s: s}, nil
	}))
	s.srv.Domain = "sink.bench.test"
	s.srv.MaxRecipients = 10000
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.ReadTimeout = 5 * time.Minute
	s.srv.WriteTimeout = time.Minute
	s.srv.ErrorLog = quietLog{}
	go s.srv.Serve(ln)
	return s, nil
}

func (s *goSink) Addr() string     { return s.ln.Addr().String() }
func (s *goSink) Delivered() int64 { return s.rcpts.Load() }
func (s *goSink) Close() error     { return s.srv.Close() }

func (s *goSink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcpts.Store(0)
	s.msgs.Store(0)
	s.signed.Store(0)
	s.conns.Store(0)
	s.arrivals = map[string][]time.Time{}
}

func (s *goSink) Stats() sinkStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	arr := make(map[string][]time.Time, len(s.arrivals))
	for k, v := range s.arrivals {
		arr[k] = v
	}
	return sinkStats{Recipients: s.rcpts.Load(), Messages: s.msgs.Load(), Signed: s.signed.Load(),
		Connections: s.conns.Load(), Arrivals: arr}
}

type sinkSession struct {
	s     *goSink
	from  string
	rcpts int
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from, ss.rcpts = from, 0
	return nil
}
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { ss.rcpts++; return nil }
func (ss *sinkSession) Reset()                               { ss.from, ss.rcpts = "", 0 }
func (ss *sinkSession) Logout() error                        { return nil }

func (ss *sinkSession) Data(r io.Reader) error {
	signed, err := readSigned(r)
	if err != nil {
		return err
	}
	if ss.s.delay > 0 {
		time.Sleep(ss.s.delay)
	}
	now := time.Now()
	s := ss.s
	if signed {
		s.signed.Add(1)
	}
	if key := arrivalKey(ss.from); key != "" {
		s.mu.Lock()
		for i := 0; i < ss.rcpts; i++ {
			s.arrivals[key] = append(s.arrivals[key], now)
		}
		s.mu.Unlock()
	}
	s.msgs.Add(1)
	s.rcpts.Add(int64(ss.rcpts))
	return nil
}

var dkimHeader = []byte("dkim-signature:")

// readSigned consumes the message and reports whether its header has a
// DKIM-Signature field.
func readSigned(r io.Reader) (bool, error) {
	br := bufio.NewReaderSize(r, 8192)
	signed := false
	for inHeader := true; ; {
		line, err := br.ReadSlice('\n')
		if inHeader && len(line) >= len(dkimHeader) && bytes.EqualFold(line[:len(dkimHeader)], dkimHeader) {
			signed = true
		}
		if inHeader && err == nil && (string(line) == "\r\n" || string(line) == "\n") {
			inHeader = false
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			return signed, nil
		}
		if err != nil {
			return signed, err
		}
	}
}

// arrivalKey names the submission a delivery belongs to: the hermod queue id
// of a VERP envelope sender (bounce-md_<id><rcpt><mac>@host, the id with its node on a cluster), or the
// local part of the bench's own envelope sender (kept by Postfix).
func arrivalKey(from string) string {
	local, _, _ := strings.Cut(from, "@")
	if id, ok := strings.CutPrefix(strings.ToLower(local), "bounce-md_"); ok {
		n := 16
		if i := strings.IndexByte(id, '-'); i > 0 && i <= 8 {
			n += i + 1 // a cluster node's id: <node>-<16 chars>
		}
		if len(id) >= n {
			return id[:n]
		}
	}
	if strings.HasPrefix(local, "bench-") {
		return local
	}
	return ""
}

type quietLog struct{}

func (quietLog) Printf(string, ...any) {}
func (quietLog) Println(...any)        {}

// smtpSink runs Postfix's smtp-sink, which counts transactions and sessions
// on standard output ("sess=N quit=N mesg=N") but cannot tell which message
// arrived when.
type smtpSink struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}

	msgs, sess   atomic.Int64
	baseM, baseS atomic.Int64
	waitErr      error
}

var reSinkCounters = regexp.MustCompile(`sess=(\d+) quit=\d+ mesg=(\d+)`)

func startSMTPSink(ctx context.Context, delay time.Duration) (*smtpSink, error) {
	path, err := exec.LookPath("smtp-sink")
	if err != nil {
		return nil, errors.New("sink: smtp-sink not found: install the Debian package postfix (apt-get install postfix)")
	}
	if delay%time.Second != 0 {
		return nil, fmt.Errorf("sink: smtp-sink delays in whole seconds only, not %v", delay)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"-c", "-4", "-m", "1000"}
	if delay > 0 {
		args = append(args, "-W", fmt.Sprintf(".:%d", int(delay/time.Second)))
	}
	if isRoot() {
		args = append(args, "-u", "nobody")
	}
	args = append(args, addr, "1000")
	cmd := exec.Command(path, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sink: start smtp-sink: %w", err)
	}
	s := &smtpSink{cmd: cmd, addr: addr, done: make(chan struct{})}
	go func() {
		// Counters end with \r, not \n.
		sc := bufio.NewScanner(out)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
				return i + 1, data[:i], nil
			}
			if atEOF && len(data) > 0 {
				return len(data), data, nil
			}
			return 0, nil, nil
		})
		for sc.Scan() {
			if m := reSinkCounters.FindStringSubmatch(sc.Text()); m != nil {
				sess, _ := strconv.ParseInt(m[1], 10, 64)
				msgs, _ := strconv.ParseInt(m[2], 10, 64)
				s.sess.Store(sess)
				s.msgs.Store(msgs)
			}
		}
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := waitListening(ctx, addr, 10*time.Second); err != nil {
		s.Close()
		return nil, fmt.Errorf("sink: smtp-sink: %w", err)
	}
	return s, nil
}

func (s *smtpSink) Addr() string     { return s.addr }
func (s *smtpSink) Delivered() int64 { return s.msgs.Load() - s.baseM.Load() }
func (s *smtpSink) Reset()           { s.baseM.Store(s.msgs.Load()); s.baseS.Store(s.sess.Load()) }

func (s *smtpSink) Stats() sinkStats {
	m := s.Delivered()
	// A session is counted when it ends: the ones still open are missing.
	return sinkStats{Recipients: m, Messages: m, Signed: -1, Connections: s.sess.Load() - s.baseS.Load()}
}

func (s *smtpSink) Close() error {
	stopProcess(s.cmd.Process, s.done, 5*time.Second)
	return nil
}
