package config

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Defaults, applied by Parse to every zero value.
const (
	DefaultDataDir         = "./hermod-data"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultDisplayName     = "{name} (via MakeLeaps)"
)

// DefaultDelayWarning is relay.delay_warning when the file does not set it.
const DefaultDelayWarning = 4 * time.Hour

// DefaultRetry is the relay.retry default: the wait before each new attempt;
// the last one repeats until relay.max_age.
var DefaultRetry = []time.Duration{
	time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 4 * time.Hour,
}

// bounceReasons are the reasons suppress.expire_after may name (docs/design.md
// "VERP and statuses", plus the non-bounce suppression sources).
var bounceReasons = []string{
	"user-unknown", "host-unknown", "not-accept", "mailbox-full", "suspended",
	"blocked", "rejected", "filtered", "spam", "policy", "security",
	"message-too-big", "rate-limited", "expired", "network", "system", "other",
	"complaint", "soft-bounce-limit", "manual",
}

var webhookEvents = []string{"queued", "deferred", "held", "sent", "bounced", "suppressed", "delayed", "*"}

// applyDefaults replaces every zero value that has a default.
func (c *Config) applyDefaults() {
	setS := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	setI := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setI64 := func(p *int64, v int64) {
		if *p == 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname() // on failure Validate reports hostname as missing
	}
	setS(&c.DataDir, DefaultDataDir)
	setD(&c.ShutdownTimeout, DefaultShutdownTimeout)

	s := &c.Submission
	setI64(&s.MaxMessageBytes, 25<<20)
	setI(&s.MaxRecipients, 100)
	setD(&s.IdleTimeout, 5*time.Minute)
	setI(&s.MaxConnections, 1000)
	setI(&s.MaxConnectionsPerIP, 50)
	setD(&s.AuthTimeout, 30*time.Second)
	setI(&s.MaxCommandsBeforeAuth, 10)
	setI(&s.MaxUnauthenticated, max(s.MaxConnections/2, 1))
	setD(&s.DataTimeout, 30*time.Minute)
	setI(&s.MaxHeaderBytes, 1<<20)
	setI(&s.MaxHeaderFields, 1000)

	b := &c.Bounce
	setS(&b.VERPSecretFile, "verp.key")
	setI64(&b.MaxMessageBytes, 10<<20)
	setI(&b.MaxConnectionsPerIP, 10)
	setI(&b.MaxConcurrentData, 8)
	setI(&b.MaxRcptFailures, 10)
	setI(&b.MaxRcptFailuresPerIP, 30)
	setI64(&b.Mailbox.MaxBytes, 100<<20)
	setI(&b.Mailbox.MaxFiles, 1000)
	setI64(&b.Mailbox.RateBytes, 20<<20)

	sn := &c.Sender
	setS(&sn.DisplayName, DefaultDisplayName)
	setS(&sn.DKIMSelector, "hermod")
	setS(&sn.DKIMKeyFile, "dkim-platform.key")
	setS(&sn.DKIMAlgorithm, "rsa")
	setS(&sn.ReturnPathLabel, "hermod-bounce")
	setD(&sn.VerifyTimeout, 72*time.Hour)

	r := &c.Relay
	setI(&r.Port, 25)
	setS(&r.HELO, c.Hostname)
	setI(&r.Concurrency, 100)
	setI(&r.PerDestination, 10)
	if r.Retry == nil { // "retry = []" stays empty and is refused by Validate
		r.Retry = slices.Clone(DefaultRetry)
	}
	setD(&r.MaxAge, 120*time.Hour)
	setD(&r.ConnectTimeout, 30*time.Second)
	setD(&r.CommandTimeout, 5*time.Minute)
	setD(&r.DataTimeout, 10*time.Minute)
	setI(&r.MXAddressLimit, 5)
	setI(&r.MXSessionLimit, 2)
	if r.MXSessionLimit > 0 && r.ConnectTimeout > 0 && r.DataTimeout > 0 {
		// Finding a host that greets within the session limit, then one
		// full transfer (relay.Options.AttemptTimeout's default).
		setD(&r.AttemptTimeout, time.Duration(r.MXSessionLimit)*r.ConnectTimeout+r.DataTimeout)
	}

	setD(&c.Queue.Retention, 720*time.Hour)
	setD(&c.Queue.PurgeInterval, time.Hour)
	setI64(&c.Queue.Reserve, 32<<20)

	setS(&c.Suppress.Scope, "global")
	setI(&c.Suppress.SoftBounceLimit, 5)

	a := &c.API
	setS(&a.TokenFile, "api.token")
	setD(&a.ReadTimeout, 30*time.Second)
	setD(&a.MaxWait, time.Minute)
	setD(&a.WriteTimeout, a.MaxWait+30*time.Second)
	setD(&a.IdleTimeout, time.Minute)
	setI(&a.MaxConnections, 256)
	setI(&a.MaxConnectionsPerIP, 64)
	setI(&a.MaxLongPolls, 64)

	setS(&c.Log.Format, "text")
	setS(&c.Log.Level, "info")

	for i := range c.Webhooks {
		if c.Webhooks[i].Events == nil {
			c.Webhooks[i].Events = []string{"*"}
		}
	}
	if c.Cluster != nil {
		c.Cluster.applyDefaults()
	}
}

// DataPath resolves the name of a secret or key file from the configuration
// (tls_cert, verp_secret_file, dkim_key_file, token_file, secret_file): an
// absolute path stays as it is, a relative one is taken inside DataDir. ""
// stays "".
func (c *Config) DataPath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.DataDir, p)
}

// Validate checks c as Parse leaves it (defaults applied). It returns nil, one
// *Error, or errors.Join of every *Error found; each names its key. File is
// set from c.Path; lines are left to Parse.
func (c *Config) Validate() error {
	var errs errList
	c.validate(&errs)
	for _, e := range errs {
		e.File = c.Path
	}
	return errs.err()
}

func (c *Config) validate(errs *errList) {
	positiveD := func(key string, d time.Duration) {
		if d <= 0 {
			errs.add(key, "must be a positive duration, not %s", d)
		}
	}
	positive := func(key string, n int64) {
		if n <= 0 {
			errs.add(key, "must be positive, not %d", n)
		}
	}
	oneOf := func(key, v string, allowed ...string) {
		if !slices.Contains(allowed, v) {
			errs.add(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
		}
	}
	domain := func(key, v string) {
		if v == "" {
			errs.add(key, "required")
		} else if !isDomain(v, true) {
			errs.add(key, "%q is not a domain name (ASCII, A-labels for IDN, at least two labels)", v)
		}
	}
	fileName := func(key, v string) {
		if v == "" {
			errs.add(key, "required")
		}
	}

	if c.Hostname == "" {
		errs.add("hostname", "required (os.Hostname failed)")
	} else if !isDomain(c.Hostname, false) {
		errs.add("hostname", "%q is not a host name", c.Hostname)
	}
	if c.DataDir == "" {
		errs.add("data_dir", "required")
	}
	positiveD("shutdown_timeout", c.ShutdownTimeout)

	// Listeners.
	type listener struct{ key, addr string }
	var listeners []listener
	listen := func(key, addr string, required bool) {
		if addr == "" {
			if required {
				errs.add(key, "required")
			}
			return
		}
		if _, _, err := splitHostPort(addr, true); err != nil {
			errs.add(key, "%v", err)
			return
		}
		listeners = append(listeners, listener{key, addr})
	}
	s := c.Submission
	listen("submission.listen", s.Listen, true)
	listen("submission.listen_tls", s.ListenTLS, false)
	listen("bounce.listen", c.Bounce.Listen, false)
	listen("api.listen", c.API.Listen, true)
	for i, a := range listeners {
		for _, b := range listeners[:i] {
			if listenersClash(a.addr, b.addr) {
				errs.add(a.key, "%s clashes with %s = %q", a.addr, b.key, b.addr)
				break
			}
		}
	}

	// Submission TLS: AUTH only over TLS, except on loopback.
	switch {
	case (s.TLSCert == "") != (s.TLSKey == ""):
		if s.TLSCert == "" {
			errs.add("submission.tls_cert", "required when submission.tls_key is set")
		} else {
			errs.add("submission.tls_key", "required when submission.tls_cert is set")
		}
	case s.TLSCert != "":
		certFile, keyFile := c.DataPath(s.TLSCert), c.DataPath(s.TLSKey)
		var bad bool
		for _, f := range []struct{ key, path string }{{"submission.tls_cert", certFile}, {"submission.tls_key", keyFile}} {
			if _, err := os.ReadFile(f.path); err != nil {
				errs.add(f.key, "%v", err)
				bad = true
			}
		}
		if !bad {
			if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
				errs.add("submission.tls_cert", "%s and %s are not a certificate and its key: %v", certFile, keyFile, err)
			}
		}
	default:
		if s.ListenTLS != "" {
			errs.add("submission.listen_tls", "needs submission.tls_cert and submission.tls_key")
		}
		if _, _, err := splitHostPort(s.Listen, true); err == nil && !isLoopback(s.Listen) {
			errs.add("submission.listen", "%s is not a loopback address and no tls_cert is set: AUTH would travel in clear text", s.Listen)
		}
	}
	positive("submission.max_message_bytes", s.MaxMessageBytes)
	positive("submission.max_recipients", int64(s.MaxRecipients))
	positiveD("submission.idle_timeout", s.IdleTimeout)
	positive("submission.max_connections", int64(s.MaxConnections))
	positive("submission.max_connections_per_ip", int64(s.MaxConnectionsPerIP))
	positiveD("submission.auth_timeout", s.AuthTimeout)
	positive("submission.max_commands_before_auth", int64(s.MaxCommandsBeforeAuth))
	positive("submission.max_unauthenticated", int64(s.MaxUnauthenticated))
	if s.MaxUnauthenticated >= s.MaxConnections && s.MaxConnections > 0 {
		errs.add("submission.max_unauthenticated", "%d leaves no slot of max_connections = %d for authenticated sessions", s.MaxUnauthenticated, s.MaxConnections)
	}
	positiveD("submission.data_timeout", s.DataTimeout)
	positive("submission.max_header_bytes", int64(s.MaxHeaderBytes))
	positive("submission.max_header_fields", int64(s.MaxHeaderFields))
	names := map[string]bool{}
	for i, u := range s.Users {
		k := fmt.Sprintf("submission.users[%d]", i)
		switch {
		case u.Name == "":
			errs.add(k+".name", "required")
		case strings.ContainsFunc(u.Name, isSpaceOrControl):
			errs.add(k+".name", "%q contains white space or control characters", u.Name)
		case names[u.Name]:
			errs.add(k+".name", "user %q is defined twice", u.Name)
		}
		names[u.Name] = true
		if err := checkBcrypt(u.PasswordHash); err != nil {
			errs.add(k+".password_hash", "%v (make one with `hermod passwd`)", err)
		}
		if len(u.Accounts) == 0 {
			errs.add(k+".accounts", `needs at least one account ("*" for any)`)
		}
		for _, a := range u.Accounts {
			if a == "" || strings.ContainsFunc(a, isSpaceOrControl) {
				errs.add(k+".accounts", "%q is not an account id", a)
			}
		}
	}

	// Bounce.
	b := c.Bounce
	domain("bounce.domain", b.Domain)
	fileName("bounce.verp_secret_file", b.VERPSecretFile)
	positive("bounce.max_message_bytes", b.MaxMessageBytes)
	positive("bounce.max_connections_per_ip", int64(b.MaxConnectionsPerIP))
	positive("bounce.max_concurrent_data", int64(b.MaxConcurrentData))
	positive("bounce.max_rcpt_failures", int64(b.MaxRcptFailures))
	positive("bounce.max_rcpt_failures_per_ip", int64(b.MaxRcptFailuresPerIP))
	positive("bounce.mailbox.max_bytes", b.Mailbox.MaxBytes)
	positive("bounce.mailbox.max_files", int64(b.Mailbox.MaxFiles))
	positive("bounce.mailbox.rate_bytes", b.Mailbox.RateBytes)

	// Sender.
	sn := c.Sender
	if sn.DefaultFrom == "" {
		errs.add("sender.default_from", "required")
	} else if a, err := mail.ParseAddress(sn.DefaultFrom); err != nil || a.Name != "" || a.Address != sn.DefaultFrom {
		errs.add("sender.default_from", "%q is not a bare address such as bounce@example.com", sn.DefaultFrom)
	} else if _, d, _ := strings.Cut(a.Address, "@"); !isDomain(d, true) {
		errs.add("sender.default_from", "%q: %q is not a domain name", sn.DefaultFrom, d)
	}
	if strings.ContainsAny(sn.DisplayName, "\r\n") {
		errs.add("sender.display_name", "must not contain CR or LF (header injection)")
	} else if strings.ContainsFunc(sn.DisplayName, isControl) {
		errs.add("sender.display_name", "must not contain control characters")
	}
	domain("sender.dkim_domain", sn.DKIMDomain)
	if !isDomain(sn.DKIMSelector, false) {
		errs.add("sender.dkim_selector", "%q is not a DNS label", sn.DKIMSelector)
	}
	fileName("sender.dkim_key_file", sn.DKIMKeyFile)
	oneOf("sender.dkim_algorithm", sn.DKIMAlgorithm, "rsa", "ed25519")
	if !isLabel(sn.ReturnPathLabel) {
		errs.add("sender.return_path_label", "%q is not a single DNS label", sn.ReturnPathLabel)
	}
	positiveD("sender.verify_timeout", sn.VerifyTimeout)
	for _, d := range sn.FreemailExtra {
		if !isDomain(d, true) {
			errs.add("sender.freemail_extra", "%q is not a domain name", d)
		}
	}

	// Relay.
	r := c.Relay
	for _, res := range r.Resolvers {
		if !isResolver(res) {
			errs.add("relay.resolvers", `%q is not "ip" or "ip:port" (an IP address, not a name)`, res)
		}
	}
	if r.Port < 1 || r.Port > 65535 {
		errs.add("relay.port", "%d is not a port (1-65535)", r.Port)
	}
	if !isDomain(r.HELO, false) {
		errs.add("relay.helo", "%q is not a host name", r.HELO)
	}
	positive("relay.concurrency", int64(r.Concurrency))
	positive("relay.per_destination", int64(r.PerDestination))
	if r.PerDestination > r.Concurrency && r.Concurrency > 0 {
		errs.add("relay.per_destination", "%d is more than relay.concurrency (%d)", r.PerDestination, r.Concurrency)
	}
	if len(r.Retry) == 0 {
		errs.add("relay.retry", "must list at least one interval")
	}
	for i, d := range r.Retry {
		if d <= 0 {
			errs.add("relay.retry", "interval %d (%s) must be positive", i+1, d)
		}
	}
	positiveD("relay.max_age", r.MaxAge)
	if r.DelayWarning < 0 {
		errs.add("relay.delay_warning", "must be a positive duration, or 0 to disable")
	}
	positiveD("relay.connect_timeout", r.ConnectTimeout)
	positiveD("relay.command_timeout", r.CommandTimeout)
	positiveD("relay.data_timeout", r.DataTimeout)
	positive("relay.mx_address_limit", int64(r.MXAddressLimit))
	positive("relay.mx_session_limit", int64(r.MXSessionLimit))
	if r.MXSessionLimit > r.MXAddressLimit && r.MXAddressLimit > 0 {
		errs.add("relay.mx_session_limit", "%d is more than relay.mx_address_limit (%d)", r.MXSessionLimit, r.MXAddressLimit)
	}
	positiveD("relay.attempt_timeout", r.AttemptTimeout)
	routes := map[string]bool{}
	for i, rt := range r.Routes {
		k := fmt.Sprintf("relay.route[%d]", i)
		d := strings.ToLower(rt.Domain)
		switch {
		case d == "":
			errs.add(k+".domain", "required")
		case d != "*" && !isDomain(strings.TrimPrefix(d, "*."), true):
			errs.add(k+".domain", `%q is not a domain name, "*.suffix" or "*"`, rt.Domain)
		case routes[d]:
			errs.add(k+".domain", "%q has two routes", rt.Domain)
		}
		routes[d] = true
		if rt.Host == "" {
			errs.add(k+".host", "required")
		} else if _, _, err := splitHostPort(rt.Host, false); err != nil {
			errs.add(k+".host", "%v", err)
		}
	}

	// Queue, suppression, API, log.
	positiveD("queue.retention", c.Queue.Retention)
	positiveD("queue.purge_interval", c.Queue.PurgeInterval)
	positive("queue.reserve", c.Queue.Reserve)
	oneOf("suppress.scope", c.Suppress.Scope, "global", "account")
	positive("suppress.soft_bounce_limit", int64(c.Suppress.SoftBounceLimit))
	reasons := make([]string, 0, len(c.Suppress.ExpireAfter))
	for reason := range c.Suppress.ExpireAfter {
		reasons = append(reasons, reason)
	}
	slices.Sort(reasons)
	for _, reason := range reasons {
		k := "suppress.expire_after." + reason
		if !slices.Contains(bounceReasons, reason) {
			errs.add(k, "%q is not a bounce reason (one of %s)", reason, strings.Join(bounceReasons, ", "))
		} else {
			positiveD(k, c.Suppress.ExpireAfter[reason])
		}
	}
	fileName("api.token_file", c.API.TokenFile)
	positiveD("api.read_timeout", c.API.ReadTimeout)
	positiveD("api.write_timeout", c.API.WriteTimeout)
	positiveD("api.idle_timeout", c.API.IdleTimeout)
	positiveD("api.max_wait", c.API.MaxWait)
	if c.API.WriteTimeout > 0 && c.API.WriteTimeout <= c.API.MaxWait {
		errs.add("api.write_timeout", "%s must exceed api.max_wait = %s, or long-polls are cut off", c.API.WriteTimeout, c.API.MaxWait)
	}
	positive("api.max_connections", int64(c.API.MaxConnections))
	positive("api.max_connections_per_ip", int64(c.API.MaxConnectionsPerIP))
	positive("api.max_long_polls", int64(c.API.MaxLongPolls))
	oneOf("log.format", c.Log.Format, "text", "json")
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")

	// Webhooks.
	for i, w := range c.Webhooks {
		k := fmt.Sprintf("webhook[%d]", i)
		if w.URL == "" {
			errs.add(k+".url", "required")
		} else if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs.add(k+".url", "%q is not an absolute http:// or https:// URL", redactURL(w.URL))
		}
		if w.SecretFile == "" {
			errs.add(k+".secret_file", "required: the webhook signing secret")
		}
		if len(w.Events) == 0 {
			errs.add(k+".events", `must list at least one event ("*" for all)`)
		}
		for _, e := range w.Events {
			if !slices.Contains(webhookEvents, e) {
				errs.add(k+".events", "%q is not one of %s", e, strings.Join(webhookEvents, ", "))
			}
		}
	}

	if c.Cluster != nil {
		c.validateCluster(errs)
	}
}

// splitHostPort checks "host:port" with a numeric port; listeners may use port
// 0 (any free port, for tests) and an empty host (all addresses).
func splitHostPort(addr string, listener bool) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %v", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 || (port == 0 && !listener) {
		return "", 0, fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, p)
	}
	if host == "" && !listener {
		return "", 0, fmt.Errorf("%q: host is missing", addr)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && !isDomain(host, false) {
			return "", 0, fmt.Errorf("%q: %q is neither an IP address nor a host name", addr, host)
		}
	}
	return host, port, nil
}

// listenersClash says whether binding both addresses would fail: same port,
// and the same host or a wildcard on either side.
func listenersClash(a, b string) bool {
	ha, pa, _ := splitHostPort(a, true)
	hb, pb, _ := splitHostPort(b, true)
	if pa != pb || pa == 0 {
		return false
	}
	norm := func(h string) string {
		if ip, err := netip.ParseAddr(h); err == nil {
			if ip.IsUnspecified() {
				return ""
			}
			return ip.Unmap().String()
		}
		return strings.ToLower(h)
	}
	ha, hb = norm(ha), norm(hb)
	return ha == "" || hb == "" || ha == hb
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func isResolver(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	ap, err := netip.ParseAddrPort(s)
	return err == nil && ap.Port() != 0
}

// checkBcrypt accepts a bcrypt hash as `hermod passwd` and htpasswd -B write.
func checkBcrypt(h string) error {
	if h == "" {
		return fmt.Errorf("required")
	}
	if !strings.HasPrefix(h, "$2a$") && !strings.HasPrefix(h, "$2b$") && !strings.HasPrefix(h, "$2y$") {
		return fmt.Errorf("not a bcrypt hash ($2a$, $2b$ or $2y$)")
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return fmt.Errorf("not a valid bcrypt hash: %v", err)
	}
	return nil
}

// isDomain checks an ASCII host name of letter-digit-hyphen labels (an IDN
// must be written as A-labels, xn--…); multi requires at least two labels.
func isDomain(s string, multi bool) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if multi && len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

func isLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func isSpaceOrControl(r rune) bool { return r == ' ' || isControl(r) }
