package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/hermod-mta/hermod/control"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/suppress"
)

const testToken = "test-token-0123456789abcdef"

// noDNS is a resolver for which no record exists: domains stay pending.
type noDNS struct{}

func (noDNS) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}
func (noDNS) LookupCNAME(ctx context.Context, name string) (string, error) {
	return "", &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// scripted answers deliveries by recipient address; unknown ones are sent.
type scripted map[string]queue.Result

func (s scripted) Deliver(ctx context.Context, d queue.Delivery) queue.Result {
	if r, ok := s[d.Recipient.Address]; ok {
		return r
	}
	return queue.Result{Status: queue.StatusSent, Host: "mx.dest.test", Code: 250, EnhancedCode: "2.0.0", Text: "ok"}
}

type apiEnv struct {
	store    *queue.Store
	domains  *domain.Store
	suppress *suppress.List
	srv      *httptest.Server
	// entered, when set, is called as each request reaches the API handler.
	entered atomic.Pointer[func()]
}

// newAPI opens a store in a temporary directory and serves the API over it
// on a loopback httptest server. Nothing delivers until startRunner.
func newAPI(t *testing.T) *apiEnv {
	t.Helper()
	st, err := queue.Open(filepath.Join(t.TempDir(), "hermod.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cs, err := control.OpenBolt(st.DB())
	if err != nil {
		t.Fatal(err)
	}
	ds, err := domain.Open(cs, domain.Options{BounceHost: "m.makeleaps.test", Algorithm: "ed25519", Resolver: noDNS{}})
	if err != nil {
		t.Fatal(err)
	}
	sl, err := suppress.Open(cs, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &apiEnv{store: st, domains: ds, suppress: sl}
	h := api.New(api.Options{Token: testToken, Queue: st, Domains: ds, Suppress: sl})
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := e.entered.Load(); f != nil {
			(*f)()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

// startRunner delivers the queue through d until the test ends.
func (e *apiEnv) startRunner(t *testing.T, d queue.Deliverer) {
	t.Helper()
	r := queue.NewRunner(e.store, d, queue.RunnerOptions{Retry: []time.Duration{time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// enqueue stores a message received at the given time for the recipients.
func (e *apiEnv) enqueue(t *testing.T, at time.Time, ref string, rcpts ...string) string {
	t.Helper()
	m := &queue.Message{ID: queue.NewID(at), Account: "acme", Ref: ref, MailFrom: "app@saas.test",
		HeaderFrom: "taro@customer.test", Received: at}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, &queue.Recipient{Address: r, EnvelopeFrom: "bounce-md_x@m.makeleaps.test"})
	}
	if err := e.store.Enqueue(context.Background(), m, []byte("From: taro@customer.test\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// waitStatus polls the store (bounded) until recipient idx of id has status want.
func (e *apiEnv) waitStatus(t *testing.T, id string, idx int, want queue.Status) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := e.store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Recipients[idx].Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%d is %s, want %s", id, idx, m.Recipients[idx].Status, want)
		}
		select {
		case <-e.store.EventsChanged():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// call sends a request with the test token and returns status and body.
func (e *apiEnv) call(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	return e.callTok(t, "Bearer "+testToken, method, path, body)
}

func (e *apiEnv) callTok(t *testing.T, auth, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q, want JSON", method, path, ct)
	}
	return resp.StatusCode, data
}

// get expects a 2xx answer and decodes it into out.
func (e *apiEnv) ok(t *testing.T, method, path string, body, out any) {
	t.Helper()
	code, data := e.call(t, method, path, body)
	if code/100 != 2 {
		t.Fatalf("%s %s: HTTP %d %s", method, path, code, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, data, err)
		}
	}
}

// fails expects an error answer with the status and code, and returns its text.
func (e *apiEnv) fails(t *testing.T, method, path string, body any, wantStatus int, wantCode string) string {
	t.Helper()
	code, data := e.call(t, method, path, body)
	return checkError(t, method+" "+path, code, data, wantStatus, wantCode)
}

func checkError(t *testing.T, what string, code int, data []byte, wantStatus int, wantCode string) string {
	t.Helper()
	var eb struct {
		Error *string `json:"error"`
		Code  *string `json:"code"`
	}
	if err := json.Unmarshal(data, &eb); err != nil {
		t.Errorf("%s: error answer is not JSON: %s", what, data)
		return ""
	}
	if code != wantStatus || eb.Code == nil || *eb.Code != wantCode || eb.Error == nil || *eb.Error == "" {
		t.Errorf("%s: HTTP %d %s, want %d with code %q and an error text", what, code, data, wantStatus, wantCode)
	}
	if eb.Error == nil {
		return ""
	}
	return *eb.Error
}

type queuePage struct {
	Messages []api.MessageView `json:"messages"`
	Next     string            `json:"next"`
	Counts   map[string]int64  `json:"counts"`
}

type eventsPage struct {
	Events []api.EventView `json:"events"`
	Next   uint64          `json:"next"`
}

func TestAuthAndRouting(t *testing.T) {
	e := newAPI(t)
	for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Basic " + testToken, testToken, "Bearer "} {
		code, data := e.callTok(t, auth, "GET", "/v1/queue", nil)
		checkError(t, fmt.Sprintf("GET /v1/queue with Authorization %q", auth), code, data, http.StatusUnauthorized, "unauthorized")
	}
	// Even unknown paths need the token: nothing is told to a stranger.
	code, data := e.callTok(t, "", "GET", "/v1/nothing-here", nil)
	checkError(t, "GET /v1/nothing-here without a token", code, data, http.StatusUnauthorized, "unauthorized")
	e.fails(t, "GET", "/v1/nothing-here", nil, http.StatusNotFound, "not_found")
	e.fails(t, "GET", "/", nil, http.StatusNotFound, "not_found")
	e.ok(t, "GET", "/v1/queue", nil, nil)
}

func TestMessageStatusWording(t *testing.T) {
	e := newAPI(t)
	e.fails(t, "GET", "/v1/messages/not-an-id", nil, http.StatusBadRequest, "bad_id")
	e.fails(t, "GET", "/v1/messages/"+strings.Repeat("w", 16), nil, http.StatusBadRequest, "bad_id") // w is not base32hex
	e.fails(t, "GET", "/v1/messages/"+queue.NewID(time.Now()), nil, http.StatusNotFound, "not_found")

	id := e.enqueue(t, time.Now(), "invoice-42", "hanako@dest.test", "gone@dest.test")
	var m api.MessageView
	e.ok(t, "GET", "/v1/messages/"+id, nil, &m)
	if m.ID != id || m.Ref != "invoice-42" || m.MailFrom != "app@saas.test" || len(m.Recipients) != 2 {
		t.Fatalf("message view: %+v", m)
	}
	for _, r := range m.Recipients {
		if r.Status != queue.StatusQueued || r.Message.JA != "送信結果待ち" || r.Message.EN != "Waiting for the result" {
			t.Errorf("queued recipient %s: status %s, wording %+v", r.Address, r.Status, r.Message)
		}
		if len(r.Events) != 1 || r.Events[0].Status != queue.StatusQueued || r.Events[0].Message.JA != "送信結果待ち" {
			t.Errorf("queued recipient %s: events %+v", r.Address, r.Events)
		}
	}

	e.startRunner(t, scripted{"gone@dest.test": {Status: queue.StatusBounced, Host: "mx.dest.test", Code: 550,
		EnhancedCode: "5.1.1", Text: "<gone@dest.test>: Recipient address rejected: User unknown", Reason: "user-unknown"}})
	e.waitStatus(t, id, 0, queue.StatusSent)
	e.waitStatus(t, id, 1, queue.StatusBounced)
	e.ok(t, "GET", "/v1/messages/"+id, nil, &m)
	sent, bounced := m.Recipients[0], m.Recipients[1]
	if sent.Address != "hanako@dest.test" || sent.Status != queue.StatusSent || sent.Message.JA != "送信済み" || sent.Message.EN != "Sent" ||
		sent.Code != 250 || sent.Attempts != 1 {
		t.Errorf("sent recipient: %+v", sent)
	}
	if bounced.Status != queue.StatusBounced || bounced.Message.JA != "メールが宛先のシステムで拒否されました" ||
		bounced.Message.EN != "The email was rejected by the recipient's system" || bounced.Reason != "user-unknown" ||
		bounced.Code != 550 || bounced.EnhancedCode != "5.1.1" || !strings.Contains(bounced.Remote, "User unknown") {
		t.Errorf("bounced recipient: %+v", bounced)
	}
	if len(bounced.Events) != 2 || bounced.Events[1].Status != queue.StatusBounced || bounced.Events[1].Message.JA != "メールが宛先のシステムで拒否されました" {
		t.Errorf("bounced events: %+v", bounced.Events)
	}
	if m.Finished.IsZero() {
		t.Error("a message whose recipients are all final has no finished time")
	}

	// A recipient on the suppression list is recorded as suppressed at once.
	sm := &queue.Message{ID: queue.NewID(time.Now()), MailFrom: "app@saas.test", Recipients: []*queue.Recipient{{Address: "gone@dest.test",
		Status: queue.StatusSuppressed, Last: &queue.Event{Reason: "user-unknown", Text: "on the suppression list"}}}}
	if err := e.store.Enqueue(context.Background(), sm, []byte("x")); err != nil {
		t.Fatal(err)
	}
	e.ok(t, "GET", "/v1/messages/"+sm.ID, nil, &m)
	if r := m.Recipients[0]; r.Status != queue.StatusSuppressed || r.Reason != "user-unknown" || r.Attempts != 0 ||
		r.Message.JA != "受信側のシステムによって拒否されたことがあるメールアドレスのため、メールは送信されませんでした" ||
		r.Message.EN != "The email was not sent because this address was rejected by the receiving system before" {
		t.Errorf("suppressed recipient: %+v", r)
	}
}

func TestFindMessages(t *testing.T) {
	e := newAPI(t)
	now := time.Now()
	a := e.enqueue(t, now.Add(-2*time.Second), "invoice-1", "taro@dest.test")
	b := e.enqueue(t, now.Add(-time.Second), "invoice-10", "Jiro@Dest.test", "taro@dest.test")
	ids := func(path string) []string {
		t.Helper()
		var out struct {
			Messages []api.MessageView `json:"messages"`
		}
		e.ok(t, "GET", path, nil, &out)
		var l []string
		for _, m := range out.Messages {
			l = append(l, m.ID)
		}
		return l
	}
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/v1/messages?ref=invoice-1", []string{a}}, // not invoice-10: the ref is exact
		{"/v1/messages?ref=invoice-10", []string{b}},
		{"/v1/messages?ref=none", nil},
		{"/v1/messages?recipient=taro@dest.test", []string{a, b}},
		{"/v1/messages?recipient=jiro@dest.test", []string{b}},
		{"/v1/messages?recipient=" + url.QueryEscape("JIRO@DEST.TEST"), []string{b}},
		{"/v1/messages?recipient=taro@dest", nil},
	} {
		if got := ids(tc.path); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("GET %s: %v, want %v", tc.path, got, tc.want)
		}
	}
	e.fails(t, "GET", "/v1/messages", nil, http.StatusBadRequest, "bad_query")
}

func TestQueuePages(t *testing.T) {
	e := newAPI(t)
	base := time.Now().Add(-time.Minute)
	var ids []string // oldest first
	for i := range 5 {
		ids = append(ids, e.enqueue(t, base.Add(time.Duration(i)*time.Second), "", fmt.Sprintf("r%d@dest.test", i)))
	}
	// The middle one bounces: the status filter finds it.
	if _, err := e.store.Apply(context.Background(), ids[2], 0, queue.Event{Status: queue.StatusBounced, Reason: "user-unknown",
		Code: 550, Text: "no such user", Source: "dsn"}); err != nil {
		t.Fatal(err)
	}

	var p queuePage
	e.ok(t, "GET", "/v1/queue?limit=2", nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{ids[4], ids[3]}) || p.Next != ids[3] {
		t.Fatalf("first page %s next %q, want the two newest and next %s", got, p.Next, ids[3])
	}
	if p.Counts["queued"] != 4 || p.Counts["bounced"] != 1 {
		t.Errorf("counts %v, want 4 queued and 1 bounced", p.Counts)
	}
	e.ok(t, "GET", "/v1/queue?limit=2&before="+p.Next, nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{ids[2], ids[1]}) || p.Next != ids[1] {
		t.Fatalf("second page %s next %q", got, p.Next)
	}
	e.ok(t, "GET", "/v1/queue?limit=2&before="+p.Next, nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{ids[0]}) || p.Next != "" {
		t.Fatalf("last page %s next %q, want only the oldest and no next", got, p.Next)
	}
	for _, m := range p.Messages {
		for _, r := range m.Recipients {
			if len(r.Events) != 0 {
				t.Errorf("queue page carries events: %+v", r.Events)
			}
		}
	}
	e.ok(t, "GET", "/v1/queue?status=bounced", nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{ids[2]}) || p.Next != "" {
		t.Errorf("status=bounced: %s next %q, want only %s", got, p.Next, ids[2])
	}
	if r := p.Messages[0].Recipients[0]; r.Status != queue.StatusBounced || r.Message.EN != "The email was rejected by the recipient's system" {
		t.Errorf("bounced in page: %+v", r)
	}
	e.ok(t, "GET", "/v1/queue?status=queued&limit=10", nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{ids[4], ids[3], ids[1], ids[0]}) {
		t.Errorf("status=queued: %s", got)
	}

	e.fails(t, "GET", "/v1/queue?status=pending", nil, http.StatusBadRequest, "bad_status")
	for _, q := range []string{"limit=0", "limit=-1", "limit=abc", "limit=1001", "before=nope"} {
		e.fails(t, "GET", "/v1/queue?"+q, nil, http.StatusBadRequest, "bad_query")
	}
}

// TestQueueStatusFilterNext: the cursor must be "" when no further message
// has the status asked for, or `hermod queue ls -status` offers a "more"
// page that is empty.
func TestQueueStatusFilterNext(t *testing.T) {
	e := newAPI(t)
	base := time.Now().Add(-time.Minute)
	old := e.enqueue(t, base, "", "a@dest.test")
	bounced := e.enqueue(t, base.Add(time.Second), "", "b@dest.test")
	_ = old
	if _, err := e.store.Apply(context.Background(), bounced, 0, queue.Event{Status: queue.StatusBounced, Reason: "user-unknown", Source: "dsn"}); err != nil {
		t.Fatal(err)
	}
	var p queuePage
	e.ok(t, "GET", "/v1/queue?status=bounced&limit=1", nil, &p)
	if got := pageIDs(p); got != fmt.Sprint([]string{bounced}) {
		t.Fatalf("status=bounced&limit=1: %s", got)
	}
	if p.Next != "" {
		var p2 queuePage
		e.ok(t, "GET", "/v1/queue?status=bounced&limit=1&before="+p.Next, nil, &p2)
		t.Errorf("only one message is bounced, yet the page has next=%q, whose page holds %d message(s)", p.Next, len(p2.Messages))
	}
}

func pageIDs(p queuePage) string {
	var l []string
	for _, m := range p.Messages {
		l = append(l, m.ID)
	}
	return fmt.Sprint(l)
}

func TestRetryAndDelete(t *testing.T) {
	e := newAPI(t)
	id := e.enqueue(t, time.Now(), "ref-del", "a@dest.test", "b@dest.test")
	var rr struct {
		ID          string `json:"id"`
		Rescheduled int    `json:"rescheduled"`
	}
	e.ok(t, "POST", "/v1/messages/"+id+"/retry", nil, &rr)
	if rr.ID != id || rr.Rescheduled != 2 {
		t.Errorf("retry: %+v, want 2 rescheduled", rr)
	}
	e.fails(t, "POST", "/v1/messages/"+queue.NewID(time.Now())+"/retry", nil, http.StatusNotFound, "not_found")

	var del struct {
		Deleted string `json:"deleted"`
	}
	e.ok(t, "DELETE", "/v1/messages/"+id, nil, &del)
	if del.Deleted != id {
		t.Errorf("delete answer %+v", del)
	}
	e.fails(t, "GET", "/v1/messages/"+id, nil, http.StatusNotFound, "not_found")
	e.fails(t, "DELETE", "/v1/messages/"+id, nil, http.StatusNotFound, "not_found")
	var found struct {
		Messages []api.MessageView `json:"messages"`
	}
	e.ok(t, "GET", "/v1/messages?ref=ref-del", nil, &found)
	if len(found.Messages) != 0 {
		t.Errorf("deleted message still found by ref: %+v", found.Messages)
	}
	var p queuePage
	e.ok(t, "GET", "/v1/queue", nil, &p)
	if len(p.Messages) != 0 || p.Counts["queued"] != 0 {
		t.Errorf("after delete the queue shows %d messages, counts %v", len(p.Messages), p.Counts)
	}

	// A finished message has nothing to retry.
	e.startRunner(t, scripted{})
	id2 := e.enqueue(t, time.Now(), "", "c@dest.test")
	e.waitStatus(t, id2, 0, queue.StatusSent)
	e.ok(t, "POST", "/v1/messages/"+id2+"/retry", nil, &rr)
	if rr.Rescheduled != 0 {
		t.Errorf("retry of a sent message rescheduled %d", rr.Rescheduled)
	}
}

func TestEvents(t *testing.T) {
	e := newAPI(t)
	var p eventsPage
	e.ok(t, "GET", "/v1/events", nil, &p)
	if len(p.Events) != 0 || p.Next != 0 {
		t.Errorf("empty log: %+v", p)
	}
	id1 := e.enqueue(t, time.Now(), "r1", "a@dest.test", "b@dest.test")
	id2 := e.enqueue(t, time.Now(), "r2", "c@dest.test")
	e.ok(t, "GET", "/v1/events?after=0", nil, &p)
	if len(p.Events) != 3 || p.Next != p.Events[2].Seq {
		t.Fatalf("after=0: %d events, next %d", len(p.Events), p.Next)
	}
	want := []struct {
		id, rcpt string
	}{{id1, "a@dest.test"}, {id1, "b@dest.test"}, {id2, "c@dest.test"}}
	for i, ev := range p.Events {
		if ev.MessageID != want[i].id || ev.Recipient != want[i].rcpt || ev.Status != queue.StatusQueued || ev.Message.JA != "送信結果待ち" ||
			(i > 0 && ev.Seq <= p.Events[i-1].Seq) {
			t.Errorf("event %d: %+v, want %s %s queued, in order", i, ev, want[i].id, want[i].rcpt)
		}
	}
	first := p.Events[0].Seq
	e.ok(t, "GET", fmt.Sprintf("/v1/events?after=%d&limit=1", first), nil, &p)
	if len(p.Events) != 1 || p.Events[0].Recipient != "b@dest.test" || p.Next != p.Events[0].Seq {
		t.Errorf("after=%d&limit=1: %+v", first, p)
	}
	last := p.Next + 1
	e.ok(t, "GET", fmt.Sprintf("/v1/events?after=%d", last), nil, &p)
	if len(p.Events) != 0 || p.Next != last {
		t.Errorf("after the end: %+v, want no events and next %d", p, last)
	}
	e.ok(t, "GET", "/v1/events?tail=1", nil, &p)
	if len(p.Events) != 0 || p.Next != last {
		t.Errorf("tail=1: %+v, want no events and next = last seq %d", p, last)
	}
	for _, q := range []string{"wait=abc", "wait=2m", "wait=-1s", "after=-1", "after=x", "limit=0"} {
		e.fails(t, "GET", "/v1/events?"+q, nil, http.StatusBadRequest, "bad_query")
	}
}

func TestEventsLongPoll(t *testing.T) {
	e := newAPI(t)
	e.enqueue(t, time.Now(), "", "old@dest.test")
	seq, err := e.store.LastEventSeq()
	if err != nil {
		t.Fatal(err)
	}
	// Know when the long poll has reached the server.
	active := make(chan struct{})
	var once sync.Once
	entered := func() { once.Do(func() { close(active) }) }
	e.entered.Store(&entered)
	type result struct {
		code int
		p    eventsPage
		body []byte
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/events?after=%d&wait=5s", e.srv.URL, seq), nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{code: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		var r result
		r.code = resp.StatusCode
		r.body, _ = io.ReadAll(resp.Body)
		json.Unmarshal(r.body, &r.p)
		got <- r
	}()
	<-active
	id := e.enqueue(t, time.Now(), "", "new@dest.test")
	select {
	case r := <-got:
		if r.code != http.StatusOK || len(r.p.Events) != 1 || r.p.Events[0].MessageID != id || r.p.Events[0].Recipient != "new@dest.test" || r.p.Next != r.p.Events[0].Seq {
			t.Errorf("long poll answered HTTP %d %s, want the one new event", r.code, r.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("long poll did not answer")
	}
}

func TestAccountsAndDomains(t *testing.T) {
	e := newAPI(t)
	msg := e.fails(t, "PUT", "/v1/accounts/acme", api.AccountRequest{Owner: "Taro <taro@acme.test>"}, http.StatusBadRequest, "invalid_account")
	if !strings.Contains(msg, "owner") {
		t.Errorf("bad owner refused with %q, want it to name the owner", msg)
	}
	e.fails(t, "PUT", "/v1/accounts/acme", api.AccountRequest{Owner: "not an address"}, http.StatusBadRequest, "invalid_account")

	var a domain.Account
	e.ok(t, "PUT", "/v1/accounts/acme", api.AccountRequest{Owner: "owner@acme.test", CustomDomain: true}, &a)
	if a.ID != "acme" || a.Owner != "owner@acme.test" || !a.CustomDomain {
		t.Errorf("PUT account: %+v", a)
	}
	e.ok(t, "GET", "/v1/accounts/acme", nil, &a)
	if a.ID != "acme" || !a.CustomDomain {
		t.Errorf("GET account: %+v", a)
	}
	e.ok(t, "PUT", "/v1/accounts/plain", api.AccountRequest{Owner: "owner@plain.test"}, nil)
	e.fails(t, "GET", "/v1/accounts/nobody", nil, http.StatusNotFound, "account_not_found")

	var d api.DomainView
	e.ok(t, "POST", "/v1/accounts/acme/domains", api.DomainRequest{Domain: "Acme.Example."}, &d)
	if d.Name != "acme.example" || d.Account != "acme" || d.Status != domain.StatusPending || len(d.Records) != 2 {
		t.Fatalf("added domain: %+v", d)
	}
	txt, cname := d.Records[0], d.Records[1]
	if txt.Type != "TXT" || txt.Name != d.Selector+"._domainkey.acme.example" || !strings.HasPrefix(txt.Value, "\"v=DKIM1;") || !strings.Contains(txt.Value, "p=") {
		t.Errorf("TXT record: %+v", txt)
	}
	if cname.Type != "CNAME" || cname.Name != "hermod-bounce.acme.example" || cname.Value != "m.makeleaps.test" {
		t.Errorf("CNAME record: %+v", cname)
	}
	var got api.DomainView
	e.ok(t, "GET", "/v1/accounts/acme/domains/acme.example", nil, &got)
	if len(got.Records) != 2 || got.Records[0].Name != txt.Name || got.Records[0].Value != txt.Value || got.Records[1].Name != cname.Name || got.Records[1].Value != cname.Value {
		t.Errorf("GET domain records %+v, want %+v and %+v", got.Records, txt, cname)
	}
	var list struct {
		Domains []api.DomainView `json:"domains"`
	}
	e.ok(t, "GET", "/v1/accounts/acme/domains", nil, &list)
	if len(list.Domains) != 1 || list.Domains[0].Name != "acme.example" {
		t.Errorf("domain list: %+v", list.Domains)
	}

	for _, tc := range []struct {
		account, input string
		status         int
		code           string
	}{
		{"plain", "plain.example", http.StatusForbidden, domain.CodeOptionRequired},
		{"acme", "taro@acme2.example", http.StatusBadRequest, domain.CodeNotADomain},
		{"acme", "@acme2.example", http.StatusBadRequest, domain.CodeNotADomain},
		{"acme", "gmail.com", http.StatusBadRequest, domain.CodeFreemail},
		{"acme", "yahoo.co.jp", http.StatusBadRequest, domain.CodeFreemail},
		{"acme", "co.jp", http.StatusBadRequest, domain.CodePublicSuffix},
		{"acme", "github.io", http.StatusBadRequest, domain.CodePublicSuffix},
		{"acme", "ACME.example", http.StatusConflict, domain.CodeExists},
		{"nobody", "nobody.example", http.StatusNotFound, domain.CodeAccountNotFound},
	} {
		e.fails(t, "POST", "/v1/accounts/"+tc.account+"/domains", api.DomainRequest{Domain: tc.input}, tc.status, tc.code)
	}
	e.ok(t, "PUT", "/v1/accounts/globex", api.AccountRequest{Owner: "o@globex.test", CustomDomain: true}, nil)
	e.fails(t, "POST", "/v1/accounts/globex/domains", api.DomainRequest{Domain: "acme.example"}, http.StatusConflict, domain.CodeTaken)
	e.fails(t, "GET", "/v1/accounts/globex/domains/acme.example", nil, http.StatusNotFound, domain.CodeNotFound)
	e.fails(t, "GET", "/v1/accounts/nobody/domains", nil, http.StatusNotFound, domain.CodeAccountNotFound)

	var del struct {
		Deleted string `json:"deleted"`
	}
	e.ok(t, "DELETE", "/v1/accounts/acme/domains/acme.example", nil, &del)
	if del.Deleted != "acme.example" {
		t.Errorf("delete answer %+v", del)
	}
	e.fails(t, "GET", "/v1/accounts/acme/domains/acme.example", nil, http.StatusNotFound, domain.CodeNotFound)
	e.fails(t, "DELETE", "/v1/accounts/acme/domains/acme.example", nil, http.StatusNotFound, domain.CodeNotFound)
	e.ok(t, "GET", "/v1/accounts/acme/domains", nil, &list)
	if len(list.Domains) != 0 {
		t.Errorf("after delete: %+v", list.Domains)
	}
	// Once removed it can be registered by another account.
	e.ok(t, "POST", "/v1/accounts/globex/domains", api.DomainRequest{Domain: "acme.example"}, nil)
}

func TestSuppressions(t *testing.T) {
	e := newAPI(t)
	e.fails(t, "GET", "/v1/suppressions/taro@dest.test", nil, http.StatusNotFound, "not_found")
	e.fails(t, "DELETE", "/v1/suppressions/taro@dest.test", nil, http.StatusNotFound, "not_found")

	var en suppress.Entry
	e.ok(t, "PUT", "/v1/suppressions/Taro@DEST.test", api.SuppressionRequest{Reason: "user-unknown", Detail: "checked by support"}, &en)
	if en.Address != "Taro@dest.test" || en.Reason != "user-unknown" || en.Source != "api" || en.Detail != "checked by support" || en.Created.IsZero() {
		t.Errorf("PUT suppression: %+v", en)
	}
	e.ok(t, "PUT", "/v1/suppressions/jiro@dest.test", api.SuppressionRequest{}, &en)
	if en.Reason != "manual" {
		t.Errorf("default reason %q, want manual", en.Reason)
	}
	e.ok(t, "PUT", "/v1/suppressions/hanako@other.test", api.SuppressionRequest{}, nil)
	e.ok(t, "GET", "/v1/suppressions/Taro@dest.TEST", nil, &en)
	if en.Address != "Taro@dest.test" || en.Reason != "user-unknown" {
		t.Errorf("GET suppression: %+v", en)
	}

	var list struct {
		Suppressions []suppress.Entry `json:"suppressions"`
		Next         string           `json:"next"`
	}
	addrs := func() string {
		var l []string
		for _, s := range list.Suppressions {
			l = append(l, s.Address)
		}
		return fmt.Sprint(l)
	}
	e.ok(t, "GET", "/v1/suppressions", nil, &list)
	if addrs() != "[Taro@dest.test hanako@other.test jiro@dest.test]" || list.Next != "" {
		t.Errorf("list: %s next %q", addrs(), list.Next)
	}
	e.ok(t, "GET", "/v1/suppressions?limit=2", nil, &list)
	if addrs() != "[Taro@dest.test hanako@other.test]" || list.Next == "" {
		t.Fatalf("page 1: %s next %q", addrs(), list.Next)
	}
	e.ok(t, "GET", "/v1/suppressions?limit=2&page="+url.QueryEscape(list.Next), nil, &list)
	if addrs() != "[jiro@dest.test]" || list.Next != "" {
		t.Errorf("page 2: %s next %q", addrs(), list.Next)
	}
	e.ok(t, "GET", "/v1/suppressions?address=jiro", nil, &list)
	if addrs() != "[jiro@dest.test]" {
		t.Errorf("address=jiro: %s", addrs())
	}

	var rm struct {
		Removed string `json:"removed"`
	}
	e.ok(t, "DELETE", "/v1/suppressions/jiro@dest.test", nil, &rm)
	if rm.Removed != "jiro@dest.test" {
		t.Errorf("remove answer %+v", rm)
	}
	e.fails(t, "GET", "/v1/suppressions/jiro@dest.test", nil, http.StatusNotFound, "not_found")
	e.fails(t, "DELETE", "/v1/suppressions/jiro@dest.test", nil, http.StatusNotFound, "not_found")

	e.fails(t, "PUT", "/v1/suppressions/not-an-address", api.SuppressionRequest{}, http.StatusBadRequest, "bad_address")
	e.fails(t, "PUT", "/v1/suppressions/x@dest.test", api.SuppressionRequest{Detail: "a\r\nInjected: yes"}, http.StatusBadRequest, "bad_json")
	e.fails(t, "GET", "/v1/suppressions?limit=0", nil, http.StatusBadRequest, "bad_query")
}

func TestRequestBodies(t *testing.T) {
	e := newAPI(t)
	big := `{"owner":"` + strings.Repeat("a", 2<<20) + `@acme.test"}`
	e.fails(t, "PUT", "/v1/accounts/acme", big, http.StatusRequestEntityTooLarge, "too_large")
	e.fails(t, "PUT", "/v1/accounts/acme", `{"owner": "o@acme.test",`, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/accounts/acme", `not json`, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/accounts/acme", ``, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/accounts/acme", `{"owner":"o@acme.test","custom_domain":"yes"}`, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/accounts/acme", `{"owner":"o@acme.test","customdomain":true}`, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/accounts/acme", `{"owner":"o@acme.test"} {"owner":"p@acme.test"}`, http.StatusBadRequest, "bad_json")
	e.fails(t, "POST", "/v1/accounts/acme/domains", `{"domain":"acme.example","account":"other"}`, http.StatusBadRequest, "bad_json")
	e.fails(t, "PUT", "/v1/suppressions/x@dest.test", `{"reason":"manual","expires":"tomorrow"}`, http.StatusBadRequest, "bad_json")
	// Nothing was stored by the refused requests.
	e.fails(t, "GET", "/v1/accounts/acme", nil, http.StatusNotFound, "account_not_found")
	// A body just under the limit is read.
	ok := `{"owner":"o@acme.test","custom_domain":true}` + strings.Repeat(" ", 1<<20-100)
	e.ok(t, "PUT", "/v1/accounts/acme", ok, nil)
}

func TestWrongMethodAndPathAreJSON(t *testing.T) {
	e := newAPI(t)
	e.fails(t, "PATCH", "/v1/messages/0123456789abcdef", nil, http.StatusMethodNotAllowed, "method_not_allowed")
	e.fails(t, "GET", "/v1/nothing-here", nil, http.StatusNotFound, "not_found")
}
