package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/queue"
)

// TestCLIViews runs queue show (every attempt), queue summary and -json on
// ls, show, summary, tail and status against a daemon whose MX (a plain
// text sink) greylists one recipient and takes the other.
func TestCLIViews(t *testing.T) {
	e := startCLIDaemon(t)
	later := "later@grey.test"
	e.mx.Refuse(later, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, come back later"})
	id := e.submit(t, "inv-9", later, "ok@fine.test")
	e.waitStatus(t, id, 0, queue.StatusDeferred)
	e.waitStatus(t, id, 1, queue.StatusSent)

	t.Run("queue show lists the attempt", func(t *testing.T) {
		out := e.ok(t, "queue", "show", id)
		// "#1 <time> <route host>[127.0.0.1:port] plain deferred 451 4.7.1 greylisted, come back later took 3ms"
		re := regexp.MustCompile(`(?m)^    #1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \S*\[127\.0\.0\.1:\d+\] plain deferred 451 4\.7\.1 greylisted, come back later took \d+(\.\d+)?(µs|ms|s)$`)
		if !re.MatchString(out) {
			t.Errorf("queue show: no attempt line for the deferral:\n%s", out)
		}
		if !regexp.MustCompile(`(?m)^    #1 .*\[127\.0\.0\.1:\d+\] plain sent 250 `).MatchString(out) {
			t.Errorf("queue show: no attempt line for the delivery:\n%s", out)
		}
	})

	t.Run("queue summary", func(t *testing.T) {
		out := e.ok(t, "queue", "summary")
		line := lineWith(out, "grey.test")
		if f := strings.Fields(line); len(f) < 6 || f[0] != "grey.test" || f[1] != "0" || f[2] != "1" || f[3] != "0" ||
			!strings.Contains(line, "1× 451 4.7.1 greylisted, come back later") {
			t.Errorf("summary line %q:\n%s", line, out)
		}
		if strings.Contains(out, "fine.test") {
			t.Errorf("summary lists a destination with nothing waiting:\n%s", out)
		}
		if !strings.Contains(out, "-- 1 waiting recipient(s) in 1 domain(s)") {
			t.Errorf("summary total:\n%s", out)
		}
		if out := e.ok(t, "queue", "summary", "-by", "account"); !strings.Contains(out, "ACCOUNT") {
			t.Errorf("summary -by account:\n%s", out)
		}
		if code, _, errs := e.hermod(t, "queue", "summary", "-by", "rcpt"); code != 2 || !strings.Contains(errs, "-by must be domain, account or mx") {
			t.Errorf("summary -by rcpt: exit %d, stderr %q; want usage error (2)", code, errs)
		}
	})

	t.Run("json", func(t *testing.T) {
		var sum api.SummaryView
		decodeOne(t, e.ok(t, "queue", "summary", "-json"), &sum)
		if len(sum.Rows) != 1 || sum.Rows[0].Key != "grey.test" || sum.Rows[0].Deferred != 1 {
			t.Errorf("summary -json: %+v", sum)
		}
		var m api.MessageView
		decodeOne(t, e.ok(t, "queue", "show", id, "-json"), &m)
		if m.ID != id || len(m.Recipients) != 2 || len(m.Recipients[0].Events) < 2 {
			t.Fatalf("show -json: %+v", m)
		}
		att := m.Recipients[0].Events[1]
		if att.Attempt != 1 || att.TLS != "plain" || !strings.HasPrefix(att.Addr, "127.0.0.1:") || att.Code != 451 || att.Duration <= 0 {
			t.Errorf("show -json attempt event %+v", att.Event)
		}
		var st api.MessageView
		decodeOne(t, e.ok(t, "status", id, "-json"), &st)
		if st.Recipients[1].Status != queue.StatusSent || st.Recipients[1].Message.EN != "Sent" || st.Recipients[1].Events != nil {
			t.Errorf("status -json: %+v", st.Recipients[1])
		}
		var ls struct {
			Messages []api.MessageView `json:"messages"`
			Counts   map[string]int64  `json:"counts"`
		}
		decodeOne(t, e.ok(t, "queue", "ls", "-json"), &ls)
		if len(ls.Messages) != 1 || ls.Messages[0].ID != id || ls.Counts["deferred"] != 1 {
			t.Errorf("ls -json: %+v", ls)
		}
		out := e.ok(t, "queue", "tail", "-json", "-n", "100")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 { // queued ×2, deferred, sent
			t.Fatalf("tail -json: %d lines, want 4:\n%s", len(lines), out)
		}
		for _, l := range lines {
			var ev api.EventView
			if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.MessageID != id || ev.Message.EN == "" {
				t.Errorf("tail -json line %q: %+v, %v", l, ev, err)
			}
		}
	})
}

// decodeOne checks that out is exactly one line of JSON and decodes it.
func decodeOne(t *testing.T, out string, v any) {
	t.Helper()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("want one JSON line, got:\n%s", out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
}
