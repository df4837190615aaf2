package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/hermod-mta/hermod/queue"
)

// BackupWriteTimeout bounds each write of a backup to its client: a client
// that stops reading ends the backup (and its read transaction) instead of
// holding it open.
const BackupWriteTimeout = time.Minute

// BackupHandler serves GET /v1/backup[?secrets=1]: the archive of
// (*queue.Store).Backup as application/x-tar. secrets returns the secret
// files (archive name → file) added when secrets=1 is asked for. An error
// after the answer has started aborts the connection, so the client never
// holds a complete-looking archive that is not (the archive ends with its
// manifest, which queue.VerifyBackup and queue.Restore require).
func BackupHandler(store *queue.Store, secrets func() map[string]string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var opts queue.BackupOptions
		switch r.URL.Query().Get("secrets") {
		case "", "0", "false":
		case "1", "true":
			opts.Secrets = secrets()
		default:
			writeError(w, http.StatusBadRequest, "bad_request", "secrets must be 1 or 0")
			return
		}
		w.Header().Set("Content-Type", "application/x-tar")
		w.Header().Set("Content-Disposition", `attachment; filename="hermod-backup.tar"`)
		rc := http.NewResponseController(w)
		man, err := store.Backup(&deadlineWriter{w: w, rc: rc}, opts)
		if err != nil {
			log.Error("backup failed", "err", err)
			panic(http.ErrAbortHandler)
		}
		log.Info("backup written", "messages", man.Messages, "body_files", man.BodyFiles, "secrets", len(man.Secrets), "store_bytes", man.StoreSize)
	})
}

// deadlineWriter renews the connection's write deadline before each write.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(BackupWriteTimeout))
	return d.w.Write(p)
}

// Backup streams the daemon's backup archive (GET /v1/backup) to w.
func (c *Client) Backup(ctx context.Context, w io.Writer, secrets bool) error {
	q := url.Values{}
	if secrets {
		q.Set("secrets", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/v1/backup?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{} // a backup takes as long as it takes; the server bounds each write
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach hermod at %s (is `hermod serve` running with this config?): %w", c.Base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("backup: HTTP %d: %s", resp.StatusCode, data)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("backup: the daemon's answer broke off: %w", err)
	}
	return nil
}
