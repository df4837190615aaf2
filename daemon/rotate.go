package daemon

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/internal/atomicfile"
)

// Platform DKIM key rollover. `hermod dkim rotate` makes a new key file
// (dkim-<selector>.key in data_dir) under a new selector and records it in
// PlatformRotationFile; sender.dkim_selector and sender.dkim_key_file keep
// signing until the new record is seen through the relay's resolver (looked
// up every minute, or at once by POST /v1/dkim/check). Then the state file
// says so and the new key signs, also after a restart: the state overrides
// the configured selector and key file from then on.

// PlatformRotationFile is the platform key rollover's state, in data_dir.
const PlatformRotationFile = "dkim-rotation.json"

// platformRotationEvery is how often a pending rollover's record is looked up.
const platformRotationEvery = time.Minute

// PlatformKey returns the selector and key file that sign platform mail
// under cfg: the configured ones, or those of a completed rollover.
func PlatformKey(cfg *config.Config) (selector, keyFile string, r *api.PlatformRotation, err error) {
	r, err = readPlatformRotation(cfg)
	if err != nil {
		return "", "", nil, err
	}
	switch {
	case r != nil && !r.Switched.IsZero():
		return r.Selector, cfg.DataPath(r.KeyFile), r, nil
	case r != nil && r.OldKeyFile != "":
		return r.OldSelector, cfg.DataPath(r.OldKeyFile), r, nil
	}
	return cfg.Sender.DKIMSelector, cfg.DataPath(cfg.Sender.DKIMKeyFile), r, nil
}

func readPlatformRotation(cfg *config.Config) (*api.PlatformRotation, error) {
	b, err := os.ReadFile(cfg.DataPath(PlatformRotationFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dkim rollover state: %w", err)
	}
	var r api.PlatformRotation
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("dkim rollover state %s: %w", cfg.DataPath(PlatformRotationFile), err)
	}
	return &r, nil
}

// writeStateFile replaces path with data durably (temporary file, fsync, rename).
func writeStateFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = atomicfile.SyncDir(dir)
	}
	return err
}

// platformKeys implements api.PlatformKeys for the daemon.
type platformKeys struct {
	cfg      *config.Config
	signer   *dkim.Signer
	resolver domain.Resolver
	grace    time.Duration
	now      func() time.Time
	log      interface {
		Info(msg string, args ...any)
	}
	mu sync.Mutex // serialises rotate and check
}

// view is the API's answer for the signer's state.
func (p *platformKeys) view(r *api.PlatformRotation) (api.PlatformDKIM, error) {
	sel, key := p.signer.Current()
	txt, err := dkim.TXTRecord(key.Public())
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	name := sel + "._domainkey." + p.cfg.Sender.DKIMDomain
	return api.PlatformDKIM{Domain: p.cfg.Sender.DKIMDomain, Selector: sel, PublicTXT: txt,
		Record:   domain.Record{Name: name, Type: "TXT", Value: dkim.ZoneText(txt), Zone: dkim.ZoneRecord(name, txt), OK: true},
		Rotation: r}, nil
}

// Show returns the platform key in use and the last rollover.
func (p *platformKeys) Show(ctx context.Context) (api.PlatformDKIM, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := readPlatformRotation(p.cfg)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	return p.view(r)
}

// Rotate starts a rollover; one pending is refused.
func (p *platformKeys) Rotate(ctx context.Context) (api.PlatformDKIM, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := readPlatformRotation(p.cfg)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	if r != nil && r.Switched.IsZero() {
		return api.PlatformDKIM{}, &domain.Error{Code: domain.CodeRotationPending, Status: 409,
			Msg: fmt.Sprintf("a platform key rollover is already waiting for the TXT record of selector %s (started %s)", r.Selector, r.Started.Format(time.RFC3339))}
	}
	alg, err := dkim.ParseAlgorithm(p.cfg.Sender.DKIMAlgorithm)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	key, err := dkim.GenerateKey(alg)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	pemKey, err := dkim.MarshalKey(key)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	txt, err := dkim.TXTRecord(key.Public())
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	sel := "hm" + p.now().UTC().Format("20060102150405")
	keyFile := "dkim-" + sel + ".key"
	if _, err := atomicfile.Create(p.cfg.DataPath(keyFile), pemKey); err != nil {
		return api.PlatformDKIM{}, fmt.Errorf("dkim rotate: store key: %w", err)
	}
	old, oldFile, _, err := PlatformKey(p.cfg)
	if err != nil {
		return api.PlatformDKIM{}, err
	}
	nr := &api.PlatformRotation{Selector: sel, KeyFile: keyFile, PublicTXT: txt, Started: p.now().UTC(), OldSelector: old, OldKeyFile: oldFile}
	name := sel + "._domainkey." + p.cfg.Sender.DKIMDomain
	nr.Record = domain.Record{Name: name, Type: "TXT", Value: dkim.ZoneText(txt), Zone: dkim.ZoneRecord(name, txt), Problem: "not looked up yet"}
	if err := p.save(nr); err != nil {
		return api.PlatformDKIM{}, err
	}
	p.log.Info("platform DKIM key rollover started", "old_selector", old, "new_selector", sel)
	return p.view(nr)
}

func (p *platformKeys) save(r *api.PlatformRotation) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := writeStateFile(p.cfg.DataPath(PlatformRotationFile), b); err != nil {
		return fmt.Errorf("dkim rollover state: %w", err)
	}
	return nil
}

// Check looks a pending rollover's record up and, once it is right, makes
// the new key sign (the state is written first, so a restart keeps it).
func (p *platformKeys) Check(ctx context.Context) (api.PlatformDKIM, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := readPlatformRotation(p.cfg)
	if err != nil || r == nil || !r.Switched.IsZero() {
		if err != nil {
			return api.PlatformDKIM{}, err
		}
		return p.view(r)
	}
	found, err := p.resolver.LookupTXT(ctx, r.Record.Name)
	r.Record.Found, r.Record.OK = found, false
	switch {
	case err != nil:
		r.Record.Problem = "look-up: " + err.Error()
	default:
		r.Record.Problem = "wrong value"
		for _, f := range found {
			if domain.DKIMRecordMatches(f, r.PublicTXT) {
				r.Record.OK, r.Record.Problem = true, ""
			}
		}
	}
	var key crypto.Signer
	if r.Record.OK {
		pemKey, err := os.ReadFile(p.cfg.DataPath(r.KeyFile))
		if err != nil {
			return api.PlatformDKIM{}, fmt.Errorf("dkim rollover: %w", err)
		}
		if key, err = dkim.ParseKey(pemKey); err != nil {
			return api.PlatformDKIM{}, fmt.Errorf("dkim rollover: %s: %w", r.KeyFile, err)
		}
		now := p.now().UTC()
		r.Switched, r.RemoveOldAfter = now, now.Add(p.grace)
	}
	if err := p.save(r); err != nil {
		return api.PlatformDKIM{}, err
	}
	if key != nil {
		p.signer.SetKey(r.Selector, key)
		p.log.Info("platform DKIM key rollover done: the new key signs", "selector", r.Selector, "old_selector", r.OldSelector,
			"remove_old_after", r.RemoveOldAfter)
	}
	return p.view(r)
}

// run checks a pending rollover every platformRotationEvery until ctx ends.
func (p *platformKeys) run(ctx context.Context) {
	t := time.NewTicker(platformRotationEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if r, _ := readPlatformRotation(p.cfg); r != nil && r.Switched.IsZero() {
				_, _ = p.Check(ctx)
			}
		}
	}
}
