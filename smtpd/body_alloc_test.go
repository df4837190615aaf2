package smtpd

import (
	"bytes"
	"runtime"
	"testing"
)

// TestReadBodySmallMessageSmallChunk: a 4 KiB message is read into small
// chunks (v0 took a 256 KiB chunk for every message, whatever its size).
func TestReadBodySmallMessageSmallChunk(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789abcde\n"), 256) // 4 KiB
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 100
	for i := 0; i < runs; i++ {
		b, err := ReadBody(bytes.NewReader(msg))
		if err != nil || b.Len() != len(msg) {
			t.Fatalf("ReadBody: %d bytes, %v", b.Len(), err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 16<<10 {
		t.Errorf("reading a 4 KiB body allocates %d bytes; want at most 16 KiB", per)
	}
}
