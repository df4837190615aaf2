package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"
)

// maxLine is the longest line RFC 5321 4.5.3.1.6 allows, CRLF included.
const maxLine = 1000

// strictReader passes message data through while checking it for what must
// never be guessed at: a bare CR or LF (the SMTP smuggling family, where the
// receiver and a later hop disagree on where the message ends), NUL bytes and
// lines longer than RFC 5321 allows. It keeps reading after a fault so the
// whole DATA is consumed, and reports the first fault at the end.
//
// When max > 0 it is also the message size limit: more than max bytes is
// errTooBig.
type strictReader struct {
	r      io.Reader
	max    int64
	n      int64
	prevCR bool
	line   int
	fault  *smtp.SMTPError
}

func (s *strictReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.fault == nil {
		s.scan(p[:n])
		if s.max > 0 && s.n > s.max {
			s.fault = errTooBig
		}
	}
	return n, err
}

// errMalformedHeader is returned by readHeader for a header section
// go-message cannot parse.
var errMalformedHeader = errors.New("smtpd: malformed header section")

// readHeader reads the header section (up to and including the empty line)
// from br with a cap on its size and its number of fields, then parses it.
// Parsing costs several times the input in memory, so the cap comes first.
func readHeader(br *bufio.Reader, maxBytes, maxFields int) (textproto.Header, error) {
	var buf bytes.Buffer
	fields := 0
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if line[0] != ' ' && line[0] != '\t' && !isEmptyLine(line) {
				fields++
			}
			buf.Write(line)
			if buf.Len() > maxBytes || fields > maxFields {
				return textproto.Header{}, errHeaderTooBig
			}
		}
		if err == bufio.ErrBufferFull {
			continue // a long line, still counted against maxBytes
		}
		if err == io.EOF {
			buf.WriteString("\r\n") // header-only message: end it
			break
		}
		if err != nil {
			return textproto.Header{}, fmt.Errorf("read header: %w", err)
		}
		if isEmptyLine(line) {
			break
		}
	}
	h, err := textproto.ReadHeader(bufio.NewReader(&buf))
	if err != nil {
		return textproto.Header{}, fmt.Errorf("%w: %v", errMalformedHeader, err)
	}
	return h, nil
}

func isEmptyLine(l []byte) bool { return string(l) == "\r\n" || string(l) == "\n" }

func (s *strictReader) scan(b []byte) {
	for _, c := range b {
		switch {
		case s.prevCR && c != '\n':
			s.fault = reply(550, smtp.EnhancedCode{5, 5, 2}, "Message contains a bare CR (carriage return not followed by line feed); lines must end with CRLF")
			return
		case c == '\n' && !s.prevCR:
			s.fault = reply(550, smtp.EnhancedCode{5, 5, 2}, "Message contains a bare LF (line feed without carriage return); lines must end with CRLF")
			return
		case c == 0:
			s.fault = reply(550, smtp.EnhancedCode{5, 6, 0}, "Message contains a NUL byte; encode binary content (base64)")
			return
		}
		s.prevCR = c == '\r'
		switch c {
		case '\r':
			continue
		case '\n':
			s.line = 0
			continue
		}
		s.line++
		if s.line > maxLine-2 {
			s.fault = errLineTooLong
			return
		}
	}
}
