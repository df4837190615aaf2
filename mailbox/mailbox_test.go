package mailbox

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var client = netip.MustParseAddr("192.0.2.7")

func deliver(t *testing.T, m *Mailbox, from netip.Addr, n int, boxes ...string) (string, error) {
	t.Helper()
	return m.Deliver(context.Background(), from, "sender@example.net", boxes, strings.NewReader(strings.Repeat("x", n)))
}

// files lists what the directory holds (every file, temporary ones too).
func files(t *testing.T, dir string) (n int, bytes int64) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, _ := d.Info()
			n++
			bytes += fi.Size()
		}
		return nil
	})
	return n, bytes
}

func TestOneCopyForSeveralMailboxes(t *testing.T) {
	dir := t.TempDir()
	m, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	path, err := deliver(t, m, client, 100, "postmaster", "abuse")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := files(t, dir); n != 1 {
		t.Fatalf("%d files for one message to two mailboxes, want 1", n)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "X-Hermod-Mailbox: postmaster, abuse\r\nX-Hermod-Client: 192.0.2.7\r\n") {
		t.Errorf("file starts %q", data[:80])
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		sizes []int
		want  []error
	}{
		{"per message", Options{MaxMessageBytes: 1000}, []int{800, 1001}, []error{nil, ErrTooBig}},
		{"total bytes", Options{MaxTotalBytes: 2500}, []int{1000, 1000, 1000}, []error{nil, nil, ErrQuota}},
		{"files", Options{MaxFiles: 2}, []int{10, 10, 10}, []error{nil, nil, ErrQuota}},
		{"rate", Options{RateBytes: 2500}, []int{1000, 1000, 1000}, []error{nil, nil, ErrRate}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Dir = t.TempDir()
			m, err := New(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range tc.sizes {
				_, err := deliver(t, m, client, n, "postmaster")
				if !errors.Is(err, tc.want[i]) || (tc.want[i] == nil) != (err == nil) {
					t.Errorf("message %d (%d bytes): %v, want %v", i, n, err, tc.want[i])
				}
			}
			n, b := files(t, tc.opts.Dir)
			got, gotFiles := m.Usage()
			if int64(b) != got || n != gotFiles {
				t.Errorf("usage %d bytes %d files, disk holds %d bytes %d files (no leftovers expected)", got, gotFiles, b, n)
			}
		})
	}
}

// TestRatePerClient: the byte rate is per client address (IPv6: its /64),
// and a new window starts after RateWindow.
func TestRatePerClient(t *testing.T) {
	now := time.Unix(1e9, 0)
	m, err := New(Options{Dir: t.TempDir(), RateBytes: 1500, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := netip.MustParseAddr("2001:db8:0:1::1"), netip.MustParseAddr("2001:db8:0:1::2")
	if _, err := deliver(t, m, a1, 1000, "abuse"); err != nil {
		t.Fatal(err)
	}
	if _, err := deliver(t, m, a2, 1000, "abuse"); !errors.Is(err, ErrRate) {
		t.Errorf("same /64, over the rate: %v, want ErrRate", err)
	}
	if _, err := deliver(t, m, netip.MustParseAddr("2001:db8:0:2::1"), 1000, "abuse"); err != nil {
		t.Errorf("another /64: %v", err)
	}
	now = now.Add(time.Hour)
	if _, err := deliver(t, m, a2, 1000, "abuse"); err != nil {
		t.Errorf("next window: %v", err)
	}
}

// TestFreeSpaceReserve: a message that would leave less than MinFree free
// on the real filesystem is refused and leaves nothing behind.
func TestFreeSpaceReserve(t *testing.T) {
	dir := t.TempDir()
	free, err := freeSpace(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Dir: dir, MinFree: free - 500})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deliver(t, m, client, 5000, "postmaster"); !errors.Is(err, ErrReserve) {
		t.Fatalf("5000 bytes with 500 above the reserve: %v, want ErrReserve", err)
	}
	if n, _ := files(t, dir); n != 0 {
		t.Fatalf("%d files left behind", n)
	}
	m2, _ := New(Options{Dir: dir, MinFree: free / 2})
	if _, err := deliver(t, m2, client, 5000, "postmaster"); err != nil {
		t.Fatalf("with room: %v", err)
	}
}

// TestConcurrentReservations: parallel deliveries cannot together exceed
// the quota.
func TestConcurrentReservations(t *testing.T) {
	dir := t.TempDir()
	m, _ := New(Options{Dir: dir, MaxTotalBytes: 10_000, RateBytes: 1 << 30})
	errs := make(chan error, 30)
	for range 30 {
		go func() {
			_, err := deliver(t, m, client, 1000, "postmaster")
			errs <- err
		}()
	}
	ok := 0
	for range 30 {
		if <-errs == nil {
			ok++
		}
	}
	if _, b := files(t, dir); b > 10_000 || ok == 0 {
		t.Fatalf("%d stored, %d bytes on disk; quota 10000", ok, b)
	}
}

// TestNewCountsExisting: a restart counts what is stored and removes
// temporary files of interrupted deliveries.
func TestNewCountsExisting(t *testing.T) {
	dir := t.TempDir()
	m, _ := New(Options{Dir: dir, MaxFiles: 2})
	deliver(t, m, client, 10, "postmaster")
	os.WriteFile(filepath.Join(dir, "postmaster", "x.tmp"), []byte("partial"), 0o600)
	m, _ = New(Options{Dir: dir, MaxFiles: 2})
	if _, f := m.Usage(); f != 1 {
		t.Fatalf("after restart: %d files counted, want 1", f)
	}
	if _, err := os.Stat(filepath.Join(dir, "postmaster", "x.tmp")); err == nil {
		t.Error("temporary file kept")
	}
	deliver(t, m, client, 10, "postmaster")
	if _, err := deliver(t, m, client, 10, "postmaster"); !errors.Is(err, ErrQuota) {
		t.Errorf("third file with MaxFiles 2: %v", err)
	}
}
