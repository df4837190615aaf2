package vocab

import (
	"strings"
	"testing"
)

func TestParseNodeID(t *testing.T) {
	for _, s := range []string{"a", "n1", "node0001", "z9", "abcdefgh"} {
		n, err := ParseNodeID(s)
		if err != nil || string(n) != s || !n.Valid() {
			t.Errorf("ParseNodeID(%q) = %q, %v; want it accepted", s, n, err)
		}
	}
	for _, s := range []string{"", "1a", "9", "-a", "abcdefghi", "N1", "nA", "n-1", "n_1", "n.1", "n 1", "né", "a\x00", "_"} {
		if n, err := ParseNodeID(s); err == nil {
			t.Errorf("ParseNodeID(%q) = %q, want an error", s, n)
		} else if !strings.Contains(err.Error(), "node id") {
			t.Errorf("ParseNodeID(%q) error %q does not say what it is about", s, err)
		}
		if NodeID(s).Valid() {
			t.Errorf("NodeID(%q).Valid() = true", s)
		}
	}
}
