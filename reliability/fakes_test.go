package reliability

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeMX is a scripted remote MX on 127.0.0.1 speaking raw SMTP, so that it
// can misbehave where go-smtp would not let it: a 4xx/5xx greeting, a
// withheld greeting, a dropped connection mid-DATA, a broken STARTTLS.
type fakeMX struct {
	addr string
	// replies by stage: "greet", "ehlo", "mail", "rcpt", "data", "end"
	// (after the data). Missing stages get a 2xx/3xx.
	replies map[string]string
	// delays before the reply of a stage (a tarpit).
	delays map[string]time.Duration
	// starttls advertises STARTTLS and then answers the handshake with junk.
	starttls bool
	// dropInData closes the connection after part of the data.
	dropInData bool
	// hold withholds the reply after the data until closed (data_timeout,
	// not command_timeout, bounds that wait).
	hold chan struct{}

	mu        sync.Mutex
	conns     int // connections accepted
	open      int // connections open now
	delivered int
}

func newFakeMX(t testing.TB, f *fakeMX) *fakeMX {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	done := make(chan struct{})
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.serve(c, done)
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		l.Close()
		wg.Wait()
	})
	return f
}

func (f *fakeMX) stats() (conns, open, delivered int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns, f.open, f.delivered
}

func (f *fakeMX) serve(c net.Conn, done chan struct{}) {
	defer c.Close()
	f.mu.Lock()
	f.conns++
	f.open++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.open--
		f.mu.Unlock()
	}()
	// Whatever happens, a connection lives at most 30s.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		<-done
		c.Close()
	}()
	say := func(stage, def string) string {
		if d := f.delays[stage]; d > 0 {
			select {
			case <-time.After(d):
			case <-done:
			}
		}
		r, ok := f.replies[stage]
		if !ok {
			r = def
		}
		io.WriteString(c, r+"\r\n")
		return r
	}
	greetOK := strings.HasPrefix(say("greet", "220 fake.test ESMTP"), "220")
	br := bufio.NewReader(c)
	for range 100 {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		if !greetOK && verb != "QUIT" {
			io.WriteString(c, "503 5.5.1 no service\r\n")
			continue
		}
		switch verb {
		case "EHLO", "HELO":
			def := "250-fake.test\r\n250-PIPELINING\r\n250 8BITMIME"
			if f.starttls {
				def = "250-fake.test\r\n250-STARTTLS\r\n250 8BITMIME"
			}
			say("ehlo", def)
		case "STARTTLS":
			io.WriteString(c, "220 2.0.0 go ahead\r\n")
			if _, err := br.ReadByte(); err == nil { // the ClientHello arrives
				io.WriteString(c, "this is not a TLS server hello\r\n")
			}
			return
		case "MAIL":
			say("mail", "250 2.1.0 sender ok")
		case "RCPT":
			say("rcpt", "250 2.1.5 recipient ok")
		case "DATA":
			if !strings.HasPrefix(say("data", "354 go ahead"), "354") {
				continue
			}
			if f.dropInData {
				br.ReadString('\n')
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
			if f.hold != nil {
				select {
				case <-f.hold:
				case <-done:
					return
				case <-time.After(25 * time.Second):
				}
			}
			if strings.HasPrefix(say("end", "250 2.0.0 queued"), "250") {
				f.mu.Lock()
				f.delivered++
				f.mu.Unlock()
			}
		case "RSET", "NOOP":
			io.WriteString(c, "250 2.0.0 ok\r\n")
		case "QUIT":
			io.WriteString(c, "221 2.0.0 bye\r\n")
			return
		default:
			io.WriteString(c, "500 5.5.2 what?\r\n")
		}
	}
}

func portOf(t testing.TB, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}
