package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestDiskFullAnswers452 fills the file system under data_dir (a small
// tmpfs; root only) and checks that a submission is answered 452 4.3.1,
// nothing is half-written, and submissions work again once space is back.
func TestDiskFullAnswers452(t *testing.T) {
	dir := testnet.Tmpfs(t, "8m")
	sink := testnet.NewSink(t)
	cfg := testConfig(t, dir, sink.Addr())
	cfg.Queue.Reserve = 1 << 20
	d := startDaemon(t, cfg)
	addr := d.Addr("submission.listen")
	msg := "From: a@customer.test\r\nSubject: x\r\n\r\nbody\r\n"

	// Fill the disk with a file of our own.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	var last string
	for i := 0; i < 50; i++ { // the store may have free pages left: use them up
		replies := submitRaw(t, addr, append(dataLinesTo(msg+strings.Repeat("x", 60)+"\r\n", "r@dest.test"), "QUIT\r\n")...)
		last = replies[len(replies)-2]
		if !strings.HasPrefix(last, "250") {
			break
		}
	}
	if !strings.HasPrefix(last, "452 4.3.1") {
		t.Fatalf("submission on a full disk answered %q, want 452 4.3.1", last)
	}
	// Space comes back: submissions work again, with no restart.
	os.Remove(filler)
	replies := submitRaw(t, addr, append(dataLinesTo(msg, "after@dest.test"), "QUIT\r\n")...)
	if got := replies[len(replies)-2]; !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("after space came back: %q", got)
	}
	if _, err := sink.Wait("after@dest.test", 15e9); err != nil {
		t.Fatal(err)
	}
}
