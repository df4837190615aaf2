package daemon

import (
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hermod-mta/hermod/metrics"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/relay"
)

// observeAttempt logs each delivery attempt and counts it.
func observeAttempt(log *slog.Logger, m *metrics.Metrics) func(queue.Delivery, queue.Result, time.Duration) {
	logLine := logAttempt(log)
	return func(dl queue.Delivery, res queue.Result, took time.Duration) {
		logLine(dl, res, took)
		m.Deliveries.WithLabelValues(string(res.Status)).Inc()
		m.DeliverySeconds.Observe(took.Seconds())
	}
}

// observeEvents counts committed events (queue.Options.OnCommit): counted
// once per committed event, never for a write that rolled back or ran again.
func observeEvents(m *metrics.Metrics) func([]queue.Event) {
	return func(evs []queue.Event) {
		for _, ev := range evs {
			if ev.Status == queue.StatusBounced {
				m.Bounces.WithLabelValues(ev.Reason, ev.Source).Inc()
			}
		}
	}
}

func dnsObserver(m *metrics.Metrics) func(string, time.Duration, error) {
	return func(qtype string, took time.Duration, err error) {
		kind := ""
		if err != nil {
			kind = "error"
			var de *relay.DNSError
			if errors.As(err, &de) {
				kind = de.Kind
			}
		}
		m.ObserveDNS(qtype, took, kind)
	}
}

// registerClusterGauges adds the metrics of a cluster node.
func (d *Daemon) registerClusterGauges() {
	c := d.cluster
	single := func(v float64) map[string]float64 { return map[string]float64{"": v} }
	d.Metrics.RegisterFuncs(
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_control_revision", "The etcd revision of the control data this node has applied."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 { return single(float64(c.kv.Revision())) }},
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_control_reloads_total", "Full loads of the control data from an etcd snapshot (start, compaction)."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 { return single(float64(c.kv.Reloads())) }},
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_control_stale", "1 while this node's copy of the control data is not followed from etcd."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				if _, stale := c.kv.Stale(); stale {
					return single(1)
				}
				return single(0)
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_bounce_forwards_pending", "Bounces for other nodes' messages kept until their owner applies them."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 { return single(float64(c.forwards.Pending())) }},
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_suppressions_pending", "Suppressions from this node's bounces that etcd has not taken yet (this node applies them meanwhile)."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 { return single(float64(d.pending.size())) }},
		metrics.Func{Desc: metrics.NewDesc("hermod_cluster_bounce_forwards_total", "Bounces forwarded to, and applied by, their owner node."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 { return single(float64(c.forwards.Forwarded())) }},
	)
}

// registerGauges adds the metrics read from the current state at scrape time.
func (d *Daemon) registerGauges() {
	single := func(v float64) map[string]float64 { return map[string]float64{"": v} }
	d.Metrics.RegisterFuncs(
		metrics.Func{Desc: metrics.NewDesc("hermod_queue_recipients", "Recipients in the store by status.", "status"),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				out := map[string]float64{}
				counts := d.Store.Counts()
				for _, s := range queue.Statuses {
					out[string(s)] = float64(counts[s])
				}
				return out
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_store_body_errors_total", "Stored bodies found damaged (size or checksum) before a delivery; each such delivery was deferred."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 {
				return single(float64(d.Store.BodyErrors()))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_store_writable", "1 while the store accepts writes, 0 after a failed commit (deliveries paused)."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				if d.Store.Writable() {
					return single(1)
				}
				return single(0)
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_store_commits_total", "Store write transactions committed (each one fsync)."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 {
				txs, _ := d.Store.Commits()
				return single(float64(txs))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_store_commit_writes_total", "Writes carried by the store transactions."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 {
				_, w := d.Store.Commits()
				return single(float64(w))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_relay_connections_opened_total", "Outbound SMTP connections opened."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 {
				return single(float64(d.Relay.Stats().ConnectionsOpened))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_relay_connections_reused_total", "Deliveries that reused an open connection."),
			Type: prometheus.CounterValue, Collect: func() map[string]float64 {
				return single(float64(d.Relay.Stats().ConnectionsReused))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_relay_connections_open", "Outbound connections open, by destination.", "destination"),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				out := map[string]float64{}
				for dest, n := range d.Relay.Stats().Open {
					out[dest] = float64(n)
				}
				return out
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_deliveries_in_progress", "Deliveries in progress."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				return single(float64(d.Runner.InFlight()))
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_webhook_outbox_depth", "Events waiting to be posted, by webhook endpoint.", "endpoint"),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				depth, err := d.Webhooks.Depth()
				if err != nil {
					return nil
				}
				out := map[string]float64{}
				for ep, n := range depth {
					out[ep] = float64(n)
				}
				return out
			}},
		metrics.Func{Desc: metrics.NewDesc("hermod_suppressions", "Addresses on the suppression list."),
			Type: prometheus.GaugeValue, Collect: func() map[string]float64 {
				n, err := d.Suppress.Count()
				if err != nil {
					return nil
				}
				return single(float64(n))
			}},
	)
}
