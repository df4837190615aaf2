package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkSummary50k: Summary over 50,000 waiting recipients (500
// messages of 100, at 50 domains).
func BenchmarkSummary50k(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "q.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 500; i++ {
		var rcpts []string
		for j := 0; j < 100; j++ {
			rcpts = append(rcpts, fmt.Sprintf("u%d@d%d.test", i, j%50))
		}
		if err := s.Enqueue(context.Background(), newMessage(rcpts...), []byte("Subject: x\r\n\r\nb\r\n")); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rows, err := s.Summary(SummaryByDomain)
		if err != nil || len(rows) != 50 || rows[0].Total != 1000 {
			b.Fatalf("rows %d %v", len(rows), err)
		}
	}
}
