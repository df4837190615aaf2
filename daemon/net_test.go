package daemon

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

func netDial(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }

type replyReader struct{ r *bufio.Reader }

func newReplyReader(c net.Conn) *replyReader { return &replyReader{bufio.NewReader(c)} }

// next reads one (possibly multi-line) SMTP reply and returns its last line.
func (rr *replyReader) next(t *testing.T) string {
	t.Helper()
	for {
		line, err := rr.r.ReadString('\n')
		if err != nil {
			t.Fatalf("read reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}
