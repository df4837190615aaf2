// Package config loads and validates hermod's single TOML configuration file.
//
// The daemon decodes the file into one Config and hands each package its own
// options; no other package reads files or the environment.
package config

import "time"

// Config is the whole hermod configuration, one field per top-level key or table.
type Config struct {
	// Hostname is the name hermod uses for itself: Received headers, Message-IDs,
	// the default EHLO name and the SMTP greetings.
	Hostname string `toml:"hostname"`
	// DataDir holds the bbolt store and generated secrets. Created 0700 if absent.
	DataDir string `toml:"data_dir"`
	// ShutdownTimeout bounds how long SIGTERM waits for in-flight work.
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"`

	Submission Submission `toml:"submission"`
	Bounce     Bounce     `toml:"bounce"`
	Sender     Sender     `toml:"sender"`
	Relay      Relay      `toml:"relay"`
	Queue      Queue      `toml:"queue"`
	Suppress   Suppress   `toml:"suppress"`
	API        API        `toml:"api"`
	Log        Log        `toml:"log"`
	Webhooks   []Webhook  `toml:"webhook"`
	// Cluster makes this node one of several sharing control data in etcd;
	// nil (no [cluster] section) is a single node on bbolt alone.
	Cluster *Cluster `toml:"cluster"`

	// Path is the file the configuration was read from ("" for the embedded default).
	Path string `toml:"-"`
}

// Submission configures the listener applications submit mail to.
type Submission struct {
	// Listen is the address for plain SMTP with STARTTLS (when certs are set).
	Listen string `toml:"listen"`
	// ListenTLS is an optional address for implicit TLS (RFC 8314).
	ListenTLS string `toml:"listen_tls"`
	TLSCert   string `toml:"tls_cert"`
	TLSKey    string `toml:"tls_key"`
	// MaxMessageBytes is the largest message accepted (SIZE).
	MaxMessageBytes int64 `toml:"max_message_bytes"`
	// MaxRecipients is the most RCPT TO accepted in one transaction.
	MaxRecipients int `toml:"max_recipients"`
	// IdleTimeout closes a session that sends nothing for this long.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// MaxConnections caps concurrent sessions in total; MaxConnectionsPerIP per client address.
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// AuthTimeout ends a session still unauthenticated this long after it
	// connected; MaxCommandsBeforeAuth ends one that sent this many lines
	// without authenticating.
	AuthTimeout           time.Duration `toml:"auth_timeout"`
	MaxCommandsBeforeAuth int           `toml:"max_commands_before_auth"`
	// MaxUnauthenticated caps the not-yet-authenticated sessions from
	// addresses that have not logged in within a day (default half of
	// MaxConnections).
	MaxUnauthenticated int `toml:"max_unauthenticated"`
	// DataTimeout bounds one whole DATA (IdleTimeout applies between bytes).
	DataTimeout time.Duration `toml:"data_timeout"`
	// MaxHeaderBytes and MaxHeaderFields cap a message's header section.
	MaxHeaderBytes  int    `toml:"max_header_bytes"`
	MaxHeaderFields int    `toml:"max_header_fields"`
	Users           []User `toml:"users"`
}

// User is one submission account: a SASL name, a bcrypt hash, and the company
// accounts it may send for ("*" for any).
type User struct {
	Name         string   `toml:"name"`
	PasswordHash string   `toml:"password_hash"`
	Accounts     []string `toml:"accounts"`
}

// Bounce configures the inbound listener for bounces to VERP addresses.
type Bounce struct {
	Listen string `toml:"listen"`
	// Domain is the bounce host (m.makeleaps.com): envelope senders of mail sent
	// from the platform identity use it.
	Domain              string `toml:"domain"`
	VERPSecretFile      string `toml:"verp_secret_file"`
	MaxMessageBytes     int64  `toml:"max_message_bytes"`
	MaxConnectionsPerIP int    `toml:"max_connections_per_ip"`
	// MaxConcurrentData bounds the DATA phases received at once.
	MaxConcurrentData int `toml:"max_concurrent_data"`
	// MaxRcptFailures refused RCPTs end a session (421);
	// MaxRcptFailuresPerIP within an hour block the client address.
	MaxRcptFailures      int `toml:"max_rcpt_failures"`
	MaxRcptFailuresPerIP int `toml:"max_rcpt_failures_per_ip"`
	// Mailbox limits what postmaster@ and abuse@ mail may store.
	Mailbox Mailbox `toml:"mailbox"`
}

// Mailbox limits the files kept for postmaster@ and abuse@ of the bounce
// domain (data_dir/mailbox); each message is stored once, up to
// bounce.max_message_bytes.
type Mailbox struct {
	// MaxBytes and MaxFiles cap what is stored in all.
	MaxBytes int64 `toml:"max_bytes"`
	MaxFiles int   `toml:"max_files"`
	// RateBytes is what one client address (IPv6: /64) may store per hour.
	RateBytes int64 `toml:"rate_bytes"`
}

// Sender configures the sender rule and DKIM.
type Sender struct {
	// DefaultFrom is the platform sender address (bounce@makeleaps.com).
	DefaultFrom string `toml:"default_from"`
	// DisplayName is the template for the platform From display name; {name} is replaced.
	DisplayName   string `toml:"display_name"`
	DKIMDomain    string `toml:"dkim_domain"`
	DKIMSelector  string `toml:"dkim_selector"`
	DKIMKeyFile   string `toml:"dkim_key_file"`
	DKIMAlgorithm string `toml:"dkim_algorithm"` // "rsa" (2048) or "ed25519"
	// ReturnPathLabel is the label of the CNAME customers publish: <label>.<domain>.
	ReturnPathLabel string        `toml:"return_path_label"`
	VerifyTimeout   time.Duration `toml:"verify_timeout"`
	FreemailExtra   []string      `toml:"freemail_extra"`
}

// Relay configures outbound delivery.
type Relay struct {
	// Resolvers are DNS servers as "ip:port" (port 53 if omitted); empty means /etc/resolv.conf.
	Resolvers      []string        `toml:"resolvers"`
	Port           int             `toml:"port"`
	HELO           string          `toml:"helo"`
	Concurrency    int             `toml:"concurrency"`
	PerDestination int             `toml:"per_destination"`
	Retry          []time.Duration `toml:"retry"`
	MaxAge         time.Duration   `toml:"max_age"`
	ConnectTimeout time.Duration   `toml:"connect_timeout"`
	CommandTimeout time.Duration   `toml:"command_timeout"`
	DataTimeout    time.Duration   `toml:"data_timeout"`
	// MXAddressLimit is the most MX addresses one delivery attempt tries.
	MXAddressLimit int `toml:"mx_address_limit"`
	// MXSessionLimit is the most of them that may result in a connection.
	MXSessionLimit int `toml:"mx_session_limit"`
	// AttemptTimeout bounds one delivery attempt as a whole.
	AttemptTimeout time.Duration `toml:"attempt_timeout"`
	Routes         []Route       `toml:"route"`
	// DelayWarning: a recipient still not delivered this long after
	// acceptance gets one "delayed" event; 0 disables it. A file without
	// the key gets DefaultDelayWarning (Parse).
	DelayWarning time.Duration `toml:"delay_warning"`
}

// Route sends mail for Domain (exact, or "*.suffix") to Host ("ip-or-name:port"), bypassing MX.
type Route struct {
	Domain string `toml:"domain"`
	Host   string `toml:"host"`
}

// Queue configures the store.
type Queue struct {
	// Retention is how long finished messages stay for status look-ups.
	Retention     time.Duration `toml:"retention"`
	PurgeInterval time.Duration `toml:"purge_interval"`
	// Reserve is the free space (bytes) the spool keeps for itself.
	Reserve int64 `toml:"reserve"`
}

// Suppress configures the suppression list.
type Suppress struct {
	Scope           string                   `toml:"scope"` // "global" or "account"
	SoftBounceLimit int                      `toml:"soft_bounce_limit"`
	ExpireAfter     map[string]time.Duration `toml:"expire_after"` // by bounce reason
}

// API configures the HTTP API the CLI and the application use.
type API struct {
	Listen    string `toml:"listen"`
	TokenFile string `toml:"token_file"`
	// Pprof mounts /debug/pprof on the API listener (behind the token).
	Pprof bool `toml:"pprof"`
	// ReadTimeout bounds reading a request, WriteTimeout writing its answer
	// (it must exceed MaxWait), IdleTimeout a keep-alive connection's wait
	// for the next request.
	ReadTimeout  time.Duration `toml:"read_timeout"`
	WriteTimeout time.Duration `toml:"write_timeout"`
	IdleTimeout  time.Duration `toml:"idle_timeout"`
	// MaxConnections and MaxConnectionsPerIP cap open API connections.
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MaxWait is the longest /v1/events?wait=; MaxLongPolls how many may
	// wait at once.
	MaxWait      time.Duration `toml:"max_wait"`
	MaxLongPolls int           `toml:"max_long_polls"`
}

// Log configures structured logging.
type Log struct {
	Format string `toml:"format"` // "text" or "json"
	Level  string `toml:"level"`  // "debug", "info", "warn", "error"
}

// Webhook is one endpoint that receives status events.
type Webhook struct {
	URL        string   `toml:"url"`
	SecretFile string   `toml:"secret_file"`
	Events     []string `toml:"events"`
}
