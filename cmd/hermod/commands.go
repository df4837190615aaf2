package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/daemon"
	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/queue"
)

func (c *cli) passwd(args []string) error {
	fs, _ := c.flags("passwd")
	cost := fs.Int("cost", 12, "bcrypt cost")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var pw []byte
	if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(c.stderr, "Password: ")
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return err
		}
		fmt.Fprint(c.stderr, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.stderr)
		if err != nil {
			return err
		}
		if string(p1) != string(p2) {
			return fmt.Errorf("the passwords differ")
		}
		pw = p1
	} else {
		line, err := bufio.NewReader(c.stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			return err
		}
		pw = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pw) == 0 {
		return usageError("empty password")
	}
	if len(pw) > 72 {
		return usageError("password longer than 72 bytes (bcrypt's limit)")
	}
	h, err := bcrypt.GenerateFromPassword(pw, *cost)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, string(h))
	return nil
}

// client builds an API client from the configuration.
func (c *cli) client(path string) (*api.Client, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	tok, err := daemon.ReadToken(cfg.DataPath(cfg.API.TokenFile))
	if err != nil {
		return nil, fmt.Errorf("read API token (api.token_file; is this the daemon's config?): %w", err)
	}
	host := cfg.API.Listen
	if h, p, ok := strings.Cut(host, ":"); ok && (h == "" || h == "0.0.0.0") {
		host = "127.0.0.1:" + p
	} else if strings.HasPrefix(host, "[::]:") {
		host = "[::1]:" + strings.TrimPrefix(host, "[::]:")
	}
	return &api.Client{Base: "http://" + host, Token: tok}, nil
}

func (c *cli) queueCmd(args []string) error {
	if len(args) == 0 {
		return usageError("usage: hermod queue ls|show|summary|tail|retry|delete|hold|release")
	}
	if isBulk(args) {
		return c.bulkCmd(args) // bulk.go
	}
	switch args[0] {
	case "ls", "show", "summary", "tail", "retry", "delete":
	default:
		return usageError("unknown queue command %q: use ls, show, summary, tail, retry or delete", args[0])
	}
	fs, path := c.flags("queue " + args[0])
	status := fs.String("status", "", "only messages with a recipient in this status")
	limit := fs.Int("limit", 50, "page size")
	before := fs.String("before", "", "page cursor (a message id)")
	follow := fs.Bool("f", false, "follow: keep printing new events")
	n := fs.Int("n", 20, "events to show before following")
	asJSON := fs.Bool("json", false, "print JSON (one object per line; fields are only added)")
	by := fs.String("by", queue.SummaryByDomain, "summary: group by domain, account or mx")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	needID := func() (string, error) {
		if len(pos) != 1 {
			return "", usageError("usage: hermod queue %s ID", args[0])
		}
		return pos[0], nil
	}
	if (args[0] == "show" || args[0] == "retry" || args[0] == "delete") && len(pos) != 1 {
		return usageError("usage: hermod queue %s ID", args[0])
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch args[0] {
	case "ls":
		q := url.Values{"limit": {strconv.Itoa(*limit)}}
		if *status != "" {
			q.Set("status", *status)
		}
		if *before != "" {
			q.Set("before", *before)
		}
		var out struct {
			Messages []api.MessageView `json:"messages"`
			Next     string            `json:"next"`
			Counts   map[string]int64  `json:"counts"`
		}
		if err := cl.Do(ctx, "GET", "/v1/queue", q, nil, &out); err != nil {
			return err
		}
		if *asJSON {
			return c.writeJSON(out)
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tRECEIVED\tSIZE\tFROM\tRECIPIENT\tSTATUS\tATTEMPTS\tLAST REPLY")
		for _, m := range out.Messages {
			for i, r := range m.Recipients {
				id, recv, size, from := m.ID, m.Received.Local().Format("2006-01-02 15:04:05"), strconv.Itoa(m.Size), m.MailFrom
				if i > 0 {
					id, recv, size, from = "", "", "", ""
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", id, recv, size, from, r.Address, r.Status, r.Attempts, oneLine(r.Remote, 60))
			}
		}
		tw.Flush()
		fmt.Fprintf(c.stdout, "-- queued %d, deferred %d, held %d, sent %d, bounced %d, suppressed %d recipients\n",
			out.Counts["queued"], out.Counts["deferred"], out.Counts["held"], out.Counts["sent"], out.Counts["bounced"], out.Counts["suppressed"])
		if out.Next != "" {
			fmt.Fprintf(c.stdout, "-- more: hermod queue ls -before %s\n", out.Next)
		}
		return nil
	case "show":
		id, err := needID()
		if err != nil {
			return err
		}
		var m api.MessageView
		if err := cl.Do(ctx, "GET", "/v1/messages/"+id, nil, nil, &m); err != nil {
			return err
		}
		if *asJSON {
			return c.writeJSON(m)
		}
		c.printMessage(m, true)
		c.printHeldNotes(m, *path) // bulk.go
		return nil
	case "retry", "delete":
		id, err := needID()
		if err != nil {
			return err
		}
		if args[0] == "retry" {
			var out struct {
				Rescheduled int `json:"rescheduled"`
			}
			if err := cl.Do(ctx, "POST", "/v1/messages/"+id+"/retry", nil, nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s: %d recipient(s) due now\n", id, out.Rescheduled)
			return nil
		}
		if err := cl.Do(ctx, "DELETE", "/v1/messages/"+id, nil, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s: deleted\n", id)
		return nil
	case "summary":
		return c.queueSummary(ctx, cl, *by, *asJSON)
	case "tail":
		return c.tail(ctx, cl, *n, *follow, *asJSON)
	}
	return usageError("unknown queue command %q", args[0])
}

// tail prints the last n events, then follows the stream with long polls.
func (c *cli) tail(ctx context.Context, cl *api.Client, n int, follow, asJSON bool) error {
	type page struct {
		Events []api.EventView `json:"events"`
		Next   uint64          `json:"next"`
	}
	var last page
	if err := cl.Do(ctx, "GET", "/v1/events", url.Values{"tail": {"1"}}, nil, &last); err != nil {
		return err
	}
	after := uint64(0)
	if last.Next > uint64(n) {
		after = last.Next - uint64(n)
	}
	for {
		q := url.Values{"after": {strconv.FormatUint(after, 10)}}
		if follow {
			q.Set("wait", "30s")
		}
		var p page
		if err := cl.Do(ctx, "GET", "/v1/events", q, nil, &p); err != nil {
			return err
		}
		for _, ev := range p.Events {
			if asJSON {
				if err := c.writeJSON(ev); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintln(c.stdout, formatEvent(ev.Event))
		}
		after = p.Next
		if !follow && len(p.Events) == 0 {
			return nil
		}
		if f, ok := c.stdout.(interface{ Sync() error }); ok {
			f.Sync()
		}
	}
}

// formatEvent prints one event like a mail log line.
func formatEvent(ev queue.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: to=<%s>, status=%s", ev.Time.Local().Format("2006-01-02T15:04:05.000"), ev.MessageID, ev.Recipient, ev.Status)
	if ev.Type != "" {
		fmt.Fprintf(&b, ", event=%s", ev.Type)
	}
	if ev.Host != "" {
		fmt.Fprintf(&b, ", relay=%s", ev.Host)
	}
	fmt.Fprintf(&b, ", delay=%s", time.Duration(ev.Delay).Round(time.Millisecond))
	if ev.Reason != "" {
		fmt.Fprintf(&b, ", reason=%s", ev.Reason)
	}
	if ev.Code != 0 || ev.Text != "" {
		fmt.Fprintf(&b, " (%s)", oneLine(strings.TrimSpace(fmt.Sprintf("%s %s %s", codeStr(ev.Code), ev.EnhancedCode, ev.Text)), 200))
	}
	if ev.Note != "" {
		fmt.Fprintf(&b, " [%s]", oneLine(ev.Note, 200))
	}
	if ev.Ref != "" {
		fmt.Fprintf(&b, " ref=%s", ev.Ref)
	}
	return b.String()
}

func codeStr(c int) string {
	if c == 0 {
		return ""
	}
	return strconv.Itoa(c)
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

func (c *cli) printMessage(m api.MessageView, events bool) {
	fmt.Fprintf(c.stdout, "message %s\n  received   %s\n  size       %d\n  mail from  %s\n", m.ID, m.Received.Local().Format(time.RFC3339), m.Size, m.MailFrom)
	for _, kv := range [][2]string{{"from", m.From}, {"submitted", m.HeaderFrom}, {"account", m.Account}, {"ref", m.Ref}, {"kind", m.Kind}, {"dkim d=", m.SigningDomain}, {"message-id", m.MessageID}} {
		if kv[1] != "" {
			fmt.Fprintf(c.stdout, "  %-10s %s\n", kv[0], kv[1])
		}
	}
	for _, r := range m.Recipients {
		fmt.Fprintf(c.stdout, "\nrecipient %d <%s>: %s", r.Index, r.Address, r.Status)
		if r.Reason != "" {
			fmt.Fprintf(c.stdout, " (%s)", r.Reason)
		}
		fmt.Fprintf(c.stdout, "\n  %s / %s\n  envelope from %s, attempts %d\n", r.Message.JA, r.Message.EN, r.EnvelopeFrom, r.Attempts)
		if !r.NextAttempt.IsZero() {
			fmt.Fprintf(c.stdout, "  next attempt %s\n", r.NextAttempt.Local().Format(time.RFC3339))
		}
		if r.Remote != "" {
			fmt.Fprintf(c.stdout, "  remote: %s %s %s %s\n", r.Host, codeStr(r.Code), r.EnhancedCode, oneLine(r.Remote, 300))
		}
		if events {
			header := false
			for _, ev := range r.Events {
				if isAttempt(ev.Event) {
					if !header {
						fmt.Fprintf(c.stdout, "  attempts:\n")
						header = true
					}
					fmt.Fprintf(c.stdout, "    %s\n", formatAttempt(ev.Event))
				}
			}
			for _, ev := range r.Events {
				fmt.Fprintf(c.stdout, "  %s\n", formatEvent(ev.Event))
			}
		}
	}
}

func (c *cli) status(args []string) error {
	fs, path := c.flags("status")
	asJSON := fs.Bool("json", false, "print JSON (one object; fields are only added)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("usage: hermod status ID")
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	var m api.MessageView
	if err := cl.Do(context.Background(), "GET", "/v1/messages/"+pos[0], nil, nil, &m); err != nil {
		return err
	}
	if *asJSON {
		for i := range m.Recipients {
			m.Recipients[i].Events = nil // status is the per-recipient state; queue show -json has the history
		}
		return c.writeJSON(m)
	}
	c.printMessage(m, false)
	return nil
}

func (c *cli) dkimCmd(args []string) error {
	if len(args) > 0 && (args[0] == "rotate" || args[0] == "check") {
		return c.dkimRotate(args[0], args[1:])
	}
	if len(args) == 0 || args[0] != "show" {
		return usageError("usage: hermod dkim show|rotate|check [-config FILE]")
	}
	fs, path := c.flags("dkim show")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	selector, keyFile, _, err := daemon.PlatformKey(cfg)
	if err != nil {
		return err
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("sender.dkim_key_file: %w (it is generated when `hermod serve` first starts)", err)
	}
	k, err := dkim.ParseKey(key)
	if err != nil {
		return fmt.Errorf("sender.dkim_key_file: %w", err)
	}
	txt, err := dkim.TXTRecord(k.Public())
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, dkim.ZoneRecord(selector+"._domainkey."+cfg.Sender.DKIMDomain, txt))
	return nil
}

// errStoreProblems is the error of a store check that found problems.
var errStoreProblems = errors.New("the store has problems (listed above)")

func (c *cli) storeCmd(args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usageError("usage: hermod store check [-config FILE]")
	}
	fs, path := c.flags("store check")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	rep, err := queue.Check(filepath.Join(cfg.DataDir, daemon.StoreFile), "")
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%d messages, %d recipients (", rep.Messages, rep.Recipients)
	for i, st := range queue.Statuses {
		if i > 0 {
			fmt.Fprint(c.stdout, ", ")
		}
		fmt.Fprintf(c.stdout, "%d %s", rep.Counts[st], st)
	}
	fmt.Fprintf(c.stdout, "), %d events, %d body files\n", rep.Events, rep.BodyFiles)
	for _, p := range rep.Problems {
		fmt.Fprintln(c.stdout, "problem:", p)
	}
	if len(rep.Problems) > 0 {
		return errStoreProblems
	}
	fmt.Fprintln(c.stdout, "ok")
	return nil
}

func (c *cli) bounceCmd(args []string) error {
	if len(args) == 0 || args[0] != "parse" {
		return usageError("usage: hermod bounce parse FILE...")
	}
	if len(args) < 2 {
		return usageError("usage: hermod bounce parse FILE... (- for standard input)")
	}
	enc := json.NewEncoder(c.stdout)
	enc.SetEscapeHTML(false)
	failed := 0
	for _, name := range args[1:] {
		var r io.Reader = c.stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				fmt.Fprintln(c.stderr, "hermod:", err)
				failed++
				continue
			}
			defer f.Close()
			r = f
		}
		rep, err := bounce.Parse(r)
		if err != nil {
			fmt.Fprintf(c.stderr, "hermod: %s: %v\n", name, err)
			failed++
			continue
		}
		for _, l := range bounce.Lines(name, rep) {
			enc.Encode(l)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d file(s) could not be read", failed)
	}
	return nil
}
