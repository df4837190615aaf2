package api_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/queue"
)

// TestBackupEndpoint: GET /v1/backup needs the token; with secrets=1 the
// archive carries the secret files; it restores into a new directory with
// the message that was queued.
func TestBackupEndpoint(t *testing.T) {
	e := newAPI(t)
	id := e.enqueue(t, time.Now(), "r1", "a@dest.test")
	secret := filepath.Join(t.TempDir(), "verp.secret")
	if err := os.WriteFile(secret, []byte("verp-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := api.New(api.Options{Token: testToken, Queue: e.store, Mount: map[string]http.Handler{
		"GET /v1/backup": api.BackupHandler(e.store, func() map[string]string { return map[string]string{"verp.secret": secret} }, nil)}})
	srv := httptest.NewServer(h)
	defer srv.Close()

	var buf bytes.Buffer
	if err := (&api.Client{Base: srv.URL, Token: "wrong-token-0123456789"}).Backup(context.Background(), &buf, false); err == nil {
		t.Fatal("backup with a wrong token succeeded")
	}
	cl := &api.Client{Base: srv.URL, Token: testToken}
	buf.Reset()
	if err := cl.Backup(context.Background(), &buf, true); err != nil {
		t.Fatal(err)
	}
	man, err := queue.VerifyBackup(bytes.NewReader(buf.Bytes()))
	if err != nil || man.Messages != 1 || len(man.Secrets) != 1 {
		t.Fatalf("archive: %+v, %v", man, err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	if _, rep, err := queue.Restore(bytes.NewReader(buf.Bytes()), dir); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("restore: %v %+v", err, rep)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "verp.secret")); string(b) != "verp-secret\n" {
		t.Fatalf("restored secret %q", b)
	}
	st, err := queue.Open(filepath.Join(dir, "hermod.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if m, err := st.Get(id); err != nil || m.Ref != "r1" {
		t.Fatalf("restored message: %+v, %v", m, err)
	}
	// Without secrets=1, no secret file.
	buf.Reset()
	if err := cl.Backup(context.Background(), &buf, false); err != nil {
		t.Fatal(err)
	}
	if man, err := queue.VerifyBackup(bytes.NewReader(buf.Bytes())); err != nil || len(man.Secrets) != 0 {
		t.Fatalf("archive without secrets: %+v, %v", man, err)
	}
}

// TestRotateEndpoint: POST .../rotate answers the domain with the new
// record; a second one while pending is 409 rotation_pending.
func TestRotateEndpoint(t *testing.T) {
	e := newAPI(t)
	e.ok(t, "PUT", "/v1/accounts/acme", map[string]any{"owner": "owner@acme.test", "custom_domain": true}, nil)
	var d api.DomainView
	e.ok(t, "POST", "/v1/accounts/acme/domains", map[string]string{"domain": "acme.test"}, &d)
	var r api.DomainView
	e.ok(t, "POST", "/v1/accounts/acme/domains/acme.test/rotate", nil, &r)
	if r.Rotation == nil || r.Rotation.Selector == d.Selector || r.Rotation.Record.Name != r.Rotation.Selector+"._domainkey.acme.test" || r.Rotation.Record.Zone == "" {
		t.Fatalf("rotation: %+v", r.Rotation)
	}
	if r.Selector != d.Selector {
		t.Fatalf("the selector changed before the new record was seen: %s → %s", d.Selector, r.Selector)
	}
	e.fails(t, "POST", "/v1/accounts/acme/domains/acme.test/rotate", nil, http.StatusConflict, domain.CodeRotationPending)
	e.fails(t, "POST", "/v1/accounts/acme/domains/other.test/rotate", nil, http.StatusNotFound, domain.CodeNotFound)
}
