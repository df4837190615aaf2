package daemon

import (
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/internal/fsperm"
)

// checkPermissions refuses to start, as sshd does, when data_dir (or the
// body-file directory in it) is writable by group or others, or a secret
// file is readable or writable by them or owned by another user. It runs
// before New opens or creates anything.
func checkPermissions(cfg *config.Config) error {
	dirs := []fsperm.Dir{
		{Path: cfg.DataDir, What: "data_dir"},
		{Path: filepath.Join(cfg.DataDir, "bodies"), What: "data_dir/bodies"},
	}
	secrets := []fsperm.Secret{
		{Path: cfg.DataPath(cfg.API.TokenFile), What: "api.token_file"},
		{Path: cfg.DataPath(cfg.Bounce.VERPSecretFile), What: "bounce.verp_secret_file"},
		{Path: cfg.DataPath(cfg.Sender.DKIMKeyFile), What: "sender.dkim_key_file"},
		{Path: cfg.DataPath(cfg.Submission.TLSKey), What: "submission.tls_key"},
		// The store holds the customer domains' DKIM keys.
		{Path: filepath.Join(cfg.DataDir, StoreFile), What: "the store"},
	}
	for i, w := range cfg.Webhooks {
		secrets = append(secrets, fsperm.Secret{Path: cfg.DataPath(w.SecretFile), What: "webhook[" + strconv.Itoa(i) + "].secret_file"})
	}
	secrets = append(secrets, cfg.ClusterSecrets()...)
	return fsperm.Check(dirs, secrets)
}

// platformDomains are the domains no customer may register: the domain of
// sender.default_from, the bounce domain and the platform DKIM domain.
func platformDomains(cfg *config.Config) []string {
	from := cfg.Sender.DefaultFrom
	return []string{from[strings.LastIndexByte(from, '@')+1:], cfg.Bounce.Domain, cfg.Sender.DKIMDomain}
}
