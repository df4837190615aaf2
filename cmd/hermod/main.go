// Command hermod is the transactional mail relay: `hermod serve` runs the
// daemon; the other subcommands are the postmaster's and operator's tools and
// talk to the running daemon over its HTTP API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hermod-mta/hermod"
	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/daemon"
)

const usage = `hermod — transactional mail relay

Usage:
  hermod serve            [-config FILE]   run the daemon
  hermod config check     [-config FILE]   validate a configuration file
  hermod passwd                            print a bcrypt hash for [[submission.users]]
  hermod queue ls         [-status S] [-limit N] [-before ID]
  hermod queue show ID                     envelope, per-recipient status and events
  hermod queue tail       [-f] [-n N]      the event log, one line per status change
  hermod queue retry ID                    make the pending recipients of ID due now
  hermod queue delete ID                   remove a message from the queue
  hermod queue hold|release|retry|delete ID... | [-account A] [-domain D] [-status S]
                          [-older-than AGE] [-rcpt ADDR] [-ref R] [-dry-run]
                                           act on many recipients at once (filters AND-combined)
  hermod status ID                         per-recipient status with the user's wording
  hermod account set ID --owner ADDR --custom-domain=true|false
  hermod account show ID
  hermod domain add|ls|show|rm|check|rotate ACCOUNT [DOMAIN]
  hermod suppress ls [-account A] [-address PREFIX] | show ADDR | add ADDR [-reason R] | rm ADDR
  hermod dkim show                         the platform DKIM TXT record to publish
  hermod dkim rotate | dkim check          platform key rollover: new key and selector; the old key signs until the new record is seen
  hermod bounce parse FILE...              classify bounce messages (no daemon needed)
  hermod store check                       check the store offline (hermod must be stopped)
  hermod backup -o FILE [-secrets]         consistent archive of the running daemon's store and bodies
  hermod restore FILE -data-dir DIR        unpack a backup offline into a new, empty directory
  hermod cluster status [-json]            etcd members, nodes, background lease, what is stale
  hermod cluster import -from DATA_DIR     copy a single node's accounts, domains, keys and suppressions into the cluster
  hermod cluster forget NODE               remove a node that is gone for good from the registry
  hermod bench [-n N] [-c C] [-size B] [-peer postfix]   load benchmark on loopback

Every subcommand takes -config FILE; without it, $HERMOD_CONFIG, then
./config.example.toml, then the built-in example configuration are used.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches a command line and returns the exit status: 0 ok, 1
// failure, 2 bad usage or configuration.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	var err error
	switch args[0] {
	case "serve":
		err = c.serve(args[1:])
	case "config":
		err = c.configCmd(args[1:])
	case "passwd":
		err = c.passwd(args[1:])
	case "queue":
		err = c.queueCmd(args[1:])
	case "status":
		err = c.status(args[1:])
	case "account":
		err = c.accountCmd(args[1:])
	case "domain":
		err = c.domainCmd(args[1:])
	case "suppress":
		err = c.suppressCmd(args[1:])
	case "dkim":
		err = c.dkimCmd(args[1:])
	case "bounce":
		err = c.bounceCmd(args[1:])
	case "bench":
		err = c.bench(args[1:])
	case "store":
		err = c.storeCmd(args[1:])
	case "backup":
		err = c.backup(args[1:])
	case "restore":
		err = c.restore(args[1:])
	case "cluster":
		err = c.clusterCmd(args[1:])
	default:
		err = usageError("unknown command %q (see hermod help)", args[0])
	}
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "hermod:", err)
	var ue *usageErr
	var ce *config.Error
	if errors.As(err, &ue) || errors.As(err, &ce) || errors.Is(err, config.ErrNoConfig) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

type usageErr struct{ msg string }

func (e *usageErr) Error() string { return e.msg }

func usageError(format string, args ...any) error { return &usageErr{fmt.Sprintf(format, args...)} }

type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// flags returns a flag set with the common -config flag.
func (c *cli) flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	path := fs.String("config", "", "configuration file (default $HERMOD_CONFIG, ./config.example.toml, built-in)")
	return fs, path
}

// parse parses args allowing flags after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, &usageErr{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// loadConfig finds and loads the configuration.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		path = os.Getenv("HERMOD_CONFIG")
	}
	if path == "" {
		if _, err := os.Stat("config.example.toml"); err == nil {
			path = "config.example.toml"
		}
	}
	if path == "" {
		return config.Parse(hermod.ExampleConfig, "")
	}
	return config.Load(path)
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	switch cfg.Log.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (c *cli) serve(args []string) error {
	fs, path := c.flags("serve")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg, c.stderr)
	d, err := daemon.New(cfg, log, daemon.Options{})
	if err != nil {
		return err
	}
	if err := d.Start(); err != nil {
		d.Shutdown(context.Background())
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			next, err := loadConfig(cfg.Path)
			if err == nil {
				err = d.Reload(next)
			}
			if err != nil {
				log.Error("reload refused; keeping the running configuration", "err", err)
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String(), "timeout", cfg.ShutdownTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		err := d.Shutdown(ctx)
		cancel()
		if err != nil {
			log.Error("shutdown", "err", err)
		}
		log.Info("stopped")
		return nil
	}
	return nil
}

func (c *cli) configCmd(args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usageError("usage: hermod config check [-config FILE]")
	}
	fs, path := c.flags("config check")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	name := cfg.Path
	if name == "" {
		name = "built-in example configuration"
	}
	fmt.Fprintf(c.stdout, "%s: OK\n", name)
	return nil
}
