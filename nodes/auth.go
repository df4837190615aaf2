// Package nodes is what hermod nodes of one cluster know of each other: the
// node registry in etcd (each node's entry on a lease, renewed by its
// heartbeat), the election that picks the one node doing background work,
// and the authentication of requests from one node to another.
//
// Control data itself (accounts, domains, keys, suppressions) is not here:
// it is a control.Store (package cluster).
package nodes

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// AuthScheme is the Authorization scheme of requests between nodes.
const AuthScheme = "HermodNode"

// maxSkew is how far a signed request's time may be from ours.
const maxSkew = 2 * time.Minute

// maxSignedBody bounds the body Verify reads.
const maxSignedBody = 1 << 20

// Auth signs and checks requests between nodes with a key derived from the
// cluster secret (cluster.secret_file), which every node shares. A signature
// covers the sending node, the time, the method, the request URI and the
// body, so a request cannot be replayed to another path or altered; one
// captured on the wire can be replayed only within maxSkew, and only the
// idempotent operations are exposed this way.
type Auth struct {
	key  []byte
	node string
	now  func() time.Time
}

// NewAuth returns the signer and checker of node with the cluster secret.
func NewAuth(secret []byte, node string, now func() time.Time) *Auth {
	if now == nil {
		now = time.Now
	}
	return &Auth{key: Derive(secret, "hermod-node-auth-v1"), node: node, now: now}
}

// Derive returns a key for one purpose from the cluster secret, so that no
// two uses share a key.
func Derive(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func (a *Auth) mac(node, ts, method, uri string, body []byte) string {
	sum := sha256.Sum256(body)
	m := hmac.New(sha256.New, a.key)
	fmt.Fprintf(m, "hermod-node-v1\n%s\n%s\n%s\n%s\n%x", node, ts, method, uri, sum)
	return hex.EncodeToString(m.Sum(nil))
}

// Sign sets r's Authorization header for body (nil for none). r.URL must be
// final: the signature covers r.URL.RequestURI().
func (a *Auth) Sign(r *http.Request, body []byte) {
	ts := strconv.FormatInt(a.now().Unix(), 10)
	r.Header.Set("Authorization", fmt.Sprintf("%s node=%s,ts=%s,mac=%s", AuthScheme, a.node, ts,
		a.mac(a.node, ts, r.Method, r.URL.RequestURI(), body)))
}

// ErrNotSigned is returned by Verify for a request without a node signature.
var ErrNotSigned = errors.New("nodes: request not signed by a node")

// Verify checks r's node signature and returns the signing node. It reads
// the body (at most 1 MiB) and puts it back for the handler.
func (a *Auth) Verify(r *http.Request) (node string, err error) {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), AuthScheme+" ")
	if !ok {
		return "", ErrNotSigned
	}
	fields := map[string]string{}
	for part := range strings.SplitSeq(v, ",") {
		k, val, _ := strings.Cut(strings.TrimSpace(part), "=")
		fields[k] = val
	}
	node, ts, mac := fields["node"], fields["ts"], fields["mac"]
	sec, err := strconv.ParseInt(ts, 10, 64)
	if node == "" || err != nil || mac == "" {
		return "", errors.New("nodes: malformed node signature")
	}
	if d := a.now().Sub(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
		return "", fmt.Errorf("nodes: node signature of %s is %s off our clock (at most %s): check the clocks (NTP)", node, d.Round(time.Second), maxSkew)
	}
	var body []byte
	if r.Body != nil {
		body, err = io.ReadAll(io.LimitReader(r.Body, maxSignedBody+1))
		if err != nil {
			return "", fmt.Errorf("nodes: read signed body: %w", err)
		}
		if len(body) > maxSignedBody {
			return "", errors.New("nodes: signed body over 1 MiB")
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	want := a.mac(node, ts, r.Method, r.URL.RequestURI(), body)
	if !hmac.Equal([]byte(want), []byte(mac)) {
		return "", errors.New("nodes: wrong node signature (is cluster.secret_file the same on every node?)")
	}
	return node, nil
}
