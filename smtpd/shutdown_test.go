package smtpd

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestShutdownRightAfterServe: a stop that comes while Serve is still
// starting — after its listener is registered, before go-smtp serves it —
// ends it. hermod hung on SIGTERM when a stop fell into that window.
func TestShutdownRightAfterServe(t *testing.T) {
	s := New(Options{Hostname: "hermod.test", Submitter: &recorder{}, Logger: slog.New(slog.DiscardHandler)})
	s.registered = func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() { done <- s.Serve(l, false) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after a stop: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5 s after Shutdown")
	}
}
