package daemon

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/cluster"
	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/nodes"
	"github.com/hermod-mta/hermod/queue"
)

// ReplicaFile is the local copy of a cluster's control data in data_dir.
const ReplicaFile = "control.db"

// clusterNode is what a node of a cluster has beyond a single node: the
// etcd client, the control data's replica, the registry entry, the
// election for background work, and the bounces kept for other nodes.
type clusterNode struct {
	node     string
	cli      *clientv3.Client
	kv       *cluster.KV
	reg      *nodes.Registry
	auth     *nodes.Auth
	bg       *nodes.Background
	forwards *forwarder
	client   *http.Client
}

// EtcdClient returns the etcd client configuration of cfg's [cluster]
// section (endpoints, TLS, user), for hermod and its cluster commands.
func EtcdClient(cfg *config.Config) (*clientv3.Client, error) {
	cl := cfg.Cluster
	cc := clientv3.Config{Endpoints: cl.EtcdEndpoints, DialTimeout: cl.EtcdDialTimeout, Logger: zap.NewNop(),
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second}
	if cl.EtcdCAFile != "" || cl.EtcdCertFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cl.EtcdCAFile != "" {
			pem, err := os.ReadFile(cfg.DataPath(cl.EtcdCAFile))
			if err != nil {
				return nil, fmt.Errorf("cluster.etcd_ca_file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster.etcd_ca_file %s: no PEM certificate in it", cl.EtcdCAFile)
			}
		}
		if cl.EtcdCertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.DataPath(cl.EtcdCertFile), cfg.DataPath(cl.EtcdKeyFile))
			if err != nil {
				return nil, fmt.Errorf("cluster.etcd_cert_file / etcd_key_file: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cc.TLS = tc
	}
	if cl.EtcdUsername != "" {
		pw, err := cl.EtcdPassword(cfg)
		if err != nil {
			return nil, err
		}
		cc.Username, cc.Password = cl.EtcdUsername, pw
	}
	cli, err := clientv3.New(cc)
	if errors.Is(err, rpctypes.ErrAuthFailed) {
		return nil, fmt.Errorf("cluster.etcd_username / cluster.etcd_password_file: etcd refused them (%w): check the user and the password in the file", err)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster.etcd_endpoints: %w", err)
	}
	return cli, nil
}

// openCluster connects to etcd and opens the replica of the control data.
// It refuses to start when the shared secrets differ from the cluster's.
func (d *Daemon) openCluster(verpSecret []byte) (*clusterNode, error) {
	cfg := d.cfg
	cl := cfg.Cluster
	secret, err := cl.LoadSecret(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := EtcdClient(cfg)
	if err != nil {
		return nil, err
	}
	c := &clusterNode{node: cl.NodeID, cli: cli, auth: nodes.NewAuth(secret, cl.NodeID, d.now),
		client: &http.Client{Timeout: 15 * time.Second}}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	if c.kv, err = OpenClusterKV(cfg, cli, secret, filepath.Join(cfg.DataDir, ReplicaFile), d.log); err != nil {
		return nil, err
	}
	if err := checkFingerprints(c.kv, secret, verpSecret); err != nil {
		return nil, err
	}
	c.reg = nodes.NewRegistry(cli, nodes.RegistryOptions{Prefix: cl.EtcdPrefix,
		Self:      nodes.Info{ID: cl.NodeID, Advertise: cl.Advertise},
		Heartbeat: cl.Heartbeat, LeaseFile: filepath.Join(cfg.DataDir, "cluster.lease"), Logger: d.log, Now: d.now,
		Stats: func() (int64, int64, time.Time) {
			counts := d.Store.Counts()
			return counts[queue.StatusQueued] + counts[queue.StatusDeferred], c.kv.Revision(), c.staleSince(d.now())
		}})
	c.bg = nodes.NewBackground(cli, cl.EtcdPrefix, cl.NodeID, 3*cl.Heartbeat, d.log)
	if c.forwards, err = newForwarder(d.Store.DB(), c.reg, c.auth, c.client, d.log, d.now); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// OpenClusterKV opens the control data of cfg's cluster with its replica
// at replicaPath, sealing keys with the cluster secret: for hermod and for
// `hermod cluster import`, which must read and write it alike.
func OpenClusterKV(cfg *config.Config, cli *clientv3.Client, secret []byte, replicaPath string, log *slog.Logger) (*cluster.KV, error) {
	cl := cfg.Cluster
	sealer, err := cluster.NewSealer(secret)
	if err != nil {
		return nil, fmt.Errorf("cluster.secret_file: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cl.EtcdDialTimeout+cl.EtcdRequestTimeout)
	defer cancel()
	kv, err := cluster.OpenKV(ctx, cli, cluster.KVOptions{Prefix: cl.EtcdPrefix, ReplicaPath: replicaPath,
		Seal: sealer, Logger: log, RequestTimeout: cl.EtcdRequestTimeout})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return kv, nil
}

// nodeOf is the node that owns message id ("" for a single node's id).
func nodeOf(id string) string { return string(queue.IDNode(id)) }

// owns reports whether node self owns message id. On a single node (self
// "") every id is its own; on a cluster, ids without a node (queued
// before the node joined) are too.
func owns(self, id string) bool {
	if self == "" {
		return true
	}
	n := nodeOf(id)
	return n == "" || n == self
}

// fingerprint is what the cluster keeps of its shared secrets: HMACs that
// tell whether two nodes hold the same secret without revealing it.
type fingerprint struct {
	Cluster string `json:"cluster_secret"`
	VERP    string `json:"verp_secret"`
}

const fingerprintKey = "fingerprint"

// checkFingerprints compares this node's secrets with the cluster's,
// recording them when this is the cluster's first node. With etcd down it
// compares with the replica's copy.
func checkFingerprints(kv control.Store, secret, verpSecret []byte) error {
	mine := fingerprint{
		Cluster: hex.EncodeToString(nodes.Derive(secret, "hermod-cluster-fingerprint-v1")),
		VERP:    hex.EncodeToString(nodes.Derive(secret, "hermod-verp-fingerprint-v1|"+string(verpSecret))),
	}
	compare := func(tx control.Tx) (found bool, err error) {
		v := tx.Bucket("cluster").Get([]byte(fingerprintKey))
		if v == nil {
			return false, nil
		}
		var theirs fingerprint
		if err := json.Unmarshal(v, &theirs); err != nil {
			return true, fmt.Errorf("cluster: the cluster's secret fingerprint is unreadable: %w", err)
		}
		if !hmac.Equal([]byte(theirs.Cluster), []byte(mine.Cluster)) {
			return true, errors.New("cluster.secret_file differs from the cluster's (set by its first node): copy the same file to every node")
		}
		if !hmac.Equal([]byte(theirs.VERP), []byte(mine.VERP)) {
			return true, errors.New("bounce.verp_secret_file differs from the cluster's: every node must hold the same VERP secret (copy the file from a running node), or bounces for one node's mail are refused by the others")
		}
		return true, nil
	}
	err := kv.Update(func(tx control.Tx) error {
		found, err := compare(tx)
		if err != nil || found {
			return err
		}
		data, _ := json.Marshal(mine)
		return tx.Bucket("cluster").Put([]byte(fingerprintKey), data)
	})
	if errors.Is(err, control.ErrUnavailable) {
		return kv.View(func(tx control.Tx) error {
			_, err := compare(tx)
			return err
		})
	}
	return err
}

// start joins the registry (refusing a node id another live node holds)
// and starts the cluster's background loops.
func (c *clusterNode) start(ctx context.Context, d *Daemon, background func(context.Context)) error {
	jctx, cancel := context.WithTimeout(ctx, d.cfg.Cluster.EtcdRequestTimeout)
	err := c.reg.Join(jctx)
	cancel()
	switch {
	case errors.Is(err, nodes.ErrNodeIDInUse):
		return err
	case err != nil:
		d.log.Warn("cluster: etcd does not answer; joining the registry later, serving from the last copy of the control data", "err", err)
	}
	d.goRun("cluster-registry", func() { c.reg.Run(ctx) })
	d.goRun("cluster-background", func() { c.bg.Run(ctx, background) })
	d.goRun("cluster-forwards", func() { c.forwards.Run(ctx) })
	return nil
}

// staleSince is when this node's copy of the control data stopped being
// followed from etcd (now if it never was), zero while it is followed.
func (c *clusterNode) staleSince(now time.Time) time.Time {
	since, stale := c.kv.Stale()
	switch {
	case !stale:
		return time.Time{}
	case since.IsZero():
		return now
	}
	return since
}

func (c *clusterNode) close() {
	if c.kv != nil {
		_ = c.kv.Close()
	}
	if c.cli != nil {
		_ = c.cli.Close()
	}
}

// clusterAPI implements api.Cluster with the registry and signed requests.
type clusterAPI struct {
	c   *clusterNode
	log interface {
		Warn(msg string, args ...any)
	}
}

func (a clusterAPI) Node() string { return a.c.node }

func (a clusterAPI) Local(id string) bool { return owns(a.c.node, id) }

// maxPeerAnswer bounds what is read of another node's answer.
const maxPeerAnswer = 32 << 20

func (a clusterAPI) Forward(w http.ResponseWriter, r *http.Request, id string) {
	owner := nodeOf(id)
	n, ok := a.c.reg.Lookup(owner)
	if !ok {
		api.WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("message %s names node %s, which is not in this cluster's registry", id, owner))
		return
	}
	if !n.Alive {
		api.WriteError(w, http.StatusServiceUnavailable, "node_unavailable",
			fmt.Sprintf("node %s (%s), which owns message %s, is down (last heartbeat %s); its mail waits in its spool: try again when it is back",
				owner, n.Advertise, id, n.Heartbeat.Format(time.RFC3339)))
		return
	}
	status, body, err := a.c.ask(r.Context(), r.Method, n, r.URL.RequestURI())
	if err != nil {
		api.WriteError(w, http.StatusServiceUnavailable, "node_unavailable",
			fmt.Sprintf("node %s (%s), which owns message %s, does not answer: %v", owner, n.Advertise, id, err))
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// ask sends one signed request without a body to node n.
func (c *clusterNode) ask(ctx context.Context, method string, n nodes.Node, uri string) (int, []byte, error) {
	return askNode(ctx, c.client, c.auth, method, n.Advertise+uri, nil, 10*time.Second)
}

// askNode sends one request signed with auth (body nil for none) within
// timeout and returns the status and the answer (at most maxPeerAnswer).
func askNode(ctx context.Context, client *http.Client, auth *nodes.Auth, method, url string, body []byte, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	auth.Sign(req, body)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxPeerAnswer))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, answer, nil
}

func (a clusterAPI) Gather(ctx context.Context, r *http.Request, rewrite func(node string, q url.Values)) (map[string][]byte, []string) {
	answers := map[string][]byte{}
	var missing []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range a.c.reg.Nodes() {
		if n.ID == a.c.node {
			continue
		}
		if !n.Alive {
			missing = append(missing, n.ID)
			continue
		}
		q := r.URL.Query()
		if rewrite != nil {
			rewrite(n.ID, q)
		}
		uri := r.URL.Path
		if len(q) > 0 {
			uri += "?" + q.Encode()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, err := a.c.ask(ctx, r.Method, n, uri)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || status != http.StatusOK {
				a.log.Warn("cluster: a node did not answer", "node", n.ID, "status", status, "err", err,
					"answer", string(bytes.TrimSpace(body[:min(len(body), 200)])))
				missing = append(missing, n.ID)
				return
			}
			answers[n.ID] = body
		}()
	}
	wg.Wait()
	return answers, missing
}

// NodeView is a node's own view of the cluster, answered at
// GET /v1/cluster/node even while etcd cannot be reached: what `hermod
// cluster status` shows when etcd does not answer.
type NodeView struct {
	Node string `json:"node"`
	// Revision is the control-data revision the node's copy has applied;
	// StaleSince is set while the copy is not followed from etcd.
	Revision        int64        `json:"control_revision"`
	StaleSince      time.Time    `json:"stale_since,omitzero"`
	Reloads         int64        `json:"reloads"`
	ForwardsPending int          `json:"bounce_forwards_pending"`
	Nodes           []nodes.Node `json:"nodes"` // as last known from the registry
}

func (d *Daemon) nodeViewHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := d.cluster
		v := NodeView{Node: c.node, Revision: c.kv.Revision(), Reloads: c.kv.Reloads(),
			ForwardsPending: c.forwards.Pending(), Nodes: c.reg.Nodes()}
		v.StaleSince = c.staleSince(d.now())
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_ = json.NewEncoder(w).Encode(v)
	})
}
