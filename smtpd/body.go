package smtpd

import (
	"bytes"
	"fmt"
	"io"
)

// A message body is read in chunks that start small and double up to
// maxChunk: a 4 KiB message costs an 8 KiB chunk, not a 256 KiB one, and a
// 25 MiB message is not copied again and again as one slice would grow.
const (
	firstChunk = 8 << 10
	maxChunk   = 256 << 10
)

// Body is a message body held as a list of chunks.
type Body struct {
	chunks [][]byte
	n      int
}

// NewBody returns a body holding b (not copied).
func NewBody(b []byte) *Body { return &Body{chunks: [][]byte{b}, n: len(b)} }

// ReadBody reads r to its end (io.EOF) into a Body. Any other error is
// returned as is — io.ErrUnexpectedEOF too, which the DATA reader returns
// when the connection ends before the terminating dot: a cut-off message is
// not a message.
func ReadBody(r io.Reader) (*Body, error) {
	b := &Body{}
	for size := firstChunk; ; size = min(2*size, maxChunk) {
		chunk := make([]byte, size)
		n, err := fill(r, chunk)
		if n > 0 {
			b.chunks = append(b.chunks, chunk[:n:n])
			b.n += n
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, fmt.Errorf("read message body: %w", err)
		}
	}
}

// fill reads into p until it is full or r fails; unlike io.ReadFull it
// returns r's error unchanged (a clean io.EOF stays io.EOF).
func fill(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Len is the size of the body in bytes.
func (b *Body) Len() int { return b.n }

// Reader returns a reader over the body.
func (b *Body) Reader() io.Reader {
	rs := make([]io.Reader, len(b.chunks))
	for i, c := range b.chunks {
		rs[i] = bytes.NewReader(c)
	}
	return io.MultiReader(rs...)
}

// Chunks returns the body's chunks, in order (not copies).
func (b *Body) Chunks() [][]byte { return b.chunks }
