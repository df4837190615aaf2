package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/queue"
)

// The -json output of `queue ls`, `queue show`, `queue summary`, `queue
// tail` and `status` is the API's JSON, one object per line: fields are only
// ever added, never renamed or removed (README, "Machine-readable output").

// writeJSON prints v as one line of JSON.
func (c *cli) writeJSON(v any) error {
	if err := json.NewEncoder(c.stdout).Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// queueSummary prints `hermod queue summary`: one line per destination.
func (c *cli) queueSummary(ctx context.Context, cl *api.Client, by string, asJSON bool) error {
	switch by {
	case queue.SummaryByDomain, queue.SummaryByAccount, queue.SummaryByMX:
	default:
		return usageError("-by must be domain, account or mx, not %q", by)
	}
	var out api.SummaryView
	if err := cl.Do(ctx, "GET", "/v1/queue/summary", url.Values{"by": {by}}, nil, &out); err != nil {
		return err
	}
	if asJSON {
		return c.writeJSON(out)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\tQUEUED\tDEFERRED\tHELD\tOLDEST\tTOP LAST ERROR\n", strings.ToUpper(by))
	for _, r := range out.Rows {
		top := "-"
		if r.TopError != "" {
			top = fmt.Sprintf("%d× %s", r.TopErrorCount, oneLine(r.TopError, 100))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", r.Key, r.Queued, r.Deferred, r.Held, age(time.Duration(r.OldestAge)), top)
	}
	tw.Flush()
	total := 0
	for _, r := range out.Rows {
		total += r.Total
	}
	fmt.Fprintf(c.stdout, "-- %d waiting recipient(s) in %d %s(s)\n", total, len(out.Rows), by)
	return nil
}

// age prints a duration the way a postmaster reads a queue: 3d4h, 2h5m, 40s.
func age(d time.Duration) string {
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// formatAttempt prints one delivery attempt of `queue show`: time, MX host
// and IP, TLS version and cipher or "plain", reply code, enhanced code and
// text, and how long it took.
func formatAttempt(ev queue.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s", ev.Attempt, ev.Time.Local().Format("2006-01-02T15:04:05.000"))
	mx := ev.Host
	if ev.Addr != "" && !strings.Contains(mx, ev.Addr) {
		mx += "[" + ev.Addr + "]"
	}
	if mx == "" {
		mx = "(no MX reached)"
	}
	fmt.Fprintf(&b, " %s", mx)
	switch {
	case ev.TLS == "":
	case ev.TLSCipher != "":
		fmt.Fprintf(&b, " %s %s", ev.TLS, ev.TLSCipher)
	default:
		fmt.Fprintf(&b, " %s", ev.TLS)
	}
	fmt.Fprintf(&b, " %s", ev.Status)
	if reply := strings.TrimSpace(strings.Join([]string{codeStr(ev.Code), ev.EnhancedCode, oneLine(ev.Text, 200)}, " ")); reply != "" {
		fmt.Fprintf(&b, " %s", strings.Join(strings.Fields(reply), " "))
	}
	fmt.Fprintf(&b, " took %s", time.Duration(ev.Duration).Round(time.Millisecond))
	return b.String()
}

// isAttempt reports whether ev records a delivery attempt.
func isAttempt(ev queue.Event) bool { return ev.Attempt > 0 && ev.Type == "" && ev.Source != "expiry" }
