package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/hermod-mta/hermod/internal/fsperm"
	"github.com/hermod-mta/hermod/vocab"
)

// Defaults of the [cluster] section, applied by Parse to every zero value
// when the section is present.
const (
	DefaultEtcdPrefix         = "/hermod"
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 5 * time.Second
	DefaultHeartbeat          = 5 * time.Second
)

// MinClusterSecretLen is the fewest bytes cluster.secret_file must hold.
const MinClusterSecretLen = 32

// Cluster configures one node of a cluster of hermod nodes that share their
// control data (accounts, domains and their keys, suppressions, the node
// registry) in etcd. Each node keeps its own spool. Without the [cluster]
// section (Config.Cluster nil) hermod is a single node on bbolt alone.
type Cluster struct {
	// NodeID names this node: 1 to 8 characters of [a-z0-9], starting with a
	// letter, unique in the cluster. It begins every message id the node
	// issues ("<node_id>-<16 chars>") and so every VERP address: never change
	// it while the node has mail queued. Required.
	NodeID string `toml:"node_id"`
	// EtcdEndpoints are the etcd members' client URLs, "http://host:port" or
	// "https://host:port". Required, at least one.
	EtcdEndpoints []string `toml:"etcd_endpoints"`
	// Advertise is this node's API base URL as the other nodes reach it,
	// "http(s)://host:port" without a path (not a wildcard address such as
	// 0.0.0.0). Required.
	Advertise string `toml:"advertise"`
	// SecretFile holds the cluster secret, the same file on every node: it
	// authenticates the nodes to each other and is the key that encrypts DKIM
	// keys before they are written to etcd. At least MinClusterSecretLen
	// bytes, mode 0600. Relative to data_dir. Required.
	SecretFile string `toml:"secret_file"`
	// EtcdCAFile is the CA bundle (PEM) that etcd's server certificates are
	// checked against ("": the system roots). Relative to data_dir.
	EtcdCAFile string `toml:"etcd_ca_file"`
	// EtcdCertFile and EtcdKeyFile are this node's client certificate and
	// key (PEM) for etcd's client-certificate authentication: both or
	// neither. Relative to data_dir.
	EtcdCertFile string `toml:"etcd_cert_file"`
	EtcdKeyFile  string `toml:"etcd_key_file"`
	// EtcdUsername and EtcdPasswordFile are etcd's user authentication: both
	// or neither. The password file (mode 0600, relative to data_dir) holds
	// the password; a final newline is not part of it.
	EtcdUsername     string `toml:"etcd_username"`
	EtcdPasswordFile string `toml:"etcd_password_file"`
	// EtcdPrefix is the key prefix of all of hermod's data in etcd: starts
	// with "/", no trailing "/" (default DefaultEtcdPrefix). Nodes of one
	// cluster share it; another prefix is another cluster.
	EtcdPrefix string `toml:"etcd_prefix"`
	// EtcdDialTimeout bounds connecting to etcd (default DefaultEtcdDialTimeout).
	EtcdDialTimeout time.Duration `toml:"etcd_dial_timeout"`
	// EtcdRequestTimeout bounds one etcd request (default
	// DefaultEtcdRequestTimeout).
	EtcdRequestTimeout time.Duration `toml:"etcd_request_timeout"`
	// Heartbeat is how often the node renews its registry entry (default
	// DefaultHeartbeat).
	Heartbeat time.Duration `toml:"heartbeat"`
}

// Clustered reports whether the configuration has a [cluster] section.
func (c *Config) Clustered() bool { return c.Cluster != nil }

// Node returns the node id of a clustered configuration, "" without a
// [cluster] section (submit.Options.Node, queue.NewNodeID). It is only
// meaningful on a configuration that validated.
func (c *Config) Node() vocab.NodeID {
	if c.Cluster == nil {
		return ""
	}
	return vocab.NodeID(c.Cluster.NodeID)
}

func (cl *Cluster) applyDefaults() {
	if cl.EtcdPrefix == "" {
		cl.EtcdPrefix = DefaultEtcdPrefix
	}
	if cl.EtcdDialTimeout == 0 {
		cl.EtcdDialTimeout = DefaultEtcdDialTimeout
	}
	if cl.EtcdRequestTimeout == 0 {
		cl.EtcdRequestTimeout = DefaultEtcdRequestTimeout
	}
	if cl.Heartbeat == 0 {
		cl.Heartbeat = DefaultHeartbeat
	}
}

// makeSecretHint tells how to make a cluster secret.
func makeSecretHint(path string) string {
	return fmt.Sprintf("make one with: head -c 32 /dev/urandom > %s && chmod 600 %s, and copy the same file to every node", path, path)
}

// validateCluster checks the [cluster] section; c.Cluster is not nil.
func (c *Config) validateCluster(errs *errList) {
	cl := c.Cluster
	if cl.NodeID == "" {
		errs.add("cluster.node_id", "required: this node's id, 1 to 8 characters a-z0-9 starting with a letter")
	} else if _, err := vocab.ParseNodeID(cl.NodeID); err != nil {
		errs.add("cluster.node_id", "%v", err)
	}

	// etcd endpoints.
	if len(cl.EtcdEndpoints) == 0 {
		errs.add("cluster.etcd_endpoints", `required: at least one etcd client URL such as "https://10.0.0.11:2379"`)
	}
	seen := map[string]bool{}
	plain := false // some endpoint is http://
	for i, e := range cl.EtcdEndpoints {
		k := fmt.Sprintf("cluster.etcd_endpoints[%d]", i)
		u, err := parseBaseURL(e, false)
		if err != nil {
			errs.add(k, "%v", err)
			continue
		}
		plain = plain || u.Scheme == "http"
		norm := u.Scheme + "://" + strings.ToLower(u.Host)
		if seen[norm] {
			errs.add(k, "%q is listed twice", e)
		}
		seen[norm] = true
	}

	// advertise.
	if cl.Advertise == "" {
		errs.add("cluster.advertise", `required: this node's API base URL for the other nodes, such as "http://10.0.0.1:8025"`)
	} else if u, err := parseBaseURL(cl.Advertise, true); err != nil {
		errs.add("cluster.advertise", "%v", err)
	} else if lh, lp, err := splitHostPort(c.API.Listen, true); err == nil {
		// The same host as api.listen names the listener itself: the port
		// must be its port. Another host may be a proxy or a NAT in front,
		// whose port cannot be checked here.
		ap, _ := strconv.Atoi(u.Port())
		if sameHost(lh, u.Hostname()) && lp != 0 && ap != lp {
			errs.add("cluster.advertise", "%q names api.listen's host %s but port %d, not api.listen's %d", cl.Advertise, lh, ap, lp)
		}
	}

	// The cluster secret: config check reports what the daemon would
	// refuse (LoadSecret checks again, owner included, when it reads it).
	if cl.SecretFile == "" {
		errs.add("cluster.secret_file", "required: the secret shared by every node; %s", makeSecretHint("FILE"))
	} else {
		path := c.DataPath(cl.SecretFile)
		if fi, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			errs.add("cluster.secret_file", "%s does not exist; %s", path, makeSecretHint(path))
		} else if err != nil {
			errs.add("cluster.secret_file", "%v", err)
		} else if msg := secretProblem(path, fi); msg != "" {
			errs.add("cluster.secret_file", "%s", msg)
		} else if fi.Size() < MinClusterSecretLen {
			errs.add("cluster.secret_file", "%s holds %d bytes, need at least %d; %s", path, fi.Size(), MinClusterSecretLen, makeSecretHint(path))
		}
	}

	// etcd TLS.
	tlsSet := false
	if cl.EtcdCAFile != "" {
		tlsSet = true
		path := c.DataPath(cl.EtcdCAFile)
		if pem, err := os.ReadFile(path); err != nil {
			errs.add("cluster.etcd_ca_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			errs.add("cluster.etcd_ca_file", "%s holds no PEM certificate", path)
		}
	}
	switch {
	case (cl.EtcdCertFile == "") != (cl.EtcdKeyFile == ""):
		if cl.EtcdCertFile == "" {
			errs.add("cluster.etcd_cert_file", "required when cluster.etcd_key_file is set")
		} else {
			errs.add("cluster.etcd_key_file", "required when cluster.etcd_cert_file is set")
		}
	case cl.EtcdCertFile != "":
		tlsSet = true
		certFile, keyFile := c.DataPath(cl.EtcdCertFile), c.DataPath(cl.EtcdKeyFile)
		bad := false
		for _, f := range []struct{ key, path string }{{"cluster.etcd_cert_file", certFile}, {"cluster.etcd_key_file", keyFile}} {
			if _, err := os.ReadFile(f.path); err != nil {
				errs.add(f.key, "%v", err)
				bad = true
			}
		}
		if !bad {
			if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
				errs.add("cluster.etcd_cert_file", "%s and %s are not a certificate and its key: %v", certFile, keyFile, err)
			}
		}
	}
	if tlsSet && plain {
		errs.add("cluster.etcd_endpoints", "etcd TLS files are set but an endpoint is http://: use https:// for every endpoint")
	}

	// etcd user authentication.
	switch {
	case (cl.EtcdUsername == "") != (cl.EtcdPasswordFile == ""):
		if cl.EtcdUsername == "" {
			errs.add("cluster.etcd_username", "required when cluster.etcd_password_file is set")
		} else {
			errs.add("cluster.etcd_password_file", "required when cluster.etcd_username is set")
		}
	case cl.EtcdUsername != "":
		if strings.ContainsFunc(cl.EtcdUsername, isSpaceOrControl) {
			errs.add("cluster.etcd_username", "%q contains white space or control characters", cl.EtcdUsername)
		}
		path := c.DataPath(cl.EtcdPasswordFile)
		if fi, err := os.Stat(path); err != nil {
			errs.add("cluster.etcd_password_file", "%v", err)
		} else if msg := secretProblem(path, fi); msg != "" {
			errs.add("cluster.etcd_password_file", "%s", msg)
		} else if fi.Size() == 0 {
			errs.add("cluster.etcd_password_file", "%s is empty", path)
		}
	}

	// Prefix and timings.
	switch p := cl.EtcdPrefix; {
	case !strings.HasPrefix(p, "/"):
		errs.add("cluster.etcd_prefix", "%q must start with /", p)
	case len(p) > 1 && strings.HasSuffix(p, "/"), p == "/":
		errs.add("cluster.etcd_prefix", "%q must not end with / (hermod adds it)", p)
	case strings.Contains(p, "//"):
		errs.add("cluster.etcd_prefix", "%q has an empty path segment (//)", p)
	case strings.ContainsFunc(p, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' || r > unicode.MaxASCII }):
		errs.add("cluster.etcd_prefix", "%q must be printable ASCII without spaces", p)
	}
	positiveD := func(key string, d time.Duration) {
		if d <= 0 {
			errs.add(key, "must be a positive duration, not %s", d)
		}
	}
	positiveD("cluster.etcd_dial_timeout", cl.EtcdDialTimeout)
	positiveD("cluster.etcd_request_timeout", cl.EtcdRequestTimeout)
	positiveD("cluster.heartbeat", cl.Heartbeat)
}

// parseBaseURL checks "http(s)://host:port" with no user, path (a lone "/"
// is not a path either, for endpoints), query or fragment. advertise also
// refuses a wildcard host.
func parseBaseURL(s string, advertise bool) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q must not hold a user name or password", u.Redacted())
	}
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || (u.Path != "" && (advertise || u.Path != "/")) {
		return nil, fmt.Errorf("%q must be scheme://host:port only, without a path, query or fragment", s)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return nil, fmt.Errorf("%q has no host", s)
	}
	if port == "" {
		return nil, fmt.Errorf("%q has no port (write it, e.g. %s://%s:%s)", s, u.Scheme, u.Host, map[bool]string{true: "8025", false: "2379"}[advertise])
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if advertise && ip.IsUnspecified() {
			return nil, fmt.Errorf("%q is a wildcard address: the other nodes need an address they can reach this node at", s)
		}
	} else if !isDomain(host, false) {
		return nil, fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
	}
	return u, nil
}

// sameHost reports whether two hosts (IP addresses or names) are written
// the same, after normalising IP addresses; a wildcard is no host.
func sameHost(a, b string) bool {
	ia, ea := netip.ParseAddr(a)
	ib, eb := netip.ParseAddr(b)
	if ea == nil && eb == nil {
		return !ia.IsUnspecified() && ia.Unmap() == ib.Unmap()
	}
	return a != "" && strings.EqualFold(a, b)
}

// secretProblem returns what is wrong with a secret file's type and mode, or "".
func secretProblem(path string, fi fs.FileInfo) string {
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file (mode %s)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("%s has mode %04o: a secret must be readable and writable by its owner only; run: chmod 600 %s", path, perm, path)
	}
	return ""
}

// ClusterSecrets lists the cluster's secret files (cluster.secret_file,
// cluster.etcd_key_file, cluster.etcd_password_file, resolved with
// DataPath) for the daemon's permission check at start; nil without a
// [cluster] section.
func (c *Config) ClusterSecrets() []fsperm.Secret {
	cl := c.Cluster
	if cl == nil {
		return nil
	}
	return []fsperm.Secret{
		{Path: c.DataPath(cl.SecretFile), What: "cluster.secret_file"},
		{Path: c.DataPath(cl.EtcdKeyFile), What: "cluster.etcd_key_file"},
		{Path: c.DataPath(cl.EtcdPasswordFile), What: "cluster.etcd_password_file"},
	}
}

// LoadSecret reads the cluster secret from cluster.secret_file (resolved
// with c.DataPath) and returns its bytes as they are in the file. The file
// must exist, be a regular file of hermod's user (or root) with mode 0600 or
// stricter, and hold at least MinClusterSecretLen bytes; the error says how
// to make one otherwise. Every node must hold the same file.
func (cl *Cluster) LoadSecret(c *Config) ([]byte, error) {
	if cl == nil || cl.SecretFile == "" {
		return nil, errors.New("config: cluster.secret_file is not set")
	}
	path := c.DataPath(cl.SecretFile)
	return loadPrivate(path, "cluster.secret_file", MinClusterSecretLen)
}

// EtcdPassword reads the etcd password from cluster.etcd_password_file
// (resolved with c.DataPath), without a final newline. The file is checked
// as LoadSecret checks its file. It returns "" and no error when no
// password file is set.
func (cl *Cluster) EtcdPassword(c *Config) (string, error) {
	if cl == nil || cl.EtcdPasswordFile == "" {
		return "", nil
	}
	b, err := loadPrivate(c.DataPath(cl.EtcdPasswordFile), "cluster.etcd_password_file", 1)
	if err != nil {
		return "", err
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("config: cluster.etcd_password_file %s holds only a newline", c.DataPath(cl.EtcdPasswordFile))
	}
	return pw, nil
}

// loadPrivate reads a secret file after fsperm's check (owner and mode),
// refusing a missing file or one shorter than minLen bytes.
func loadPrivate(path, key string, minLen int) ([]byte, error) {
	hint := ""
	if key == "cluster.secret_file" {
		hint = "; " + makeSecretHint(path)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("config: %s %s does not exist%s", key, path, hint)
	}
	if err := fsperm.Check(nil, []fsperm.Secret{{Path: path, What: key}}); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", key, err)
	}
	if len(b) < minLen {
		return nil, fmt.Errorf("config: %s %s holds %d bytes, need at least %d%s", key, path, len(b), minLen, hint)
	}
	return b, nil
}
