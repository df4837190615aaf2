package api

import (
	"context"
	"net/http"
	"time"

	"github.com/hermod-mta/hermod/domain"
)

// PlatformRotation is a rollover of the platform DKIM key, pending or done.
type PlatformRotation struct {
	// Selector, KeyFile (relative to data_dir) and PublicTXT are the new
	// key's; Record is its TXT record and what the last look-up found.
	Selector  string        `json:"selector"`
	KeyFile   string        `json:"key_file"`
	PublicTXT string        `json:"public_txt"`
	Record    domain.Record `json:"record"`
	Started   time.Time     `json:"started"`
	// Switched is when the new record was seen and the new key began to
	// sign; zero while pending.
	Switched time.Time `json:"switched,omitzero"`
	// OldSelector's record may be removed after RemoveOldAfter.
	OldSelector    string    `json:"old_selector"`
	RemoveOldAfter time.Time `json:"remove_old_after,omitzero"`
	// OldKeyFile signs while the rollover is pending.
	OldKeyFile string `json:"old_key_file"`
}

// PlatformDKIM is the answer of the /v1/dkim endpoints: the key that signs
// platform mail now, its record, and the last rollover.
type PlatformDKIM struct {
	Domain    string            `json:"domain"`
	Selector  string            `json:"selector"`
	PublicTXT string            `json:"public_txt"`
	Record    domain.Record     `json:"record"`
	Rotation  *PlatformRotation `json:"rotation,omitempty"`
}

// PlatformKeys is the daemon's platform key, as the API serves it.
type PlatformKeys interface {
	Show(ctx context.Context) (PlatformDKIM, error)
	// Rotate starts a rollover (domain.CodeRotationPending while one waits).
	Rotate(ctx context.Context) (PlatformDKIM, error)
	// Check looks the pending rollover's record up now and switches once it is seen.
	Check(ctx context.Context) (PlatformDKIM, error)
}

// PlatformDKIMHandlers are GET /v1/dkim, POST /v1/dkim/rotate and POST
// /v1/dkim/check, for Options.Mount.
func PlatformDKIMHandlers(p PlatformKeys) map[string]http.Handler {
	serve := func(f func(context.Context) (PlatformDKIM, error)) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r.Context())
			if err != nil {
				if de, ok := err.(*domain.Error); ok {
					writeError(w, de.Status, de.Code, de.Msg)
					return
				}
				writeError(w, http.StatusInternalServerError, "internal", err.Error())
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	return map[string]http.Handler{
		"GET /v1/dkim":         serve(p.Show),
		"POST /v1/dkim/rotate": serve(p.Rotate),
		"POST /v1/dkim/check":  serve(p.Check),
	}
}
