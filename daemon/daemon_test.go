package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hermod-mta/hermod/config"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/internal/testnet"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/webhook"
)

var hashOnce = sync.OnceValue(func() string {
	h, _ := bcrypt.GenerateFromPassword([]byte("secret-pass"), bcrypt.MinCost)
	return string(h)
})

// testConfig is a complete configuration on loopback ports chosen by the
// kernel, routing every domain to the sink.
func testConfig(t *testing.T, dataDir, sinkAddr string) *config.Config {
	t.Helper()
	toml := fmt.Sprintf(`
hostname = "hermod.test"
data_dir = %q
shutdown_timeout = "5s"
[submission]
listen = "127.0.0.1:0"
max_message_bytes = 65536
max_recipients = 5
[[submission.users]]
name = "app"
password_hash = %q
accounts = ["*"]
[[submission.users]]
name = "limited"
password_hash = %q
accounts = ["acme", "globex"]
[bounce]
listen = "127.0.0.1:0"
domain = "m.makeleaps.test"
[sender]
default_from = "bounce@makeleaps.test"
dkim_domain = "makeleaps.test"
dkim_algorithm = "ed25519"
[relay]
resolvers = ["127.0.0.1:1"]
retry = ["100ms"]
max_age = "1h"
[[relay.route]]
domain = "*"
host = %q
[api]
listen = "127.0.0.1:0"
[suppress]
soft_bounce_limit = 3
`, dataDir, hashOnce(), hashOnce(), sinkAddr)
	cfg, err := config.Parse([]byte(toml), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startDaemon(t *testing.T, cfg *config.Config) *Daemon {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := New(cfg, log, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return d
}

var reQueued = regexp.MustCompile(`queued as ([0-9a-v]{16})`)

// submitRaw speaks SMTP by hand to see the exact replies.
func submitRaw(t *testing.T, addr string, lines ...string) []string {
	t.Helper()
	conn, err := netDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	rd := newReplyReader(conn)
	replies := []string{rd.next(t)} // greeting
	for _, l := range lines {
		if _, err := io.WriteString(conn, l); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(l, "\r\n") && !strings.HasPrefix(l, "#nowait") {
			replies = append(replies, rd.next(t))
		}
	}
	return replies
}

const plainAuth = "AUTH PLAIN AGFwcABzZWNyZXQtcGFzcw==\r\n" // \0app\0secret-pass

func TestSubmitDeliverSignedAndRewritten(t *testing.T) {
	sink := testnet.NewSink(t)
	cfg := testConfig(t, t.TempDir(), sink.Addr())
	d := startDaemon(t, cfg)

	msg := "From: \"Taro Seikyu\" <taro@customer.test>\r\nTo: hanako@dest.test\r\nSubject: invoice\r\nX-Hermod-Ref: inv-42\r\n\r\nbody line\r\n..leading dot\r\n"
	replies := submitRaw(t, d.Addr("submission.listen"),
		"EHLO client.test\r\n", plainAuth, "MAIL FROM:<app@saas.test>\r\n", "RCPT TO:<hanako@dest.test>\r\n", "DATA\r\n",
		msg+".\r\n", "QUIT\r\n")
	got := replies[len(replies)-2]
	mm := reQueued.FindStringSubmatch(got)
	if !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") || mm == nil {
		t.Fatalf("DATA reply %q", got)
	}
	id := mm[1]
	m, err := sink.Wait("hanako@dest.test", 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	body := string(m.Data)
	for _, want := range []string{"\r\nbody line\r\n.leading dot\r\n", "Reply-To: Taro Seikyu <taro@customer.test>", "From: \"Taro Seikyu (via MakeLeaps)\" <bounce@makeleaps.test>", "Message-Id: <" + id + "@hermod.test>"} {
		if !strings.Contains(body, want) {
			t.Errorf("delivered message lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "X-Hermod") {
		t.Errorf("X-Hermod header left in delivered message:\n%s", body)
	}
	gotID, idx, err := d.VERP.ParseAddress(m.From)
	if err != nil || gotID != id || idx != 0 || !strings.HasSuffix(m.From, "@m.makeleaps.test") {
		t.Errorf("envelope sender %q: %s %d %v", m.From, gotID, idx, err)
	}
	txt, _ := dkim.TXTRecord(d.PlatformSigner.Key.Public())
	res, err := dkim.Verify(bytes.NewReader(m.Data), func(name string) ([]string, error) {
		if name == "hermod._domainkey.makeleaps.test" {
			return []string{txt}, nil
		}
		return nil, errors.New("no such record " + name)
	})
	if err != nil || len(res) != 1 || res[0].Err != nil || res[0].Domain != "makeleaps.test" {
		t.Fatalf("DKIM verification: %+v %v", res, err)
	}
	waitRcpt(t, d, id, 0, queue.StatusSent)

	// The metrics tell the same story.
	tok, err := ReadToken(cfg.DataPath(cfg.API.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+d.Addr("api.listen")+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	wants := []string{`hermod_submissions_total{result="accepted"} 1`, `hermod_queue_recipients{status="sent"} 1`,
		`hermod_deliveries_total{status="sent"} 1`, `hermod_dkim_signatures_total 1`, "hermod_store_commits_total ", "hermod_submission_duration_seconds_bucket"}
	var missing []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		missing = missing[:0]
		for _, want := range wants {
			if !strings.Contains(string(text), want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("/metrics lacks %q", missing)
	}
	req.Header.Del("Authorization")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without token: %v %v", resp.StatusCode, err)
	}
}

func waitRcpt(t *testing.T, d *Daemon, id string, idx int, want queue.Status) *queue.Recipient {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := d.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if r := m.Recipients[idx]; r.Status == want {
			return r
		} else if time.Now().After(deadline) {
			t.Fatalf("%s/%d is %s, want %s; events %+v", id, idx, r.Status, want, r.Events)
		}
		select {
		case <-d.Store.EventsChanged():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestSubmissionRefusals(t *testing.T) {
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, t.TempDir(), sink.Addr()))
	addr := d.Addr("submission.listen")
	cases := []struct {
		name  string
		lines []string
		want  string // prefix of the last reply before QUIT
	}{
		{"mail without auth", []string{"EHLO c.test\r\n", "MAIL FROM:<a@saas.test>\r\n"}, "530 5.7.0"},
		{"wrong password", []string{"EHLO c.test\r\n", "AUTH PLAIN AGFwcAB3cm9uZw==\r\n"}, "535 5.7.8"},
		{"too many recipients", []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n",
			"RCPT TO:<r1@d.test>\r\n", "RCPT TO:<r2@d.test>\r\n", "RCPT TO:<r3@d.test>\r\n", "RCPT TO:<r4@d.test>\r\n", "RCPT TO:<r5@d.test>\r\n", "RCPT TO:<r6@d.test>\r\n"}, "452 4.5.3"},
		{"size declared too big", []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test> SIZE=999999\r\n"}, "552 5.3.4"},
		{"address literal", []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n", "RCPT TO:<x@[127.0.0.1]>\r\n"}, "553 5.1.3"},
		{"percent hack", []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n", "RCPT TO:<x%victim.test@dest.test>\r\n"}, "553 5.1.3"},
		{"no From", dataLines("To: r@d.test\r\nSubject: x\r\n\r\nbody\r\n"), "550 5.6.0"},
		{"two From", dataLines("From: a@customer.test\r\nFrom: b@customer.test\r\n\r\nbody\r\n"), "550 5.6.0"},
		{"bare LF end smuggling", dataLines("From: a@customer.test\r\n\r\nbody\n.\nMAIL FROM:<x@y.test>\r\n"), "550 5.5.2"},
		{"bare CR", dataLines("From: a@customer.test\r\n\r\nbody\r.\r\n"), "550 5.5.2"},
		{"line too long", dataLines("From: a@customer.test\r\n\r\n" + strings.Repeat("x", 1200) + "\r\n"), "550 5.5.2"},
		{"message too big", dataLines("From: a@customer.test\r\n\r\n" + strings.Repeat(strings.Repeat("y", 500)+"\r\n", 200)), "552 5.3.4"},
		{"unknown kind", dataLines("From: a@customer.test\r\nX-Hermod-Kind: newsletter\r\n\r\nbody\r\n"), "550 5.6.0"},
		{"unknown account", dataLines("From: a@customer.test\r\nX-Hermod-Account: nobody\r\n\r\nbody\r\n"), "550 5.7.1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			replies := submitRaw(t, addr, append(tc.lines, "QUIT\r\n")...)
			last := replies[len(replies)-2]
			if !strings.HasPrefix(last, tc.want) {
				t.Errorf("reply %q, want %s…; all replies %q", last, tc.want, replies)
			}
		})
	}
	if c := d.Store.Counts(); c[queue.StatusQueued]+c[queue.StatusSent]+c[queue.StatusDeferred] != 0 {
		t.Errorf("refused submissions left something in the queue: %v", c)
	}
}

func dataLines(msg string) []string {
	return []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n", "RCPT TO:<r@dest.test>\r\n", "DATA\r\n", msg + ".\r\n"}
}

func TestDeferRetryBounceAndSuppression(t *testing.T) {
	sink := testnet.NewSink(t)
	sink.Answer("later@dest.test", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "greylisted, come back later"})
	sink.Answer("gone@dest.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "<gone@dest.test>: Recipient address rejected: User unknown"})
	sink.Answer("blocked@dest.test", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus.org"})
	d := startDaemon(t, testConfig(t, t.TempDir(), sink.Addr()))
	addr := d.Addr("submission.listen")
	msg := "From: a@customer.test\r\nSubject: x\r\n\r\nbody\r\n"
	replies := submitRaw(t, addr, append(dataLinesTo(msg, "later@dest.test", "gone@dest.test", "blocked@dest.test"), "QUIT\r\n")...)
	id := reQueued.FindStringSubmatch(replies[len(replies)-2])[1]

	r := waitRcpt(t, d, id, 0, queue.StatusSent)
	if r.Attempts != 2 || r.Events[1].Status != queue.StatusDeferred || r.Events[1].Text != "greylisted, come back later" {
		t.Errorf("deferred then sent: attempts %d events %+v", r.Attempts, r.Events)
	}
	r = waitRcpt(t, d, id, 1, queue.StatusBounced)
	if r.Reason != "user-unknown" || r.Last.Code != 550 || r.Last.EnhancedCode != "5.1.1" {
		t.Errorf("5xx bounce: %+v", r.Last)
	}
	r = waitRcpt(t, d, id, 2, queue.StatusBounced)
	if r.Reason != "blocked" {
		t.Errorf("blocklisted: reason %q, want blocked", r.Reason)
	}
	if _, ok, _ := d.Suppress.Lookup("", "gone@dest.test"); !ok {
		t.Error("hard bounce did not suppress the address")
	}
	if _, ok, _ := d.Suppress.Lookup("", "blocked@dest.test"); ok {
		t.Error("our own host being blocked suppressed the recipient")
	}
	// The next message to the suppressed address is accepted but not sent.
	replies = submitRaw(t, addr, append(dataLinesTo(msg, "gone@DEST.test", "ok@dest.test"), "QUIT\r\n")...)
	id2 := reQueued.FindStringSubmatch(replies[len(replies)-2])[1]
	r = waitRcpt(t, d, id2, 0, queue.StatusSuppressed)
	if r.Reason != "user-unknown" || r.Attempts != 0 {
		t.Errorf("suppressed recipient: %+v", r)
	}
	waitRcpt(t, d, id2, 1, queue.StatusSent)
}

func dataLinesTo(msg string, rcpts ...string) []string {
	l := []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n"}
	for _, r := range rcpts {
		l = append(l, "RCPT TO:<"+r+">\r\n")
	}
	return append(l, "DATA\r\n", msg+".\r\n")
}

func TestBounceListener(t *testing.T) {
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, t.TempDir(), sink.Addr()))
	msg := "From: a@customer.test\r\nSubject: x\r\n\r\nbody\r\n"
	replies := submitRaw(t, d.Addr("submission.listen"), append(dataLinesTo(msg, "taro@dest.test", "jiro@dest.test"), "QUIT\r\n")...)
	id := reQueued.FindStringSubmatch(replies[len(replies)-2])[1]
	waitRcpt(t, d, id, 0, queue.StatusSent)
	waitRcpt(t, d, id, 1, queue.StatusSent)
	m, _ := d.Store.Get(id)
	verp0, verp1 := m.Recipients[0].EnvelopeFrom, m.Recipients[1].EnvelopeFrom
	baddr := d.Addr("bounce.listen")

	// Forged or foreign recipients are refused at RCPT.
	for _, rcpt := range []string{"bounce-md_" + strings.Repeat("0", 27) + "@m.makeleaps.test", "someone@m.makeleaps.test",
		"victim@gmail.test", strings.Replace(verp0, "@m.makeleaps.test", "@elsewhere.test", 1), verp0[:len(verp0)-len("@m.makeleaps.test")-1] + "x@m.makeleaps.test"} {
		rs := submitRaw(t, baddr, "EHLO mta.test\r\n", "MAIL FROM:<>\r\n", "RCPT TO:<"+rcpt+">\r\n", "QUIT\r\n")
		if !strings.HasPrefix(rs[3], "550 ") {
			t.Errorf("RCPT %s: %q, want 550", rcpt, rs[3])
		}
	}
	// A DSN about jiro sent to taro's VERP address changes nothing.
	rs := submitRaw(t, baddr, "EHLO mta.test\r\n", "MAIL FROM:<>\r\n", "RCPT TO:<"+verp0+">\r\n", "DATA\r\n", dsn("jiro@dest.test")+".\r\n", "QUIT\r\n")
	if !strings.HasPrefix(rs[5], "250 2.0.0 OK: report received") {
		t.Fatalf("DSN refused: %q", rs)
	}
	if _, ok, _ := d.Suppress.Lookup("", "jiro@dest.test"); ok {
		t.Error("a DSN naming another recipient suppressed it")
	}
	if m, _ := d.Store.Get(id); m.Recipients[0].Status != queue.StatusSent || m.Recipients[1].Status != queue.StatusSent {
		t.Errorf("foreign DSN changed statuses: %s %s", m.Recipients[0].Status, m.Recipients[1].Status)
	}
	// The real DSN for jiro, to jiro's VERP address (upper-cased by a folding MTA), bounces it.
	rs = submitRaw(t, baddr, "EHLO mta.test\r\n", "MAIL FROM:<>\r\n", "RCPT TO:<"+strings.ToUpper(verp1)+">\r\n", "DATA\r\n", dsn("jiro@dest.test")+".\r\n", "QUIT\r\n")
	if !strings.HasPrefix(rs[5], "250 2.0.0 OK: report received") {
		t.Fatalf("DSN refused: %q", rs)
	}
	r := waitRcpt(t, d, id, 1, queue.StatusBounced)
	if r.Reason != "user-unknown" || r.Last.Source != "dsn" || r.Last.EnhancedCode != "5.1.1" {
		t.Errorf("after DSN: %+v", r.Last)
	}
	if e, ok, _ := d.Suppress.Lookup("", "jiro@dest.test"); !ok || e.MessageID != id {
		t.Errorf("DSN did not suppress: %+v %v", e, ok)
	}
}

func dsn(rcpt string) string {
	return "From: MAILER-DAEMON@mx.dest.test\r\nTo: bounce@m.makeleaps.test\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n" +
		"--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\r\n" +
		"Final-Recipient: rfc822; " + rcpt + "\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx2.dest.test\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 <" + rcpt + ">: Recipient address rejected: User unknown in virtual mailbox table\r\n\r\n" +
		"--b1--\r\n"
}

func TestRestartDeliversQueuedMail(t *testing.T) {
	sink := testnet.NewSink(t)
	dir := t.TempDir()
	sink.Answer("r@dest.test", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 5}, Message: "busy"},
		&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 5}, Message: "busy"})
	cfg := testConfig(t, dir, sink.Addr())
	cfg.Relay.Retry = []time.Duration{time.Hour}
	d, err := New(cfg, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	replies := submitRaw(t, d.Addr("submission.listen"), append(dataLinesTo("From: a@customer.test\r\n\r\nx\r\n", "r@dest.test"), "QUIT\r\n")...)
	id := reQueued.FindStringSubmatch(replies[len(replies)-2])[1]
	waitRcpt(t, d, id, 0, queue.StatusDeferred)
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Restarted a while later (the retry is an hour away: pretend it passed).
	cfg2 := testConfig(t, dir, sink.Addr())
	cfg2.Relay.MaxAge = 24 * time.Hour
	d2, err := New(cfg2, slog.New(slog.DiscardHandler), Options{Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Start(); err != nil {
		t.Fatal(err)
	}
	defer d2.Shutdown(context.Background())
	r := waitRcpt(t, d2, id, 0, queue.StatusSent)
	if r.Attempts != 3 {
		t.Errorf("attempts %d, want 3 (two 421s then sent)", r.Attempts)
	}
	if _, err := os.Stat(filepath.Join(dir, StoreFile)); err != nil {
		t.Error(err)
	}
}

func TestShutdownDrains(t *testing.T) {
	sink := testnet.NewSink(t)
	cfg := testConfig(t, t.TempDir(), sink.Addr())
	d, err := New(cfg, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	addr := d.Addr("submission.listen")
	// A session in the middle of a transaction when the stop begins.
	conn, err := netDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := newReplyReader(conn)
	rd.next(t)
	for _, l := range []string{"EHLO c.test\r\n", plainAuth, "MAIL FROM:<a@saas.test>\r\n", "RCPT TO:<r@dest.test>\r\n"} {
		io.WriteString(conn, l)
		rd.next(t)
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- d.Shutdown(ctx)
	}()
	// New sessions are told to come back later.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c2, err := netDial(addr)
		if err != nil {
			t.Fatalf("listener closed before open sessions ended: %v", err)
		}
		greet := newReplyReader(c2).next(t)
		c2.Close()
		if strings.HasPrefix(greet, "421 4.3.2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new session during shutdown got %q, want 421", greet)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The open session still gets its message accepted, then is turned away.
	io.WriteString(conn, "DATA\r\n")
	if r := rd.next(t); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA during shutdown: %q", r)
	}
	io.WriteString(conn, "From: a@customer.test\r\n\r\nlast one\r\n.\r\n")
	if r := rd.next(t); !strings.HasPrefix(r, "250 2.0.0 OK: queued as") {
		t.Fatalf("message in flight at shutdown: %q", r)
	}
	io.WriteString(conn, "MAIL FROM:<a@saas.test>\r\n")
	if r := rd.next(t); !strings.HasPrefix(r, "421") {
		t.Fatalf("MAIL after shutdown began: %q", r)
	}
	io.WriteString(conn, "QUIT\r\n")
	conn.Close()
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestWebhookEventsInOrder(t *testing.T) {
	type batch struct {
		Events []queue.Event `json:"events"`
	}
	var mu sync.Mutex
	var got []queue.Event
	var secret []byte
	badSig := 0
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), body, time.Now(), time.Minute) != nil {
			badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var b batch
		json.Unmarshal(body, &b)
		got = append(got, b.Events...)
	}))
	defer recv.Close()
	sink := testnet.NewSink(t)
	cfg := testConfig(t, t.TempDir(), sink.Addr())
	cfg.Webhooks = []config.Webhook{{URL: recv.URL + "/hook", SecretFile: "webhook.secret", Events: []string{"*"}}}
	d := startDaemon(t, cfg)
	tok, err := ReadToken(cfg.DataPath("webhook.secret"))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	secret = []byte(tok)
	mu.Unlock()

	replies := submitRaw(t, d.Addr("submission.listen"), append(dataLinesTo("From: a@customer.test\r\nX-Hermod-Ref: inv-7\r\n\r\nx\r\n", "r@dest.test"), "QUIT\r\n")...)
	id := reQueued.FindStringSubmatch(replies[len(replies)-2])[1]
	waitRcpt(t, d, id, 0, queue.StatusSent)
	m, _ := d.Store.Get(id)
	rs := submitRaw(t, d.Addr("bounce.listen"), "EHLO mta.test\r\n", "MAIL FROM:<>\r\n", "RCPT TO:<"+m.Recipients[0].EnvelopeFrom+">\r\n", "DATA\r\n", dsn("r@dest.test")+".\r\n", "QUIT\r\n")
	if !strings.HasPrefix(rs[5], "250") {
		t.Fatalf("DSN: %q", rs)
	}
	waitRcpt(t, d, id, 0, queue.StatusBounced)
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var statuses []string
	for _, ev := range got {
		statuses = append(statuses, string(ev.Status))
		if ev.MessageID != id || ev.Ref != "inv-7" {
			t.Errorf("event %+v: wrong message or ref", ev)
		}
	}
	if strings.Join(statuses, ",") != "queued,sent,bounced" || badSig != 0 {
		t.Errorf("webhook got %v (bad signatures %d), want queued,sent,bounced exactly once each", statuses, badSig)
	}
}
