package reliability

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestAPIRefusals sends requests the API must refuse with a 4xx and a JSON
// error body {"error", "code"}, and checks none of them changed anything.
func TestAPIRefusals(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, cfgOpts{sink: sink.Addr()})
	d := startDaemon(t, cfg, daemonOpts())
	tok, err := daemon.ReadToken(cfg.DataPath(cfg.API.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + d.Addr("api.listen")
	id := submit(t, d.Addr("submission.listen"), "keep@dest.test")
	big := `{"owner": "` + strings.Repeat("a", 2<<20) + `"}`
	good := "Bearer " + tok
	cases := []struct {
		name, method, path, auth, body string
	}{
		{"no token", "GET", "/v1/queue", "", ""},
		{"no token, metrics", "GET", "/metrics", "", ""},
		{"wrong token", "GET", "/v1/queue", "Bearer " + strings.Repeat("0", len(tok)), ""},
		{"token prefix only", "GET", "/v1/queue", "Bearer " + tok[:len(tok)/2], ""},
		{"token with suffix", "GET", "/v1/queue", good + "x", ""},
		{"empty bearer", "GET", "/v1/queue", "Bearer ", ""},
		{"basic auth", "GET", "/v1/queue", "Basic " + tok, ""},
		{"lower-case scheme", "GET", "/v1/queue", "bearer " + tok, ""},
		{"token in query", "GET", "/v1/queue?token=" + tok, "", ""},
		{"no token, delete", "DELETE", "/v1/messages/" + id, "", ""},
		{"oversized body", "PUT", "/v1/accounts/acme", good, big},
		{"bad JSON", "PUT", "/v1/accounts/acme", good, `{"owner": `},
		{"JSON array", "PUT", "/v1/accounts/acme", good, `[1,2]`},
		{"unknown field", "PUT", "/v1/accounts/acme", good, `{"owner":"o@acme.test","admin":true}`},
		{"two JSON values", "PUT", "/v1/accounts/acme", good, `{"owner":"o@acme.test"}{"owner":"p@acme.test"}`},
		{"wrong type", "PUT", "/v1/accounts/acme", good, `{"custom_domain":"yes"}`},
		{"bad JSON, suppression", "PUT", "/v1/suppressions/a@b.test", good, `{reason: x}`},
		{"newline in reason", "PUT", "/v1/suppressions/a@b.test", good, `{"reason":"manual\r\nX-Injected: 1"}`},
		{"bad suppression address", "PUT", "/v1/suppressions/not-an-address", good, `{}`},
		{"bad message id", "GET", "/v1/messages/xyz", good, ""},
		{"upper-case message id", "GET", "/v1/messages/" + strings.ToUpper(id), good, ""},
		{"message id with traversal", "GET", "/v1/messages/..%2f..%2fetc%2fpasswd", good, ""},
		{"unknown message id", "GET", "/v1/messages/0000000000000000", good, ""},
		{"delete bad id", "DELETE", "/v1/messages/zz", good, ""},
		{"retry bad id", "POST", "/v1/messages/zz/retry", good, ""},
		{"find without params", "GET", "/v1/messages", good, ""},
		{"bad status", "GET", "/v1/queue?status=everything", good, ""},
		{"limit zero", "GET", "/v1/queue?limit=0", good, ""},
		{"limit huge", "GET", "/v1/queue?limit=100000000", good, ""},
		{"limit not a number", "GET", "/v1/queue?limit=ten", good, ""},
		{"bad before", "GET", "/v1/queue?before=not-an-id", good, ""},
		{"negative after", "GET", "/v1/events?after=-1", good, ""},
		{"wait too long", "GET", "/v1/events?wait=1h", good, ""},
		{"bad wait", "GET", "/v1/events?wait=soon", good, ""},
		{"events limit", "GET", "/v1/events?limit=-5", good, ""},
		{"suppressions limit", "GET", "/v1/suppressions?limit=abc", good, ""},
		{"unknown suppression", "GET", "/v1/suppressions/nobody@nowhere.test", good, ""},
		{"unknown account", "GET", "/v1/accounts/nobody", good, ""},
		{"unknown endpoint", "GET", "/v1/nothing", good, ""},
		{"wrong method", "PATCH", "/v1/messages/" + id, good, ""},
		{"domain for unknown account", "POST", "/v1/accounts/nobody/domains", good, `{"domain":"example.test"}`},
	}
	refused := 0
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		req.Header.Set("Content-Type", "application/json")
		c := &http.Client{Timeout: 20 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		var eb struct{ Error, Code string }
		jerr := json.Unmarshal(body, &eb)
		ct := resp.Header.Get("Content-Type")
		if resp.StatusCode < 400 || resp.StatusCode > 499 || jerr != nil || eb.Error == "" || eb.Code == "" || !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: %s %s: %d %s %.200q, want a 4xx JSON error", tc.name, tc.method, tc.path, resp.StatusCode, ct, body)
			continue
		}
		refused++
	}
	// Nothing changed: the message is still there, no account, no suppression.
	if _, err := d.Store.Get(id); err != nil {
		t.Errorf("message %s gone after refused requests: %v", id, err)
	}
	if _, err := d.Domains.Account("acme"); err == nil {
		t.Error("a refused PUT created account acme")
	}
	if n, _ := d.Suppress.Count(); n != 0 {
		t.Errorf("refused PUTs left %d suppressions", n)
	}
	summary(t, "api: %d bad requests, %d refused", len(cases), refused)
}
