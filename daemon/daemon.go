// Package daemon assembles hermod from its configuration: the store, the
// submission and bounce listeners, the delivery runner, domain verification
// and the API, and runs them until shutdown. cmd/hermod only parses flags and
// signals; everything a test needs lives here.
package daemon

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/control"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/mailbox"
	"github.com/hermod-mta/hermod/metrics"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/relay"
	"github.com/hermod-mta/hermod/sender"
	"github.com/hermod-mta/hermod/smtpd"
	"github.com/hermod-mta/hermod/submit"
	"github.com/hermod-mta/hermod/suppress"
	"github.com/hermod-mta/hermod/verp"
	"github.com/hermod-mta/hermod/webhook"
)

// StoreFile is the bbolt file inside data_dir.
const StoreFile = "hermod.db"

// Daemon is a running hermod.
type Daemon struct {
	cfg *config.Config
	log *slog.Logger

	Store *queue.Store
	// Control holds accounts, domains, keys and suppressions: buckets of
	// the store's file on one node, etcd on a cluster.
	Control  control.Store
	Suppress *suppress.List
	Domains  *domain.Store
	Relay    *relay.Relay
	Runner   *queue.Runner
	Pipeline *submit.Pipeline
	Webhooks *webhook.Outbox
	Submit   *smtpd.Server
	Bounces  *smtpd.BounceServer
	VERP     *verp.Codec
	// suppressFollower and webhookFollower feed committed events to the
	// suppression list and the webhook outbox.
	suppressFollower *queue.Follower
	webhookFollower  *queue.Follower
	// PlatformSigner signs mail from the platform identity.
	PlatformSigner *dkim.Signer

	// Metrics are served at /metrics on the API listener.
	Metrics *metrics.Metrics

	platformKeys *platformKeys // platform DKIM key rollover (rotate.go)

	// cluster is nil on a single node (no [cluster] section).
	cluster *clusterNode
	intake  *bounceIntake
	pending *pendingSuppressions // suppressions the list could not take yet
	now     func() time.Time

	token     string // the API bearer token
	apiSrv    *http.Server
	listeners map[string]net.Listener

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Options are test and benchmark hooks; zero values are right for production.
type Options struct {
	// RelayDialer replaces the outbound dialer.
	RelayDialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now replaces the clock.
	Now func() time.Time
	// NoSync turns off fsync (CPU benchmarks only).
	NoSync bool
}

// New opens the store and builds every part from cfg. Nothing listens yet.
func New(cfg *config.Config, log *slog.Logger, o Options) (_ *Daemon, err error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := checkPermissions(cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir %s: %w", cfg.DataDir, err)
	}
	d := &Daemon{cfg: cfg, log: log, listeners: map[string]net.Listener{}, Metrics: metrics.New(), now: o.Now}
	m := d.Metrics
	defer func() {
		if err != nil {
			d.closeStore()
		}
	}()
	// Every secret exists before anything listens: a client that sees the
	// API port open may read the token file at once.
	if d.token, err = LoadOrCreateToken(cfg.DataPath(cfg.API.TokenFile)); err != nil {
		return nil, fmt.Errorf("api.token_file: %w", err)
	}

	secret, err := verp.LoadOrCreateSecret(cfg.DataPath(cfg.Bounce.VERPSecretFile))
	if err != nil {
		return nil, fmt.Errorf("bounce.verp_secret_file: %w", err)
	}
	if d.VERP, err = verp.New(secret); err != nil {
		return nil, fmt.Errorf("bounce.verp_secret_file: %w", err)
	}
	alg, err := dkim.ParseAlgorithm(cfg.Sender.DKIMAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("sender.dkim_algorithm: %w", err)
	}
	key, created, err := dkim.LoadOrCreateKey(cfg.DataPath(cfg.Sender.DKIMKeyFile), alg)
	if err != nil {
		return nil, fmt.Errorf("sender.dkim_key_file: %w", err)
	}
	if created {
		log.Info("generated platform DKIM key; publish its record (hermod dkim show)", "file", cfg.DataPath(cfg.Sender.DKIMKeyFile))
	}
	selector, keyFile, _, err := PlatformKey(cfg)
	if err != nil {
		return nil, err
	}
	if keyFile != cfg.DataPath(cfg.Sender.DKIMKeyFile) { // a completed rollover signs
		pemKey, err := os.ReadFile(keyFile)
		if err == nil {
			key, err = dkim.ParseKey(pemKey)
		}
		if err != nil {
			return nil, fmt.Errorf("dkim rollover key %s: %w", keyFile, err)
		}
	}
	d.PlatformSigner = dkim.NewSigner(cfg.Sender.DKIMDomain, selector, key)

	d.Store, err = queue.Open(filepath.Join(cfg.DataDir, StoreFile), queue.Options{Now: o.Now, Logger: log,
		OnCommit: observeEvents(m), NoSync: o.NoSync, Reserve: cfg.Queue.Reserve})
	if err != nil {
		return nil, err
	}
	d.pending = newPendingSuppressions(cfg.Suppress.Scope)
	if d.Control, err = d.openControl(secret); err != nil {
		return nil, err
	}
	d.Suppress, err = suppress.Open(d.Control, suppress.Options{Scope: cfg.Suppress.Scope,
		SoftBounceLimit: cfg.Suppress.SoftBounceLimit, ExpireAfter: cfg.Suppress.ExpireAfter, Now: o.Now})
	if err != nil {
		return nil, fmt.Errorf("open suppression list: %w", err)
	}
	endpoints, err := webhookEndpoints(cfg)
	if err != nil {
		return nil, err
	}
	d.Webhooks, err = webhook.Open(d.Store.DB(), webhook.Options{Endpoints: endpoints, Now: o.Now, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	// What follows a status change is derived from the committed event log,
	// each consumer recording its own progress with its own effects.
	if d.suppressFollower, err = queue.NewFollower(d.Store, "suppression", &suppressionConsumer{list: d.Suppress, name: d.consumerName(), pending: d.pending}); err != nil {
		return nil, fmt.Errorf("open suppression list: %w", err)
	}
	if d.webhookFollower, err = queue.NewFollower(d.Store, "webhooks", d.Webhooks); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}

	d.Relay, err = relay.New(relay.Options{
		Hostname: cfg.Relay.HELO, Resolvers: cfg.Relay.Resolvers, Port: cfg.Relay.Port, Routes: routes(cfg),
		// The runner schedules (relay.concurrency in all, relay.per_destination
		// per recipient domain); the relay's own caps equal them, so they
		// never make a delivery wait while holding a slot.
		Concurrency: cfg.Relay.Concurrency, PerDestination: cfg.Relay.PerDestination,
		MXAddressLimit: cfg.Relay.MXAddressLimit, MXSessionLimit: cfg.Relay.MXSessionLimit,
		AttemptTimeout: cfg.Relay.AttemptTimeout, OwnNames: []string{cfg.Hostname},
		ConnectTimeout: cfg.Relay.ConnectTimeout, CommandTimeout: cfg.Relay.CommandTimeout, DataTimeout: cfg.Relay.DataTimeout,
		Dialer: o.RelayDialer, Logger: log, Now: o.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	d.Relay.Resolver().SetObserver(dnsObserver(m))
	rule := &sender.Rule{DefaultFrom: cfg.Sender.DefaultFrom, DisplayTemplate: cfg.Sender.DisplayName,
		BounceDomain: cfg.Bounce.Domain, ReturnPathLabel: cfg.Sender.ReturnPathLabel}
	if err := rule.Validate(); err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	notifier := &ownerMail{hostname: cfg.Hostname, from: cfg.Sender.DefaultFrom, log: log}
	resolver, err := relay.NewResolver(cfg.Relay.Resolvers, o.Now)
	if err != nil {
		return nil, fmt.Errorf("relay.resolvers: %w", err)
	}
	resolver.SetObserver(dnsObserver(m))
	d.platformKeys = &platformKeys{cfg: cfg, signer: d.PlatformSigner, resolver: resolver,
		grace: cfg.Relay.MaxAge + 24*time.Hour, now: o.Now, log: log}
	d.Domains, err = domain.Open(d.Control, domain.Options{
		ReturnPathLabel: cfg.Sender.ReturnPathLabel, BounceHost: cfg.Bounce.Domain, Algorithm: cfg.Sender.DKIMAlgorithm,
		VerifyTimeout: cfg.Sender.VerifyTimeout, FreemailExtra: cfg.Sender.FreemailExtra, PlatformDomains: platformDomains(cfg),
		Resolver: resolver, Notifier: notifier, Now: o.Now, Logger: log,
		// Mail signed with the old key may wait in the queue up to max_age,
		// then be verified on arrival: the old record stays a day longer.
		RotationGrace: cfg.Relay.MaxAge + 24*time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("open domains: %w", err)
	}
	d.Pipeline = submit.New(submit.Options{
		Hostname: cfg.Hostname, Rule: rule, PlatformSigner: d.PlatformSigner, VERP: d.VERP,
		Accounts: accountsView{d.Domains}, Suppressions: suppressionsView{d.Suppress, d.pending}, Queue: d.Store,
		Now: o.Now, Logger: log, OnSign: m.DKIMSignatures.Inc, Node: cfg.Node(),
	})
	notifier.pipeline = d.Pipeline
	d.Runner = queue.NewRunner(d.Store, &deliverer{relay: d.Relay, suppress: d.Suppress, pending: d.pending}, queue.RunnerOptions{
		Concurrency: cfg.Relay.Concurrency, PerDestination: cfg.Relay.PerDestination,
		Retry: cfg.Relay.Retry, MaxAge: cfg.Relay.MaxAge, Jitter: 0.1, DelayWarning: cfg.Relay.DelayWarning,
		OnAttempt: observeAttempt(log, m),
	})
	tlsConf, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	d.Submit = smtpd.New(smtpd.Options{
		Hostname: cfg.Hostname, Users: users(cfg), MaxMessageBytes: cfg.Submission.MaxMessageBytes,
		MaxRecipients: cfg.Submission.MaxRecipients, IdleTimeout: cfg.Submission.IdleTimeout,
		MaxConnections: cfg.Submission.MaxConnections, MaxConnectionsPerIP: cfg.Submission.MaxConnectionsPerIP,
		AuthTimeout: cfg.Submission.AuthTimeout, MaxCommandsBeforeAuth: cfg.Submission.MaxCommandsBeforeAuth,
		MaxUnauthenticated: cfg.Submission.MaxUnauthenticated, DataTimeout: cfg.Submission.DataTimeout,
		MaxHeaderBytes: cfg.Submission.MaxHeaderBytes, MaxHeaderFields: cfg.Submission.MaxHeaderFields,
		TLSConfig: tlsConf, Submitter: d.Pipeline, Logger: log, Now: o.Now,
		Observe: func(result string, took time.Duration) {
			m.Submissions.WithLabelValues(result).Inc()
			if result == "accepted" {
				m.SubmissionSeconds.Observe(took.Seconds())
			}
		},
	})
	mb, err := mailbox.New(mailbox.Options{Dir: filepath.Join(cfg.DataDir, "mailbox"), MaxMessageBytes: cfg.Bounce.MaxMessageBytes,
		MaxTotalBytes: cfg.Bounce.Mailbox.MaxBytes, MaxFiles: cfg.Bounce.Mailbox.MaxFiles, RateBytes: cfg.Bounce.Mailbox.RateBytes,
		MinFree: mailboxMinFree(cfg), Now: o.Now, Logger: log})
	if err != nil {
		return nil, err
	}
	d.intake = &bounceIntake{store: d.Store, applied: d.suppressFollower, log: log}
	if d.cluster != nil {
		d.intake.self, d.intake.forwards = d.cluster.node, d.cluster.forwards
	}
	d.Bounces = smtpd.NewBounceServer(smtpd.BounceOptions{
		Hostname: cfg.Hostname, BounceDomain: cfg.Bounce.Domain, ReturnPathLabel: cfg.Sender.ReturnPathLabel,
		MaxMessageBytes: cfg.Bounce.MaxMessageBytes, MaxConnectionsPerIP: cfg.Bounce.MaxConnectionsPerIP,
		MaxConcurrentData: cfg.Bounce.MaxConcurrentData, MaxRcptFailures: cfg.Bounce.MaxRcptFailures,
		MaxRcptFailuresPerIP: cfg.Bounce.MaxRcptFailuresPerIP, Mailbox: mb,
		IdleTimeout: cfg.Submission.IdleTimeout, VERP: d.VERP, Intake: d.intake,
		Logger: log, Now: o.Now,
	})
	d.Store.ObserveBatches(func(n int) { m.CommitBatch.Observe(float64(n)) })
	d.registerGauges()
	if d.cluster != nil {
		d.registerClusterGauges()
	}
	return d, nil
}

// suppressionPurgeEvery is how often expired suppressions are deleted.
const suppressionPurgeEvery = time.Hour

// background is the work that runs on one node at a time: on a single node
// always, on a cluster on the node elected for it (nodes.Background) until
// ctx ends. Domain verification sends the owner's notices, so two nodes
// doing it would send them twice.
func (d *Daemon) background(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.Domains.Run(ctx)
	}()
	t := time.NewTicker(suppressionPurgeEvery)
	defer t.Stop()
	for {
		if n, err := d.Suppress.PurgeExpired(); err != nil {
			d.log.Warn("suppression list: purge expired entries", "err", err)
		} else if n > 0 {
			d.log.Info("suppression list: expired entries deleted", "count", n)
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
	}
}

// consumerName is the suppression list's cursor of this node's spool.
func (d *Daemon) consumerName() string {
	if d.cfg.Clustered() {
		return consumerName + "@" + d.cfg.Cluster.NodeID
	}
	return consumerName
}

// openControl opens the control data: on one node, buckets of the spool's
// own bbolt file; on a cluster, the replica of etcd's.
func (d *Daemon) openControl(verpSecret []byte) (control.Store, error) {
	if d.cfg.Clustered() {
		var err error
		if d.cluster, err = d.openCluster(verpSecret); err != nil {
			return nil, err
		}
		return d.cluster.kv, nil
	}
	cs, err := control.OpenBolt(d.Store.DB())
	if err != nil {
		return nil, fmt.Errorf("open control data: %w", err)
	}
	return cs, nil
}

// mailboxMinFree is the free space the postmaster@/abuse@ mailbox leaves on
// the file system of data_dir: twice the spool's reserve, so that mail for a
// person stops well before the spool has to refuse the application's mail.
func mailboxMinFree(cfg *config.Config) uint64 { return 2 * uint64(cfg.Queue.Reserve) }

// Start binds every listener (so that errors such as a port in use surface
// here) and starts serving and the background loops.
func (d *Daemon) Start() error {
	cfg := d.cfg
	binds := []struct{ key, addr string }{
		{"submission.listen", cfg.Submission.Listen}, {"submission.listen_tls", cfg.Submission.ListenTLS},
		{"bounce.listen", cfg.Bounce.Listen}, {"api.listen", cfg.API.Listen},
	}
	for _, b := range binds {
		if b.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", b.addr)
		if err != nil {
			d.closeListeners()
			return fmt.Errorf("%s: %w", b.key, err)
		}
		d.listeners[b.key] = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	apiHTTP := api.HTTPOptions{ReadTimeout: cfg.API.ReadTimeout, WriteTimeout: cfg.API.WriteTimeout, IdleTimeout: cfg.API.IdleTimeout,
		MaxWait: cfg.API.MaxWait, MaxConnections: cfg.API.MaxConnections, MaxConnectionsPerIP: cfg.API.MaxConnectionsPerIP}
	apiOpts := api.Options{Token: d.token, Queue: d.Store, Domains: d.Domains,
		Suppress: d.Suppress, Mount: d.extraHandlers(), Logger: d.log, MaxWait: cfg.API.MaxWait, MaxLongPolls: cfg.API.MaxLongPolls}
	if d.cluster != nil {
		apiOpts.Peers, apiOpts.Cluster = d.cluster.auth, clusterAPI{c: d.cluster, log: d.log}
	}
	d.apiSrv = api.NewHTTPServer(api.New(apiOpts), apiHTTP)

	d.goRun("runner", func() { d.Runner.Run(ctx) })
	d.goRun("purge", func() { d.Store.RunPurge(ctx, cfg.Queue.Retention, cfg.Queue.PurgeInterval) })
	if d.cluster == nil {
		d.goRun("background", func() { d.background(ctx) })
	} else if err := d.cluster.start(ctx, d, d.background); err != nil {
		cancel()
		d.closeListeners()
		return err
	}
	d.goRun("dkim-rotation", func() { d.platformKeys.run(ctx) })
	d.goRun("webhooks", func() { d.Webhooks.Run(ctx) })
	d.goRun("suppression-follower", func() { d.suppressFollower.Run(ctx) })
	d.goRun("webhook-follower", func() { d.webhookFollower.Run(ctx) })
	if l := d.listeners["submission.listen"]; l != nil {
		d.goRun("submission", func() { d.serveErr("submission", d.Submit.Serve(l, false)) })
	}
	if l := d.listeners["submission.listen_tls"]; l != nil {
		d.goRun("submission-tls", func() { d.serveErr("submission-tls", d.Submit.Serve(l, true)) })
	}
	if l := d.listeners["bounce.listen"]; l != nil {
		d.goRun("bounce", func() { d.serveErr("bounce", d.Bounces.Serve(l)) })
	}
	if l := d.listeners["api.listen"]; l != nil {
		d.goRun("api", func() {
			if err := d.apiSrv.Serve(api.LimitListener(l, apiHTTP)); !errors.Is(err, http.ErrServerClosed) {
				d.serveErr("api", err)
			}
		})
	}
	d.log.Info("hermod started", "submission", addrOf(d.listeners["submission.listen"]),
		"bounce", addrOf(d.listeners["bounce.listen"]), "api", addrOf(d.listeners["api.listen"]), "config", cfg)
	return nil
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// Addr returns the bound address of a listener by its config key
// ("submission.listen", "bounce.listen", "api.listen"), "" if not listening.
func (d *Daemon) Addr(key string) string { return addrOf(d.listeners[key]) }

func (d *Daemon) goRun(name string, f func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

func (d *Daemon) serveErr(name string, err error) {
	if err != nil {
		d.log.Error("listener stopped", "listener", name, "err", err)
	}
}

// Shutdown stops accepting (new sessions get 421 or a refused connection),
// lets open sessions and deliveries finish until ctx ends, returns
// unfinished deliveries to the queue and closes the store.
func (d *Daemon) Shutdown(ctx context.Context) error {
	var errs []error
	if d.Submit != nil {
		errs = append(errs, d.Submit.Shutdown(ctx))
	}
	if d.Bounces != nil {
		errs = append(errs, d.Bounces.Shutdown(ctx))
	}
	if d.apiSrv != nil {
		if err := d.apiSrv.Shutdown(ctx); err != nil {
			d.apiSrv.Close()
		}
	}
	// Stop dispatching new deliveries; let those in progress finish until
	// ctx ends, then cut them short (they are recorded as deferred).
	if d.cancel != nil {
		d.cancel()
	}
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		if d.Runner != nil {
			d.Runner.Abort()
		}
	}
	<-done
	d.closeListeners()
	if d.Relay != nil {
		d.Relay.Close()
	}
	errs = append(errs, d.closeStore())
	return errors.Join(errs...)
}

func (d *Daemon) closeListeners() {
	for _, l := range d.listeners {
		l.Close()
	}
}

func (d *Daemon) closeStore() error {
	if d.cluster != nil {
		d.cluster.close()
		d.cluster = nil
	}
	if d.Store == nil {
		return nil
	}
	err := d.Store.Close()
	d.Store = nil
	return err
}

// webhookEndpoints reads the webhook secrets, generating absent ones.
func webhookEndpoints(cfg *config.Config) ([]webhook.Endpoint, error) {
	var eps []webhook.Endpoint
	for i, w := range cfg.Webhooks {
		secret, err := LoadOrCreateToken(cfg.DataPath(w.SecretFile))
		if err != nil {
			return nil, fmt.Errorf("webhook[%d].secret_file: %w", i, err)
		}
		eps = append(eps, webhook.Endpoint{Name: strconv.Itoa(i), URL: w.URL, Secret: []byte(secret), Events: w.Events})
	}
	return eps, nil
}

func routes(cfg *config.Config) []relay.Route {
	var rs []relay.Route
	for _, r := range cfg.Relay.Routes {
		rs = append(rs, relay.Route{Domain: r.Domain, Host: r.Host})
	}
	return rs
}

func users(cfg *config.Config) []smtpd.User {
	var us []smtpd.User
	for _, u := range cfg.Submission.Users {
		us = append(us, smtpd.User{Name: u.Name, PasswordHash: u.PasswordHash, Accounts: u.Accounts})
	}
	return us
}

func loadTLS(cfg *config.Config) (*tls.Config, error) {
	if cfg.Submission.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.DataPath(cfg.Submission.TLSCert), cfg.DataPath(cfg.Submission.TLSKey))
	if err != nil {
		return nil, fmt.Errorf("submission.tls_cert: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Reload applies what can change without a restart: users, routes, retry
// schedule and TLS certificates. cfg must already be validated.
func (d *Daemon) Reload(cfg *config.Config) error {
	tlsConf, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	if err := relay.CheckRoutes(routes(cfg)); err != nil {
		return fmt.Errorf("relay.route: %w", err)
	}
	d.Submit.SetUsers(users(cfg))
	if tlsConf != nil {
		d.Submit.SetTLSConfig(tlsConf)
	}
	endpoints, err := webhookEndpoints(cfg)
	if err != nil {
		return err
	}
	if err := d.Webhooks.SetEndpoints(endpoints); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	d.Relay.SetRoutes(routes(cfg))
	d.Runner.SetRetry(cfg.Relay.Retry, cfg.Relay.MaxAge)
	d.Runner.SetDelayWarning(cfg.Relay.DelayWarning)
	d.log.Info("configuration reloaded", "config", cfg.Path)
	return nil
}

// accountsView adapts the domain store to what the submission pipeline needs.
type accountsView struct{ s *domain.Store }

func (a accountsView) LookupAccount(id string) (bool, bool) {
	acct, err := a.s.Account(id)
	if err != nil {
		return false, false
	}
	return true, acct.CustomDomain
}
func (a accountsView) IsVerified(accountID, d string) bool { return a.s.IsVerified(accountID, d) }
func (a accountsView) SigningKey(d string) (string, string, crypto.Signer, bool) {
	return a.s.SigningKey(d)
}

// suppressionsView adapts the suppression list, and the suppressions it
// could not take yet, to the pipeline.
type suppressionsView struct {
	l       *suppress.List
	pending *pendingSuppressions
}

func (v suppressionsView) Suppressed(account, address string) (string, bool, error) {
	if e, ok := v.pending.lookup(account, address); ok {
		return e.Reason, true, nil
	}
	e, ok, err := v.l.Lookup(account, address)
	if err != nil {
		if errors.Is(err, suppress.ErrInvalidAddress) {
			return "", false, nil
		}
		return "", false, err
	}
	return e.Reason, ok, nil
}

// suppressionConsumer applies the suppressions that committed events
// cause. Its cursor is named per node (one list, many spools on a
// cluster).
type suppressionConsumer struct {
	list *suppress.List
	name string // consumerName, or consumerName@node on a cluster
	// pending holds what the list could not take yet.
	pending *pendingSuppressions
}

// consumerName is the suppression list's cursor name for the local spool.
const consumerName = "spool"

// maxChangesPerApply bounds the changes of one ApplyChanges: on a cluster
// each is one etcd transaction, whose operations are bounded (128 by
// default; a change writes up to two keys, the cursor one more).
const maxChangesPerApply = 40

func (c *suppressionConsumer) Cursor() (uint64, error) { return c.list.Cursor(c.name) }

// Consume applies the changes of evs in runs of at most
// maxChangesPerApply, each with the sequence number of its last event as
// the cursor, so that every run takes effect exactly once.
func (c *suppressionConsumer) Consume(evs []queue.Event) error {
	var changes []suppress.Change
	for i, ev := range evs {
		if ch, ok := suppressionChange(ev); ok {
			changes = append(changes, ch)
		}
		if len(changes) == maxChangesPerApply || i == len(evs)-1 {
			if err := c.list.ApplyChanges(c.name, ev.Seq, changes); err != nil {
				c.pending.hold(changes)
				return err
			}
			c.pending.release(changes)
			changes = changes[:0]
		}
	}
	return nil
}

// softCounted are the soft reasons that say something about the recipient's
// mailbox; a run of them suppresses. Reasons about our own host or message
// (blocked, rate-limited, policy, spam…) never count against the recipient.
var softCounted = map[string]bool{string(bounce.ReasonMailboxFull): true, string(bounce.ReasonSuspended): true}

// suppressionChange is what one status event does to the suppression list.
func suppressionChange(ev queue.Event) (suppress.Change, bool) {
	e := suppress.Entry{Address: ev.Recipient, Account: ev.Account, Reason: ev.Reason, Source: ev.Source,
		MessageID: ev.MessageID, Detail: ev.Text, Created: ev.Time}
	switch {
	case ev.Status == queue.StatusSent && ev.Source == "relay":
		return suppress.Change{Kind: suppress.ChangeSuccess, Entry: e}, true
	case ev.Source == "feedback":
		e.Reason, e.Source = "complaint", "feedback"
		return suppress.Change{Kind: suppress.ChangeAdd, Entry: e}, true
	case ev.Status == queue.StatusBounced && bounce.Reason(ev.Reason).Hard():
		return suppress.Change{Kind: suppress.ChangeAdd, Entry: e}, true
	case ev.Status == queue.StatusBounced && softCounted[ev.Reason]:
		return suppress.Change{Kind: suppress.ChangeSoftBounce, Entry: e}, true
	}
	return suppress.Change{}, false
}

// extraHandlers are mounted on the API listener behind its token.
func (d *Daemon) extraHandlers() map[string]http.Handler {
	h := map[string]http.Handler{"GET /metrics": d.Metrics.Handler(), "GET /v1/backup": d.backupHandler()}
	for p, hh := range api.PlatformDKIMHandlers(d.platformKeys) {
		h[p] = hh
	}
	if d.cluster != nil {
		h["POST "+forwardPath] = forwardHandler(d.intake)
		h["GET /v1/cluster/node"] = d.nodeViewHandler()
	}
	if d.cfg.API.Pprof {
		h["/debug/pprof/"] = http.HandlerFunc(pprof.Index)
		h["/debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
		h["/debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
		h["/debug/pprof/symbol"] = http.HandlerFunc(pprof.Symbol)
		h["/debug/pprof/cmdline"] = http.HandlerFunc(pprof.Cmdline)
	}
	return h
}
