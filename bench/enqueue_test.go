package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/queue"
)

// BenchmarkEnqueue measures the commit path: concurrent Enqueue calls of a
// 4 KiB message with one recipient, sharing fsyncs through group commit. It
// reports the fsyncs (bbolt write transactions) per 1000 messages.
func BenchmarkEnqueue(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		b.Run(fmt.Sprintf("nosync=%v", noSync), func(b *testing.B) {
			s, err := queue.Open(filepath.Join(b.TempDir(), "q.db"), queue.Options{NoSync: noSync})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			body := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog; bench filler text.\r\n", 64))
			var n atomic.Int64
			b.SetBytes(int64(len(body)))
			b.SetParallelism(8) // many sessions per CPU, as under load
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					m := &queue.Message{ID: queue.NewID(time.Now()), MailFrom: "app@bench.test",
						Recipients: []*queue.Recipient{{Address: fmt.Sprintf("r%d@dest.bench.test", i),
							EnvelopeFrom: "bounce-md_x@bounce.bench.test"}}}
					if err := s.Enqueue(context.Background(), m, body); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.StopTimer()
			txs, _ := s.Commits()
			b.ReportMetric(float64(txs)*1000/float64(b.N), "fsyncs/1000msgs")
		})
	}
}
