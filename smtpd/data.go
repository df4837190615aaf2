package smtpd

import (
	"io"

	"github.com/emersion/go-smtp"
)

// maxLine is the longest line RFC 5321 4.5.3.1.6 allows, CRLF included.
const maxLine = 1000

// strictReader passes message data through while checking it for what must
// never be guessed at: a bare CR or LF (the SMTP smuggling family, where the
// receiver and a later hop disagree on where the message ends), NUL bytes and
// lines longer than RFC 5321 allows. It keeps reading after a fault so the
// whole DATA is consumed, and reports the first fault at the end.
type strictReader struct {
	r      io.Reader
	prevCR bool
	line   int
	fault  *smtp.SMTPError
}

func (s *strictReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if s.fault == nil {
		s.scan(p[:n])
	}
	return n, err
}

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
