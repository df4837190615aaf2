package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// clusterSection is node n-th of a three-node example, as config.example.toml
// documents it, with files in dir.
func clusterSection(node, advertise string) string {
	return `
[cluster]
node_id = "` + node + `"
etcd_endpoints = ["https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://[fd00::13]:2379"]
advertise = "` + advertise + `"
secret_file = "cluster.key"
etcd_ca_file = "etcd-ca.pem"
etcd_cert_file = "etcd-` + node + `.pem"
etcd_key_file = "etcd-` + node + `-key.pem"
etcd_username = "hermod"
etcd_password_file = "etcd.password"
`
}

// clusterDir makes a data_dir holding the files of clusterSection for nodes
// n1, n2, n3.
func clusterDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("cluster.key", strings.Repeat("k", 32), 0o600)
	write("etcd.password", "s3cret\n", 0o600)
	for _, n := range []string{"n1", "n2", "n3"} {
		cert, key := testnet.WriteCert(t, dir, "etcd-"+n, n+".example.test")
		if os.Rename(cert, filepath.Join(dir, "etcd-"+n+".pem")) != nil || os.Rename(key, filepath.Join(dir, "etcd-"+n+"-key.pem")) != nil {
			t.Fatal("rename certificate files")
		}
	}
	ca, _ := testnet.WriteCert(t, dir, "ca", "ca.example.test")
	if err := os.Rename(ca, filepath.Join(dir, "etcd-ca.pem")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func parseCluster(t *testing.T, dir, section string) (*Config, error) {
	t.Helper()
	return Parse([]byte("data_dir = \""+dir+"\"\n"+minimal+section), "test.toml")
}

func TestNoClusterSection(t *testing.T) {
	c := mustParse(t, minimal)
	if c.Clustered() || c.Cluster != nil || c.Node() != "" || c.ClusterSecrets() != nil {
		t.Errorf("a configuration without [cluster] is clustered: %+v", c.Cluster)
	}
	ex, err := Load("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if ex.Clustered() {
		t.Errorf("config.example.toml (the embedded default) is clustered: %+v", ex.Cluster)
	}
	if _, err := c.Cluster.LoadSecret(c); err == nil {
		t.Error("LoadSecret without [cluster] gave no error")
	}
}

// TestThreeNodeClusterValidates: three nodes' sections (the example's shape,
// every key set) validate and keep what they say, with the defaults filled in.
func TestThreeNodeClusterValidates(t *testing.T) {
	dir := clusterDir(t)
	for i, n := range []string{"n1", "n2", "n3"} {
		adv := "http://10.0.0." + string(rune('1'+i)) + ":8025"
		c, err := parseCluster(t, dir, clusterSection(n, adv))
		if err != nil {
			t.Fatalf("node %s: %v", n, err)
		}
		cl := c.Cluster
		if !c.Clustered() || string(c.Node()) != n || cl.Advertise != adv || len(cl.EtcdEndpoints) != 3 {
			t.Errorf("node %s: %+v", n, cl)
		}
		if cl.EtcdPrefix != "/hermod" || cl.EtcdDialTimeout != 5*time.Second || cl.EtcdRequestTimeout != 5*time.Second || cl.Heartbeat != 5*time.Second {
			t.Errorf("node %s: defaults not applied: %+v", n, cl)
		}
		secret, err := cl.LoadSecret(c)
		if err != nil || string(secret) != strings.Repeat("k", 32) {
			t.Errorf("node %s: LoadSecret = %q, %v", n, secret, err)
		}
		if pw, err := cl.EtcdPassword(c); err != nil || pw != "s3cret" {
			t.Errorf("node %s: EtcdPassword = %q, %v", n, pw, err)
		}
		var whats []string
		for _, s := range c.ClusterSecrets() {
			whats = append(whats, s.What+"="+s.Path)
		}
		if want := "cluster.secret_file=" + filepath.Join(dir, "cluster.key") + ",cluster.etcd_key_file=" + filepath.Join(dir, "etcd-"+n+"-key.pem") + ",cluster.etcd_password_file=" + filepath.Join(dir, "etcd.password"); strings.Join(whats, ",") != want {
			t.Errorf("ClusterSecrets = %v, want %s", whats, want)
		}
	}
	// The smallest section: plain http, no TLS, no user; explicit timings.
	c, err := parseCluster(t, dir, `
[cluster]
node_id = "a"
etcd_endpoints = ["http://127.0.0.1:2379"]
advertise = "http://127.0.0.1:8025"
secret_file = "`+filepath.Join(dir, "cluster.key")+`"
etcd_prefix = "/mail/hermod-2"
etcd_dial_timeout = "2s"
etcd_request_timeout = "3s"
heartbeat = "1s"
`)
	if err != nil {
		t.Fatal(err)
	}
	if cl := c.Cluster; cl.EtcdPrefix != "/mail/hermod-2" || cl.EtcdDialTimeout != 2*time.Second || cl.EtcdRequestTimeout != 3*time.Second || cl.Heartbeat != time.Second {
		t.Errorf("explicit values lost: %+v", cl)
	}
}

// TestLoadResolvesClusterFilesFromTheFile: a relative data_dir is taken from
// the configuration file's directory before the cluster files are checked.
func TestLoadResolvesClusterFilesFromTheFile(t *testing.T) {
	dir := clusterDir(t)
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "cluster.key"), filepath.Join(dir, "data", "cluster.key")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "hermod.toml")
	text := "data_dir = \"data\"\n" + minimal + "[cluster]\nnode_id = \"n1\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nadvertise = \"http://127.0.0.1:8025\"\nsecret_file = \"cluster.key\"\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load from another directory: %v", err)
	}
	if _, err := c.Cluster.LoadSecret(c); err != nil {
		t.Errorf("LoadSecret: %v", err)
	}
}

func TestClusterBadValues(t *testing.T) {
	dir := clusterDir(t)
	good := map[string]string{
		"node_id":            `"n1"`,
		"etcd_endpoints":     `["https://10.0.0.11:2379"]`,
		"advertise":          `"http://10.0.0.1:8025"`,
		"secret_file":        `"cluster.key"`,
		"etcd_ca_file":       `"etcd-ca.pem"`,
		"etcd_cert_file":     `"etcd-n1.pem"`,
		"etcd_key_file":      `"etcd-n1-key.pem"`,
		"etcd_username":      `"hermod"`,
		"etcd_password_file": `"etcd.password"`,
	}
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return name
	}
	write("short.key", strings.Repeat("k", 31), 0o600)
	write("open.key", strings.Repeat("k", 32), 0o644)
	os.Chmod(filepath.Join(dir, "open.key"), 0o644) // past the umask
	write("group.key", strings.Repeat("k", 64), 0o640)
	os.Chmod(filepath.Join(dir, "group.key"), 0o640)
	write("notpem.pem", "not a certificate\n", 0o600)
	write("empty.password", "", 0o600)
	write("open.password", "pw\n", 0o600)
	os.Chmod(filepath.Join(dir, "open.password"), 0o604)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, otherKey := testnet.WriteCert(t, dir, "other", "other.example.test")

	for _, tc := range []struct {
		name string
		set  map[string]string // keys replaced ("" removes the key)
		key  string            // the key the error must name
		msg  string
	}{
		{"node_id missing", map[string]string{"node_id": ""}, "cluster.node_id", "required"},
		{"node_id empty", map[string]string{"node_id": `""`}, "cluster.node_id", "required"},
		{"node_id upper", map[string]string{"node_id": `"N1"`}, "cluster.node_id", "must start with a letter"},
		{"node_id digit first", map[string]string{"node_id": `"1n"`}, "cluster.node_id", "must start with a letter"},
		{"node_id too long", map[string]string{"node_id": `"abcdefghi"`}, "cluster.node_id", "at most 8"},
		{"node_id dash", map[string]string{"node_id": `"n-1"`}, "cluster.node_id", "not a-z or 0-9"},
		{"node_id underscore", map[string]string{"node_id": `"n_1"`}, "cluster.node_id", "not a-z or 0-9"},
		{"node_id wrong type", map[string]string{"node_id": `1`}, "cluster.node_id", "wrong type"},

		{"endpoints missing", map[string]string{"etcd_endpoints": ""}, "cluster.etcd_endpoints", "required"},
		{"endpoints empty", map[string]string{"etcd_endpoints": `[]`}, "cluster.etcd_endpoints", "required"},
		{"endpoint no scheme", map[string]string{"etcd_endpoints": `["10.0.0.11:2379"]`}, "cluster.etcd_endpoints[0]", "http"},
		{"endpoint grpc", map[string]string{"etcd_endpoints": `["https://10.0.0.11:2379", "unix://10.0.0.12:2379"]`}, "cluster.etcd_endpoints[1]", "not an http:// or https:// URL"},
		{"endpoint no port", map[string]string{"etcd_endpoints": `["https://10.0.0.11"]`}, "cluster.etcd_endpoints[0]", "no port"},
		{"endpoint port 0", map[string]string{"etcd_endpoints": `["https://10.0.0.11:0"]`}, "cluster.etcd_endpoints[0]", "port"},
		{"endpoint port 65536", map[string]string{"etcd_endpoints": `["https://10.0.0.11:65536"]`}, "cluster.etcd_endpoints[0]", "port"},
		{"endpoint no host", map[string]string{"etcd_endpoints": `["https://:2379"]`}, "cluster.etcd_endpoints[0]", "no host"},
		{"endpoint path", map[string]string{"etcd_endpoints": `["https://10.0.0.11:2379/v3"]`}, "cluster.etcd_endpoints[0]", "without a path"},
		{"endpoint query", map[string]string{"etcd_endpoints": `["https://10.0.0.11:2379?x=1"]`}, "cluster.etcd_endpoints[0]", "without a path"},
		{"endpoint user", map[string]string{"etcd_endpoints": `["https://u:p@10.0.0.11:2379"]`}, "cluster.etcd_endpoints[0]", "user name"},
		{"endpoint bad host", map[string]string{"etcd_endpoints": `["https://etcd_1:2379"]`}, "cluster.etcd_endpoints[0]", "neither an IP address nor a host name"},
		{"endpoint twice", map[string]string{"etcd_endpoints": `["https://etcd1.example:2379", "https://ETCD1.example:2379"]`}, "cluster.etcd_endpoints[1]", "twice"},
		{"endpoint http with tls", map[string]string{"etcd_endpoints": `["http://10.0.0.11:2379"]`}, "cluster.etcd_endpoints", "use https://"},

		{"advertise missing", map[string]string{"advertise": ""}, "cluster.advertise", "required"},
		{"advertise no scheme", map[string]string{"advertise": `"10.0.0.1:8025"`}, "cluster.advertise", "http"},
		{"advertise ftp", map[string]string{"advertise": `"ftp://10.0.0.1:8025"`}, "cluster.advertise", "http:// or https://"},
		{"advertise no port", map[string]string{"advertise": `"http://10.0.0.1"`}, "cluster.advertise", "no port"},
		{"advertise path", map[string]string{"advertise": `"http://10.0.0.1:8025/api"`}, "cluster.advertise", "without a path"},
		{"advertise slash", map[string]string{"advertise": `"http://10.0.0.1:8025/"`}, "cluster.advertise", "without a path"},
		{"advertise fragment", map[string]string{"advertise": `"http://10.0.0.1:8025#x"`}, "cluster.advertise", "without a path"},
		{"advertise 0.0.0.0", map[string]string{"advertise": `"http://0.0.0.0:8025"`}, "cluster.advertise", "wildcard"},
		{"advertise ::", map[string]string{"advertise": `"http://[::]:8025"`}, "cluster.advertise", "wildcard"},
		{"advertise user", map[string]string{"advertise": `"http://u@10.0.0.1:8025"`}, "cluster.advertise", "user name"},
		{"advertise api host other port", map[string]string{"advertise": `"http://127.0.0.1:9025"`}, "cluster.advertise", "not api.listen's 8025"},

		{"secret missing", map[string]string{"secret_file": ""}, "cluster.secret_file", "head -c 32 /dev/urandom"},
		{"secret absent", map[string]string{"secret_file": `"nope.key"`}, "cluster.secret_file", "does not exist; make one with: head -c 32 /dev/urandom > " + filepath.Join(dir, "nope.key") + " && chmod 600"},
		{"secret short", map[string]string{"secret_file": `"short.key"`}, "cluster.secret_file", "31 bytes, need at least 32"},
		{"secret world-readable", map[string]string{"secret_file": `"open.key"`}, "cluster.secret_file", "chmod 600"},
		{"secret group-readable", map[string]string{"secret_file": `"group.key"`}, "cluster.secret_file", "mode 0640"},
		{"secret a directory", map[string]string{"secret_file": `"adir"`}, "cluster.secret_file", "not a regular file"},

		{"ca absent", map[string]string{"etcd_ca_file": `"nope.pem"`}, "cluster.etcd_ca_file", "no such file"},
		{"ca not pem", map[string]string{"etcd_ca_file": `"notpem.pem"`}, "cluster.etcd_ca_file", "no PEM certificate"},
		{"cert without key", map[string]string{"etcd_key_file": ""}, "cluster.etcd_key_file", "required when cluster.etcd_cert_file"},
		{"key without cert", map[string]string{"etcd_cert_file": ""}, "cluster.etcd_cert_file", "required when cluster.etcd_key_file"},
		{"cert absent", map[string]string{"etcd_cert_file": `"nope.pem"`}, "cluster.etcd_cert_file", "no such file"},
		{"key absent", map[string]string{"etcd_key_file": `"nope.pem"`}, "cluster.etcd_key_file", "no such file"},
		{"key of another cert", map[string]string{"etcd_key_file": `"` + otherKey + `"`}, "cluster.etcd_cert_file", "not a certificate and its key"},

		{"user without password", map[string]string{"etcd_password_file": ""}, "cluster.etcd_password_file", "required when cluster.etcd_username"},
		{"password without user", map[string]string{"etcd_username": ""}, "cluster.etcd_username", "required when cluster.etcd_password_file"},
		{"user with space", map[string]string{"etcd_username": `"her mod"`}, "cluster.etcd_username", "white space"},
		{"password absent", map[string]string{"etcd_password_file": `"nope"`}, "cluster.etcd_password_file", "no such file"},
		{"password empty", map[string]string{"etcd_password_file": `"empty.password"`}, "cluster.etcd_password_file", "empty"},
		{"password readable by others", map[string]string{"etcd_password_file": `"open.password"`}, "cluster.etcd_password_file", "chmod 600"},

		{"prefix relative", map[string]string{"etcd_prefix": `"hermod"`}, "cluster.etcd_prefix", "must start with /"},
		{"prefix trailing slash", map[string]string{"etcd_prefix": `"/hermod/"`}, "cluster.etcd_prefix", "must not end with /"},
		{"prefix root", map[string]string{"etcd_prefix": `"/"`}, "cluster.etcd_prefix", "must not end with /"},
		{"prefix empty segment", map[string]string{"etcd_prefix": `"/a//b"`}, "cluster.etcd_prefix", "//"},
		{"prefix control", map[string]string{"etcd_prefix": `"/her\tmod"`}, "cluster.etcd_prefix", "printable"},
		{"prefix space", map[string]string{"etcd_prefix": `"/her mod"`}, "cluster.etcd_prefix", "printable"},
		{"prefix non-ASCII", map[string]string{"etcd_prefix": `"/hérmod"`}, "cluster.etcd_prefix", "printable"},

		{"dial timeout negative", map[string]string{"etcd_dial_timeout": `"-1s"`}, "cluster.etcd_dial_timeout", "positive"},
		{"dial timeout no unit", map[string]string{"etcd_dial_timeout": `"5"`}, "cluster.etcd_dial_timeout", "duration"},
		{"request timeout negative", map[string]string{"etcd_request_timeout": `"-5s"`}, "cluster.etcd_request_timeout", "positive"},
		{"heartbeat negative", map[string]string{"heartbeat": `"-1ms"`}, "cluster.heartbeat", "positive"},
		{"heartbeat wrong type", map[string]string{"heartbeat": `true`}, "cluster.heartbeat", "wrong type"},
		{"unknown key", map[string]string{"node": `"n1"`}, "cluster.node", "unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := map[string]string{}
			for k, v := range good {
				keys[k] = v
			}
			for k, v := range tc.set {
				keys[k] = v
			}
			var b strings.Builder
			b.WriteString("\n[cluster]\n")
			for _, k := range []string{"node_id", "etcd_endpoints", "advertise", "secret_file", "etcd_ca_file", "etcd_cert_file", "etcd_key_file", "etcd_username", "etcd_password_file", "etcd_prefix", "etcd_dial_timeout", "etcd_request_timeout", "heartbeat", "node"} {
				if v := keys[k]; v != "" {
					b.WriteString(k + " = " + v + "\n")
				}
			}
			_, err := parseCluster(t, dir, b.String())
			if err == nil {
				t.Fatalf("section\n%s\nvalidates, want an error for %s", b.String(), tc.key)
			}
			errs := asErrors(err)
			e := findKey(errs, tc.key)
			if e == nil {
				t.Fatalf("got %v, want an error for %s", err, tc.key)
			}
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("%s: %q does not contain %q", tc.key, e.Msg, tc.msg)
			}
			if len(errs) != 1 {
				t.Errorf("got %d errors, want only %s: %v", len(errs), tc.key, err)
			}
			if e.Line == 0 && tc.set[strings.TrimPrefix(tc.key, "cluster.")] != "" {
				t.Errorf("error for %s has no line: %+v", tc.key, e)
			}
		})
	}
}

// TestAdvertiseAgainstAPIListen: the port is checked only where advertise
// names api.listen's own host.
func TestAdvertiseAgainstAPIListen(t *testing.T) {
	dir := clusterDir(t)
	section := func(listen, advertise string) string {
		return "\n[cluster]\nnode_id = \"n1\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nadvertise = \"" + advertise + "\"\nsecret_file = \"cluster.key\"\n"
	}
	for _, tc := range []struct {
		listen, advertise string
		ok                bool
	}{
		{"127.0.0.1:8025", "http://127.0.0.1:8025", true},
		{"127.0.0.1:8025", "http://127.0.0.1:8026", false},
		{"[::1]:8025", "http://[::1]:9000", false},
		{"[::1]:8025", "http://[0:0:0:0:0:0:0:1]:9000", false},
		{"127.0.0.1:8025", "https://hermod-n1.example.test:443", true}, // a proxy in front
		{"0.0.0.0:8025", "http://10.0.0.1:8025", true},
		{"0.0.0.0:8025", "http://10.0.0.1:18025", true}, // a NAT may map it: not decidable
		{"127.0.0.1:0", "http://127.0.0.1:8026", true},  // port chosen at start (tests)
	} {
		text := "data_dir = \"" + dir + "\"\n" + strings.Replace(minimal, `listen = "127.0.0.1:8025"`, `listen = "`+tc.listen+`"`, 1) + section(tc.listen, tc.advertise)
		_, err := Parse([]byte(text), "test.toml")
		if tc.ok && err != nil {
			t.Errorf("api.listen %s, advertise %s: %v", tc.listen, tc.advertise, err)
		}
		if !tc.ok && (err == nil || findKey(asErrors(err), "cluster.advertise") == nil) {
			t.Errorf("api.listen %s, advertise %s: got %v, want an error for cluster.advertise", tc.listen, tc.advertise, err)
		}
	}
}

func TestLoadSecretRefuses(t *testing.T) {
	dir := clusterDir(t)
	c, err := parseCluster(t, dir, clusterSection("n1", "http://10.0.0.1:8025"))
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "cluster.key")
	// What can change between config check and start is checked again.
	os.Chmod(key, 0o644)
	if _, err := c.Cluster.LoadSecret(c); err == nil || !strings.Contains(err.Error(), "chmod 600 "+key) || !strings.Contains(err.Error(), "cluster.secret_file") {
		t.Errorf("LoadSecret of a 0644 file: %v", err)
	}
	os.Chmod(key, 0o600)
	os.WriteFile(key, []byte("short"), 0o600)
	if _, err := c.Cluster.LoadSecret(c); err == nil || !strings.Contains(err.Error(), "head -c 32 /dev/urandom > "+key+" && chmod 600 "+key) {
		t.Errorf("LoadSecret of a 5-byte file: %v", err)
	}
	os.Remove(key)
	if _, err := c.Cluster.LoadSecret(c); err == nil || !strings.Contains(err.Error(), "does not exist") || !errors.Is(err, err) {
		t.Errorf("LoadSecret of a missing file: %v", err)
	}
	pw := filepath.Join(dir, "etcd.password")
	os.WriteFile(pw, []byte("\n"), 0o600)
	if _, err := c.Cluster.EtcdPassword(c); err == nil {
		t.Error("EtcdPassword of a file holding only a newline gave no error")
	}
	os.Chmod(pw, 0o640)
	if _, err := c.Cluster.EtcdPassword(c); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("EtcdPassword of a 0640 file: %v", err)
	}
}

// TestExampleClusterBlock: the commented [cluster] block of
// config.example.toml, uncommented, is a valid node 1 of its three-node
// example (given its files), and `config check` (Load) reports its errors.
func TestExampleClusterBlock(t *testing.T) {
	data, err := os.ReadFile("../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "\n# [cluster]\n")
	if i < 0 {
		t.Fatal("config.example.toml has no commented [cluster] block")
	}
	var block strings.Builder
	keyLine := regexp.MustCompile(`^# ([a-z_]+ = .*|\[cluster\])$`)
	for _, l := range strings.Split(text[i:], "\n") {
		if keyLine.MatchString(l) {
			block.WriteString(strings.TrimPrefix(l, "# ") + "\n")
		}
	}
	dir := clusterDir(t)
	c, err := Parse([]byte(strings.Replace(text, `data_dir = "./hermod-data"`, `data_dir = "`+dir+`"`, 1)+"\n"+block.String()), "example.toml")
	if err != nil {
		t.Fatalf("the example's [cluster] block:\n%s\ndoes not validate: %v", block.String(), err)
	}
	if cl := c.Cluster; cl == nil || cl.NodeID != "n1" || len(cl.EtcdEndpoints) != 3 || cl.EtcdUsername != "hermod" || cl.Heartbeat != 5*time.Second {
		t.Errorf("example block read as %+v", c.Cluster)
	}
	if err := os.Remove(filepath.Join(dir, "cluster.key")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hermod.toml")
	os.WriteFile(path, []byte(strings.Replace(text, `data_dir = "./hermod-data"`, `data_dir = "`+dir+`"`, 1)+"\n"+block.String()), 0o600)
	_, err = Load(path)
	if e := findKey(asErrors(err), "cluster.secret_file"); e == nil || e.Line == 0 || !strings.Contains(e.Error(), "does not exist") {
		t.Errorf("Load with the secret missing: %v", err)
	}
}
