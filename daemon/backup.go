package daemon

import (
	"net/http"
	"path/filepath"
	"strings"

	"github.com/hermod-mta/hermod/api"
)

// backupHandler serves GET /v1/backup on the API listener (behind the token).
func (d *Daemon) backupHandler() http.Handler {
	return api.BackupHandler(d.Store, func() map[string]string { return secretFiles(d.cfg.DataDir, d.secretPaths()) }, d.log)
}

// secretPaths are the files `hermod backup -secrets` adds: the API token,
// the VERP secret, the platform DKIM key, webhook secrets and the submission
// TLS certificate and key.
func (d *Daemon) secretPaths() []string {
	cfg := d.cfg
	ps := []string{cfg.DataPath(cfg.API.TokenFile), cfg.DataPath(cfg.Bounce.VERPSecretFile), cfg.DataPath(cfg.Sender.DKIMKeyFile)}
	for _, w := range cfg.Webhooks {
		ps = append(ps, cfg.DataPath(w.SecretFile))
	}
	if r, err := readPlatformRotation(cfg); err == nil && r != nil {
		ps = append(ps, cfg.DataPath(PlatformRotationFile), cfg.DataPath(r.KeyFile), cfg.DataPath(r.OldKeyFile))
	}
	if cfg.Submission.TLSCert != "" {
		ps = append(ps, cfg.DataPath(cfg.Submission.TLSCert), cfg.DataPath(cfg.Submission.TLSKey))
	}
	return ps
}

// secretFiles names each secret file in the archive by its path relative to
// dataDir, so that restore puts it where a configuration with relative paths
// finds it; a file outside dataDir goes under "external/" by its base name.
func secretFiles(dataDir string, paths []string) map[string]string {
	out := map[string]string{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		rel, err := filepath.Rel(dataDir, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			rel = filepath.Join("external", filepath.Base(p))
		}
		out[filepath.ToSlash(rel)] = p
	}
	return out
}
