// Package testnet holds the loopback peers the tests of other packages
// talk to instead of mocks: a miekg/dns server answering from records set
// at run time, and a go-smtp sink standing in for remote MX hosts. Both
// listen on 127.0.0.1 only and stop when the test ends.
package testnet

import (
	"net"
	"testing"
)

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago: it listens on port 0 and closes the listener. Another process may
// take the port before the caller does; the tests accept that race.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
