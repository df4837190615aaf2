// Package mailbox keeps the mail that people, not programs, are meant to
// read — postmaster@ and abuse@ of the bounce host — as files, without
// letting a stranger who can reach port 25 fill the disk: one copy per
// transaction however many recipients, a per-message size cap, a total
// quota on bytes and files, a per-client byte rate, and a free-space
// reserve on the filesystem that is never eaten into.
package mailbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Errors Deliver returns (wrapped); each says which limit refused the mail.
var (
	// ErrTooBig: the message is larger than MaxMessageBytes.
	ErrTooBig = errors.New("mailbox: message too big")
	// ErrQuota: the mailbox holds MaxTotalBytes or MaxFiles already.
	ErrQuota = errors.New("mailbox: quota reached")
	// ErrRate: the client sent more than RateBytes within RateWindow.
	ErrRate = errors.New("mailbox: client over its byte rate")
	// ErrReserve: storing the message would eat into the free-space reserve.
	ErrReserve = errors.New("mailbox: filesystem free-space reserve reached")
)

// Options configures a Mailbox. Zero values take the defaults noted.
type Options struct {
	// Dir holds one directory per mailbox name. Required.
	Dir string
	// MaxMessageBytes caps one message (default 10 MiB).
	MaxMessageBytes int64
	// MaxTotalBytes and MaxFiles cap what all mailboxes hold together
	// (defaults 100 MiB and 1000 files).
	MaxTotalBytes int64
	MaxFiles      int
	// RateBytes is how much one client address (IPv6: its /64) may store
	// per RateWindow (defaults 20 MiB per hour).
	RateBytes  int64
	RateWindow time.Duration
	// MinFree is the free space (bytes) the filesystem of Dir must keep
	// after a message is stored: the spool's reserve.
	MinFree uint64
	// FreeSpace reports the bytes available to hermod on the filesystem of
	// path (default: statfs).
	FreeSpace func(path string) (uint64, error)
	Now       func() time.Time
	Logger    *slog.Logger
}

// Mailbox stores messages for people within its limits. It is safe for
// concurrent use.
type Mailbox struct {
	opts Options

	mu    sync.Mutex
	bytes int64 // stored, and written so far by deliveries in progress
	files int   // stored, and being written
	rate  map[netip.Prefix]*window
}

type window struct {
	start time.Time
	bytes int64
}

// New returns a Mailbox over opts.Dir, counting what it holds already.
func New(opts Options) (*Mailbox, error) {
	if opts.Dir == "" {
		return nil, errors.New("mailbox: no directory")
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 10 << 20
	}
	if opts.MaxTotalBytes <= 0 {
		opts.MaxTotalBytes = 100 << 20
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = 1000
	}
	if opts.RateBytes <= 0 {
		opts.RateBytes = 20 << 20
	}
	if opts.RateWindow <= 0 {
		opts.RateWindow = time.Hour
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = freeSpace
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Mailbox{opts: opts, rate: map[netip.Prefix]*window{}}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	err := filepath.WalkDir(opts.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(path, ".eml") {
			if fi, err := d.Info(); err == nil {
				m.bytes += fi.Size()
				m.files++
			}
		} else if d.Type().IsRegular() && strings.HasSuffix(path, ".tmp") {
			os.Remove(path) // a delivery cut off by a crash
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mailbox: count %s: %w", opts.Dir, err)
	}
	return m, nil
}

// Usage reports the bytes and files stored (and being written).
func (m *Mailbox) Usage() (bytes int64, files int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes, m.files
}

// clientKey is the unit client addresses are counted in (IPv6: the /64).
func clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	if p, err := a.Prefix(64); err == nil {
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

// startFile takes a file slot for a new message (ErrQuota when MaxFiles
// are stored or being written).
func (m *Mailbox) startFile() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.files >= m.opts.MaxFiles {
		return fmt.Errorf("%w: %d files", ErrQuota, m.files)
	}
	m.files++
	return nil
}

// grow accounts n more bytes of a message from client being written,
// checking the total quota, the client's rate and the filesystem reserve
// first. Concurrent writers grow one chunk at a time, so together they
// cannot overrun any limit by more than a chunk each.
func (m *Mailbox) grow(client netip.Addr, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Now()
	if m.bytes+n > m.opts.MaxTotalBytes {
		return fmt.Errorf("%w: %d of %d bytes used", ErrQuota, m.bytes, m.opts.MaxTotalBytes)
	}
	if len(m.rate) > 10000 {
		for k, w := range m.rate {
			if now.Sub(w.start) >= m.opts.RateWindow {
				delete(m.rate, k)
			}
		}
	}
	key := clientKey(client)
	w := m.rate[key]
	if w == nil || now.Sub(w.start) >= m.opts.RateWindow {
		w = &window{start: now}
		m.rate[key] = w
	}
	if w.bytes+n > m.opts.RateBytes {
		return fmt.Errorf("%w: %d bytes within %s", ErrRate, w.bytes, m.opts.RateWindow)
	}
	free, err := m.opts.FreeSpace(m.opts.Dir)
	if err != nil {
		return fmt.Errorf("mailbox: free space of %s: %w", m.opts.Dir, err)
	}
	if int64(free)-n < int64(m.opts.MinFree) {
		return fmt.Errorf("%w: %d bytes free, %d kept", ErrReserve, free, m.opts.MinFree)
	}
	m.bytes += n
	w.bytes += n // what a client sent counts against its rate even if refused later
	return nil
}

// abandon gives back the file slot and the bytes of a message not stored.
func (m *Mailbox) abandon(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files--
	m.bytes -= n
}

// Deliver stores one message read from r for the mailboxes named (one
// copy, in the directory of the first; a header line lists them all) and
// returns its path. When a limit refuses it, what was written is removed
// and the error wraps ErrTooBig, ErrQuota, ErrRate or ErrReserve; r is not
// read to its end then.
func (m *Mailbox) Deliver(ctx context.Context, client netip.Addr, mailFrom string, boxes []string, r io.Reader) (string, error) {
	if len(boxes) == 0 {
		return "", errors.New("mailbox: no mailbox named")
	}
	for _, b := range boxes {
		if b == "" || strings.ContainsAny(b, "/\\.\r\n") {
			return "", fmt.Errorf("mailbox: bad mailbox name %q", b)
		}
	}
	if err := m.startFile(); err != nil {
		return "", err
	}
	stored, path, err := m.write(ctx, client, mailFrom, boxes, r)
	if err != nil {
		m.abandon(stored)
		return "", err
	}
	m.opts.Logger.Warn("mailbox: mail for "+strings.Join(boxes, ", ")+" kept", "file", path, "client", client, "from", mailFrom, "size", stored)
	return path, nil
}

// chunk is the unit a message is accounted and written in.
const chunk = 64 << 10

// write stores the message as a temporary file renamed into place once
// complete; it returns the bytes accounted (to give back on failure).
func (m *Mailbox) write(ctx context.Context, client netip.Addr, mailFrom string, boxes []string, r io.Reader) (int64, string, error) {
	dir := filepath.Join(m.opts.Dir, boxes[0])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, "", fmt.Errorf("mailbox: %w", err)
	}
	name := fmt.Sprintf("%s-%s", m.opts.Now().UTC().Format("20060102T150405.000000000"), randomSuffix())
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, "", fmt.Errorf("mailbox: %w", err)
	}
	var total int64
	fail := func(err error) (int64, string, error) {
		f.Close()
		os.Remove(tmp)
		return total, "", err
	}
	put := func(b []byte) error {
		if total+int64(len(b)) > m.opts.MaxMessageBytes {
			return fmt.Errorf("%w (more than %d bytes)", ErrTooBig, m.opts.MaxMessageBytes)
		}
		if err := m.grow(client, int64(len(b))); err != nil {
			return err
		}
		total += int64(len(b))
		if _, err := f.Write(b); err != nil {
			return fmt.Errorf("mailbox: write %s: %w", tmp, err)
		}
		return nil
	}
	head := fmt.Sprintf("X-Hermod-Mailbox: %s\r\nX-Hermod-Client: %s\r\nX-Hermod-Envelope-From: <%s>\r\n",
		strings.Join(boxes, ", "), client, sanitize(mailFrom))
	if err := put([]byte(head)); err != nil {
		return fail(err)
	}
	buf := make([]byte, chunk)
	cr := &ctxReader{ctx: ctx, r: r}
	for {
		n, rerr := io.ReadFull(cr, buf)
		if n > 0 {
			if err := put(buf[:n]); err != nil {
				return fail(err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break // the reader's end (the caller tells a cut-off DATA apart)
		}
		if rerr != nil {
			return fail(fmt.Errorf("mailbox: store message: %w", rerr))
		}
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("mailbox: sync %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return total, "", fmt.Errorf("mailbox: close %s: %w", tmp, err)
	}
	path := filepath.Join(dir, name+".eml")
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return total, "", fmt.Errorf("mailbox: %w", err)
	}
	return total, path, nil
}

// sanitize keeps an envelope address printable for the header line.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '>' {
			return '?'
		}
		return r
	}, s)
}

func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// freeSpace is the bytes available to an unprivileged user on the
// filesystem of path (statfs f_bavail).
func freeSpace(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}
