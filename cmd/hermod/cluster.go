package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/nodes"
)

func (c *cli) clusterCmd(args []string) error {
	if len(args) == 0 {
		return usageError("usage: hermod cluster status [-json] | import -from DATA_DIR | forget NODE")
	}
	switch args[0] {
	case "status":
		return c.clusterStatus(args[1:])
	case "import":
		return c.clusterImport(args[1:])
	case "forget":
		return c.clusterForget(args[1:])
	}
	return usageError("unknown cluster command %q: status, import or forget", args[0])
}

// clusterConfig loads a configuration that must have a [cluster] section.
func clusterConfig(path string) (*config.Config, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if !cfg.Clustered() {
		return nil, usageError("%s has no [cluster] section: this is a single node", configName(cfg))
	}
	return cfg, nil
}

func configName(cfg *config.Config) string {
	if cfg.Path == "" {
		return "the built-in example configuration"
	}
	return cfg.Path
}

// MemberStatus is one etcd member as `hermod cluster status` shows it.
type MemberStatus struct {
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Leader   bool   `json:"leader"`
	Version  string `json:"version,omitempty"`
	DBSize   int64  `json:"db_size,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ClusterStatus is the answer of `hermod cluster status -json`.
type ClusterStatus struct {
	Prefix   string         `json:"prefix"`
	Revision int64          `json:"revision"`
	Members  []MemberStatus `json:"members"`
	Nodes    []NodeStatus   `json:"nodes"`
	// Background is the node that holds the background lease.
	Background string `json:"background"`
}

// NodeStatus is one hermod node with what is stale about it.
type NodeStatus struct {
	nodes.Node
	// Behind is how many etcd revisions the node's copy of the control
	// data is behind the cluster's (as of its last heartbeat).
	Behind int64    `json:"behind"`
	Stale  []string `json:"stale,omitempty"`
}

func (c *cli) clusterStatus(args []string) error {
	fs, path := c.flags("cluster status")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := clusterConfig(*path)
	if err != nil {
		return err
	}
	cli, err := daemon.EtcdClient(cfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	st, err := readClusterStatus(cfg, cli)
	if err != nil {
		// etcd does not answer: say so, and what this node has.
		return c.nodeOnlyStatus(*path, *asJSON, err)
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "etcd (prefix %s, revision %d)\n", st.Prefix, st.Revision)
	fmt.Fprintln(tw, "MEMBER\tENDPOINT\tHEALTH\tLEADER\tVERSION\tDB SIZE")
	for _, m := range st.Members {
		health := "ok"
		if !m.Healthy {
			health = "DOWN: " + m.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%d\n", m.Name, m.Endpoint, health, m.Leader, m.Version, m.DBSize)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tADVERTISE\tSTATE\tUP SINCE\tSPOOL\tLAST HEARTBEAT\tREVISION\tSTALE")
	for _, n := range st.Nodes {
		state := "up"
		if !n.Alive {
			state = "DOWN"
		}
		stale := "-"
		if len(n.Stale) > 0 {
			stale = strings.Join(n.Stale, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", n.ID, n.Advertise, state, n.Started.Format(time.RFC3339),
			n.SpoolDepth, n.Heartbeat.Format(time.RFC3339), n.Revision, stale)
	}
	bg := st.Background
	if bg == "" {
		bg = "none (no node holds it)"
	}
	fmt.Fprintf(tw, "\nbackground work (domain checks, purge): %s\n", bg)
	return tw.Flush()
}

func readClusterStatus(cfg *config.Config, cli *clientv3.Client) (*ClusterStatus, error) {
	cl := cfg.Cluster
	ctx, cancel := context.WithTimeout(context.Background(), cl.EtcdDialTimeout+cl.EtcdRequestTimeout)
	defer cancel()
	st := &ClusterStatus{Prefix: cl.EtcdPrefix}
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s does not answer: %w", strings.Join(cl.EtcdEndpoints, ", "), err)
	}
	for _, m := range ml.Members {
		ms := MemberStatus{Name: m.Name}
		if len(m.ClientURLs) > 0 {
			ms.Endpoint = m.ClientURLs[0]
		}
		mctx, mcancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := cli.Status(mctx, ms.Endpoint)
		mcancel()
		if err != nil {
			ms.Error = err.Error()
		} else {
			ms.Healthy, ms.Version, ms.DBSize, ms.Leader = true, s.Version, s.DbSize, s.Leader == m.ID
		}
		st.Members = append(st.Members, ms)
	}
	reg := nodes.NewRegistry(cli, nodes.RegistryOptions{Prefix: cl.EtcdPrefix})
	if st.Revision, err = reg.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("read the node registry: %w", err)
	}
	// The revision of the control data itself: its last change.
	last, err := cli.Get(ctx, cl.EtcdPrefix+"/c/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var controlRev int64
	if len(last.Kvs) > 0 {
		controlRev = last.Kvs[0].ModRevision
	}
	now := time.Now()
	for _, n := range reg.Nodes() {
		ns := NodeStatus{Node: n}
		if n.Revision < controlRev {
			ns.Behind = controlRev - n.Revision
		}
		if !n.Alive {
			ns.Stale = append(ns.Stale, "down since "+n.Heartbeat.Format(time.RFC3339))
		} else if age := now.Sub(n.Heartbeat); age > 3*cl.Heartbeat {
			ns.Stale = append(ns.Stale, fmt.Sprintf("last heartbeat %s ago", age.Round(time.Second)))
		}
		if !n.StaleSince.IsZero() {
			ns.Stale = append(ns.Stale, "control data not followed since "+n.StaleSince.Format(time.RFC3339))
		}
		if ns.Behind > 0 {
			ns.Stale = append(ns.Stale, fmt.Sprintf("control data %d revisions behind", ns.Behind))
		}
		st.Nodes = append(st.Nodes, ns)
	}
	if st.Background, err = nodes.Leader(ctx, cli, cl.EtcdPrefix); err != nil {
		return nil, err
	}
	return st, nil
}

// nodeOnlyStatus prints the local node's own view when etcd does not
// answer, and returns the etcd error (exit status 1).
func (c *cli) nodeOnlyStatus(path string, asJSON bool, etcdErr error) error {
	client, err := c.client(path)
	if err != nil {
		return fmt.Errorf("%w; and this node's API: %v", etcdErr, err)
	}
	var v daemon.NodeView
	if err := client.Do(context.Background(), "GET", "/v1/cluster/node", nil, nil, &v); err != nil {
		return fmt.Errorf("%w; and this node's API: %v", etcdErr, err)
	}
	if asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"etcd_error": etcdErr.Error(), "node": v}); err != nil {
			return err
		}
		return etcdErr
	}
	fmt.Fprintf(c.stdout, "etcd does not answer: %v\n", etcdErr)
	fmt.Fprintf(c.stdout, "node %s serves from its copy of the control data at revision %d", v.Node, v.Revision)
	if !v.StaleSince.IsZero() {
		fmt.Fprintf(c.stdout, ", stale since %s (%s ago)", v.StaleSince.Format(time.RFC3339), time.Since(v.StaleSince).Round(time.Second))
	}
	fmt.Fprintf(c.stdout, "; %d bounce forwards waiting\n", v.ForwardsPending)
	fmt.Fprintln(c.stdout, "nodes as last known:")
	for _, n := range v.Nodes {
		fmt.Fprintf(c.stdout, "  %s %s last heartbeat %s, spool %d\n", n.ID, n.Advertise, n.Heartbeat.Format(time.RFC3339), n.SpoolDepth)
	}
	return etcdErr
}

// clusterForget removes a node that is gone for good from the registry, so
// that lists stop naming it as not answering. A live node is refused.
func (c *cli) clusterForget(args []string) error {
	fs, path := c.flags("cluster forget")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("usage: hermod cluster forget NODE [-config FILE]")
	}
	cfg, err := clusterConfig(*path)
	if err != nil {
		return err
	}
	cli, err := daemon.EtcdClient(cfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Cluster.EtcdDialTimeout+cfg.Cluster.EtcdRequestTimeout)
	defer cancel()
	pfx, id := cfg.Cluster.EtcdPrefix, pos[0]
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(pfx+"/alive/"+id), "=", 0)).
		Then(clientv3.OpDelete(pfx + "/nodes/" + id)).Commit()
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("node %s is alive: stop it first (its mail must be delivered or moved before it goes)", id)
	}
	if n := resp.Responses[0].GetResponseDeleteRange().Deleted; n == 0 {
		return fmt.Errorf("no node %s in the registry under %s", id, pfx)
	}
	fmt.Fprintf(c.stdout, "node %s forgotten; bounces for its mail that other nodes keep are dropped after a week\n", id)
	return nil
}

// importBatch bounds the keys written in one etcd transaction.
const importBatch = 50

// clusterImport copies a single node's control data into the cluster.
func (c *cli) clusterImport(args []string) error {
	fs, path := c.flags("cluster import")
	from := fs.String("from", "", "data_dir of the single node whose accounts, domains, keys and suppressions to import (hermod there must be stopped)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" {
		return usageError("usage: hermod cluster import -from DATA_DIR [-config FILE]")
	}
	cfg, err := clusterConfig(*path)
	if err != nil {
		return err
	}
	src, err := bbolt.Open(filepath.Join(*from, daemon.StoreFile), 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return fmt.Errorf("%s is in use: stop the hermod that runs on it first", *from)
		}
		return fmt.Errorf("open %s: %w", *from, err)
	}
	defer src.Close()
	items, err := importItems(src, cfg.Cluster.NodeID)
	if err != nil {
		return err
	}
	secret, err := cfg.Cluster.LoadSecret(cfg)
	if err != nil {
		return err
	}
	cli, err := daemon.EtcdClient(cfg)
	if err != nil {
		return err
	}
	defer cli.Close()
	tmp, err := os.MkdirTemp("", "hermod-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	kv, err := daemon.OpenClusterKV(cfg, cli, secret, filepath.Join(tmp, "replica.db"), nil)
	if err != nil {
		return err
	}
	defer kv.Close()
	// First every conflict, before anything is written.
	var conflicts []string
	var todo []importItem
	err = kv.View(func(tx control.Tx) error {
		for _, it := range items {
			have := tx.Bucket(it.bucket).Get(it.key)
			switch {
			case have == nil:
				todo = append(todo, it)
			case !bytes.Equal(have, it.value):
				conflicts = append(conflicts, fmt.Sprintf("%s %s: the cluster already has a different value", it.bucket, printableKey(it.key)))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(conflicts) > 0 {
		sort.Strings(conflicts)
		for _, cf := range conflicts {
			fmt.Fprintln(c.stdout, "conflict:", cf)
		}
		return fmt.Errorf("%d conflicts with the cluster's data under %s: nothing imported (resolve them, e.g. remove the entry from one side, and run again)",
			len(conflicts), cfg.Cluster.EtcdPrefix)
	}
	written := len(todo)
	for len(todo) > 0 {
		n := min(importBatch, len(todo))
		batch := todo[:n]
		err := kv.Update(func(tx control.Tx) error {
			for _, it := range batch {
				b := tx.Bucket(it.bucket)
				if have := b.Get(it.key); have != nil {
					if !bytes.Equal(have, it.value) {
						return fmt.Errorf("%s %s changed in the cluster during the import", it.bucket, printableKey(it.key))
					}
					continue
				}
				if err := b.Put(it.key, it.value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		todo = todo[n:]
	}
	counts := map[string]int{}
	for _, it := range items {
		counts[it.bucket]++
	}
	fmt.Fprintf(c.stdout, "imported from %s into %s: %d accounts, %d domains, %d keys, %d suppressions; %d entries written, %d already there\n",
		*from, cfg.Cluster.EtcdPrefix, counts["account"], counts["domain"], counts["domainkeys"], counts["suppress"], written, len(items)-written)
	return nil
}

type importItem struct {
	bucket string
	key    []byte
	value  []byte
}

// importItems reads every control bucket of a single node's store. The
// suppression list's cursor of the single node's spool ("spool") becomes
// this node's ("spool@NODE"): the spool comes along, and its events must
// not be applied twice. The cluster bucket and the registrations counter
// are the cluster's own.
func importItems(src *bbolt.DB, node string) ([]importItem, error) {
	var items []importItem
	err := src.View(func(tx *bbolt.Tx) error {
		for _, spec := range control.Buckets {
			if spec.Name == "cluster" || spec.Name == "domain.claims" {
				continue // the cluster's own; a counter, not data
			}
			b := tx.Bucket([]byte(spec.Name))
			if b == nil {
				continue
			}
			err := b.ForEach(func(k, v []byte) error {
				key := bytes.Clone(k)
				if spec.Name == "suppress-cursors" {
					if string(k) != "spool" {
						return nil
					}
					key = []byte("spool@" + node)
				}
				items = append(items, importItem{spec.Name, key, bytes.Clone(v)})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the single node's control data: %w", err)
	}
	return items, nil
}

// printableKey shows a key with NUL separators as "/".
func printableKey(k []byte) string { return strings.ReplaceAll(string(k), "\x00", "/") }
