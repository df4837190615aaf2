package vocab

import "fmt"

// MaxNodeIDLen is the longest node id ParseNodeID accepts.
const MaxNodeIDLen = 8

// NodeID names one hermod node of a cluster (the `[cluster] node_id` key):
// 1 to MaxNodeIDLen characters of [a-z0-9], starting with a letter. It is
// the first part of every message id the node issues and of every VERP
// address for them, so it must be unique in the cluster and never change
// while the node has mail queued. The zero value "" means a single node
// (no cluster).
type NodeID string

// String returns the node id as written in the configuration.
func (n NodeID) String() string { return string(n) }

// ParseNodeID checks that s is a valid node id (see NodeID) and returns it.
// Upper case is refused rather than folded: the id is part of message ids,
// which are lower case only, and a configuration spelling it two ways on two
// nodes must not silently agree.
func ParseNodeID(s string) (NodeID, error) {
	if s == "" {
		return "", fmt.Errorf("node id is empty")
	}
	if len(s) > MaxNodeIDLen {
		return "", fmt.Errorf("node id %q is %d characters, at most %d", s, len(s), MaxNodeIDLen)
	}
	if c := s[0]; c < 'a' || c > 'z' {
		return "", fmt.Errorf("node id %q must start with a letter a-z (lower case only)", s)
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return "", fmt.Errorf("node id %q: character %q at offset %d is not a-z or 0-9", s, c, i)
		}
	}
	return NodeID(s), nil
}

// Valid reports whether n is a valid node id; "" (single node) is not.
func (n NodeID) Valid() bool {
	_, err := ParseNodeID(string(n))
	return err == nil
}
