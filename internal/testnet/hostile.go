package testnet

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// HostileAct is what a HostileMX does at its step.
type HostileAct int

// The misbehaviours of a HostileMX.
const (
	// Behave answers every step normally (with Greet and EHLOName, for the
	// mail loop tests).
	Behave HostileAct = iota
	// FloodLines answers with "250-" (or "220-" for the greeting)
	// continuation lines, for as long as the client reads.
	FloodLines
	// FloodLine answers with one line that never ends.
	FloodLine
	// Trickle answers with a continuation reply that never ends, one byte
	// every Every: a read deadline reset on each byte never fires.
	Trickle
	// Silent never answers (and keeps the connection open).
	Silent
	// TLSHang (At "starttls") advertises STARTTLS, answers 220 and then
	// never answers the ClientHello. Connections without STARTTLS behave.
	TLSHang
	// StopReading (At "end") stops reading in the middle of the message.
	StopReading
)

// HostileMX is a raw SMTP server on 127.0.0.1 that behaves until the step
// At ("greet", "ehlo", "starttls", "mail", "rcpt", "data" for the reply to
// the DATA command, "end" for the reply after the final dot, "rset") and then does
// Act. Every connection is closed at test cleanup. Set the fields before
// NewHostileMX.
type HostileMX struct {
	At       string
	Act      HostileAct
	Greet    string // greeting line; default "220 hostile.test ESMTP"
	EHLOName string // the name in the EHLO reply; default "hostile.test"
	// EHLOReply, if set, is written raw (CRLF-terminated lines) as the
	// whole EHLO reply.
	EHLOReply string
	// Replies, by step ("mail", "rcpt", "data", "end"), replace the
	// default reply with this line (with Act Behave).
	Replies map[string]string
	Every   time.Duration // Trickle interval; default 100ms

	addr  string
	conns atomic.Int64
	sent  atomic.Int64 // bytes of misbehaviour written

	mu   sync.Mutex
	open []net.Conn
}

// NewHostileMX starts h on 127.0.0.1:0.
func NewHostileMX(t testing.TB, h *HostileMX) *HostileMX {
	t.Helper()
	if h.Greet == "" {
		h.Greet = "220 hostile.test ESMTP"
	}
	if h.EHLOName == "" {
		h.EHLOName = "hostile.test"
	}
	if h.Every <= 0 {
		h.Every = 100 * time.Millisecond
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			h.mu.Lock()
			h.open = append(h.open, c)
			h.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				h.serve(c, done)
			})
		}
	})
	t.Cleanup(func() {
		close(done)
		_ = l.Close()
		h.mu.Lock()
		for _, c := range h.open {
			_ = c.Close()
		}
		h.mu.Unlock()
		wg.Wait()
	})
	return h
}

// Addr is the server's 127.0.0.1:port.
func (h *HostileMX) Addr() string { return h.addr }

// Connections is the number of connections accepted so far.
func (h *HostileMX) Connections() int { return int(h.conns.Load()) }

// Sent is the number of bytes of misbehaviour (floods, trickles) written.
func (h *HostileMX) Sent() int64 { return h.sent.Load() }

// misbehave does Act in place of the reply with code (e.g. "250"), until
// the client goes away or the test ends.
func (h *HostileMX) misbehave(c net.Conn, code string, done chan struct{}) {
	// Whatever happens, a connection misbehaves for at most 60s.
	_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
	switch h.Act {
	case FloodLines:
		line := code + "-" + strings.Repeat("x", 70) + "\r\n"
		chunk := []byte(strings.Repeat(line, 512))
		for {
			n, err := c.Write(chunk)
			h.sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	case FloodLine:
		n, err := c.Write([]byte(code + " "))
		h.sent.Add(int64(n))
		chunk := bytes.Repeat([]byte("y"), 32<<10)
		for err == nil {
			n, err = c.Write(chunk)
			h.sent.Add(int64(n))
		}
	case Trickle:
		msg := []byte(code + "-slowly\r\n")
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(h.Every):
			}
			n, err := c.Write(msg[i%len(msg) : i%len(msg)+1])
			h.sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	default: // Silent, TLSHang, StopReading: hold the connection
		buf := make([]byte, 1)
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if h.Act == StopReading {
				// Read nothing more: wait for the client to give up.
				select {
				case <-done:
				case <-time.After(60 * time.Second):
				}
				return
			}
		}
	}
}

// reply is the reply to step: Replies[step], or def.
func (h *HostileMX) reply(step, def string) string {
	if r, ok := h.Replies[step]; ok {
		return r
	}
	return def
}

func (h *HostileMX) serve(c net.Conn, done chan struct{}) {
	say := func(s string) bool {
		_, err := c.Write([]byte(s + "\r\n"))
		return err == nil
	}
	if h.At == "greet" && h.Act != Behave {
		h.misbehave(c, "220", done)
		return
	}
	if !say(h.Greet) {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	starttls := h.At == "starttls" // advertised
	for range 100 {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		step := map[string]string{"EHLO": "ehlo", "HELO": "ehlo", "STARTTLS": "starttls", "MAIL": "mail", "RCPT": "rcpt", "DATA": "data", "RSET": "rset"}[verb]
		if step != "" && step == h.At && h.Act != Behave && h.Act != TLSHang && h.Act != StopReading {
			code := map[string]string{"data": "354", "starttls": "220"}[step]
			if code == "" {
				code = "250"
			}
			h.misbehave(c, code, done)
			return
		}
		switch verb {
		case "EHLO":
			if h.EHLOReply != "" {
				_, _ = c.Write([]byte(h.EHLOReply))
				continue
			}
			ext := "250-" + h.EHLOName + " hello\r\n250-PIPELINING\r\n"
			if starttls {
				ext += "250-STARTTLS\r\n"
			}
			say(ext + "250 8BITMIME")
		case "HELO":
			say("250 " + h.EHLOName)
		case "STARTTLS":
			say("220 2.0.0 go ahead")
			h.misbehave(c, "", done)
			return
		case "MAIL":
			say(h.reply("mail", "250 2.1.0 sender ok"))
		case "RCPT":
			say(h.reply("rcpt", "250 2.1.5 recipient ok"))
		case "DATA":
			if r := h.reply("data", "354 go ahead"); !strings.HasPrefix(r, "354") {
				say(r)
				continue
			}
			say("354 go ahead")
			if h.At == "end" && h.Act == StopReading {
				h.misbehave(c, "", done)
				return
			}
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			if h.At == "end" && h.Act != Behave {
				h.misbehave(c, "250", done)
				return
			}
			say(h.reply("end", "250 2.0.0 queued"))
		case "RSET", "NOOP":
			say("250 2.0.0 ok")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("500 5.5.2 what?")
		}
	}
}
