// Package metrics defines hermod's Prometheus metrics. The daemon creates
// one Metrics, feeds it from hooks in smtpd, submit, queue and relay, and
// registers gauges that read the current state at scrape time.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the collectors hermod updates as it works.
type Metrics struct {
	Registry *prometheus.Registry

	// Submissions counts DATA outcomes by result ("accepted", "rejected", "error").
	Submissions *prometheus.CounterVec
	// SubmissionSeconds is the time from the end of DATA to the 250 (the commit).
	SubmissionSeconds prometheus.Histogram
	// Deliveries counts delivery attempts by resulting status.
	Deliveries *prometheus.CounterVec
	// DeliverySeconds is the duration of one delivery attempt.
	DeliverySeconds prometheus.Histogram
	// Bounces counts recipients that bounced, by reason and source (relay, dsn, expiry).
	Bounces *prometheus.CounterVec
	// CommitBatch is the number of writes sharing one bbolt transaction.
	CommitBatch prometheus.Histogram
	// DNSSeconds and DNSErrors describe lookups that reached the servers.
	DNSSeconds *prometheus.HistogramVec
	DNSErrors  *prometheus.CounterVec
	// DKIMSignatures counts signatures made.
	DKIMSignatures prometheus.Counter
}

// New returns the metrics, registered on a fresh registry together with the
// Go runtime and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Submissions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hermod_submissions_total",
			Help: "Messages submitted over SMTP, by result (accepted, rejected, error)."}, []string{"result"}),
		SubmissionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hermod_submission_duration_seconds",
			Help:    "Time from the end of DATA to the reply, including the durable commit.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5}}),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hermod_deliveries_total",
			Help: "Delivery attempts by resulting status (sent, deferred, bounced, suppressed)."}, []string{"status"}),
		DeliverySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hermod_delivery_duration_seconds",
			Help: "Duration of one delivery attempt.", Buckets: prometheus.ExponentialBuckets(.001, 2.5, 12)}),
		Bounces: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hermod_bounces_total",
			Help: "Recipients that bounced, by reason and source."}, []string{"reason", "source"}),
		CommitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hermod_store_commit_batch_size",
			Help: "Writes sharing one store transaction (one fsync).", Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}}),
		DNSSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hermod_dns_lookup_duration_seconds",
			Help: "DNS exchanges with the resolvers, by query type.", Buckets: prometheus.ExponentialBuckets(.0005, 3, 9)}, []string{"type"}),
		DNSErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hermod_dns_errors_total",
			Help: "DNS exchanges that failed, by query type and kind (nxdomain, nodata, servfail, timeout)."}, []string{"type", "kind"}),
		DKIMSignatures: prometheus.NewCounter(prometheus.CounterOpts{Name: "hermod_dkim_signatures_total",
			Help: "DKIM signatures made."}),
	}
	r.MustRegister(m.Submissions, m.SubmissionSeconds, m.Deliveries, m.DeliverySeconds, m.Bounces, m.CommitBatch,
		m.DNSSeconds, m.DNSErrors, m.DKIMSignatures,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveDNS records one DNS exchange; kind is "" on success.
func (m *Metrics) ObserveDNS(qtype string, took time.Duration, kind string) {
	m.DNSSeconds.WithLabelValues(qtype).Observe(took.Seconds())
	if kind != "" {
		m.DNSErrors.WithLabelValues(qtype, kind).Inc()
	}
}

// Func is a metric whose value is read at scrape time.
type Func struct {
	Desc *prometheus.Desc
	Type prometheus.ValueType
	// Collect returns one value per label set (a nil key for no labels).
	Collect func() map[string]float64
}

// funcCollector adapts Funcs to prometheus.Collector.
type funcCollector []Func

func (fs funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range fs {
		ch <- f.Desc
	}
}

func (fs funcCollector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range fs {
		for label, v := range f.Collect() {
			if label == "" {
				ch <- prometheus.MustNewConstMetric(f.Desc, f.Type, v)
			} else {
				ch <- prometheus.MustNewConstMetric(f.Desc, f.Type, v, label)
			}
		}
	}
}

// RegisterFuncs registers metrics read at scrape time. A Func whose Desc
// has one variable label gets one sample per map key; one without labels
// reads the "" key.
func (m *Metrics) RegisterFuncs(fs ...Func) {
	m.Registry.MustRegister(funcCollector(fs))
}

// NewDesc is a shorthand for prometheus.NewDesc with at most one label.
func NewDesc(name, help string, label ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, label, nil)
}
