package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/queue"
)

// isBulk reports whether a queue subcommand line is a bulk action: hold and
// release always; retry and delete with a filter flag or other than one id
// (one id alone keeps the message endpoints and their output).
func isBulk(args []string) bool {
	switch args[0] {
	case "hold", "release":
		return true
	case "retry", "delete":
	default:
		return false
	}
	ids := 0
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			ids++
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch name {
		case "account", "domain", "status", "older-than", "rcpt", "ref", "dry-run", "sample":
			return true
		case "config":
			if !hasValue {
				i++ // its value
			}
		}
	}
	return ids != 1
}

// bulkCmd runs hermod queue hold|release|retry|delete [ID...] [filters]
// against the daemon's POST /v1/queue/{action}.
func (c *cli) bulkCmd(args []string) error {
	action := queue.BulkAction(args[0])
	fs, path := c.flags("queue " + args[0])
	var req api.BulkRequest
	fs.StringVar(&req.Account, "account", "", "only messages of this account")
	fs.StringVar(&req.Domain, "domain", "", "only recipients in this domain (IDN: either form)")
	status := fs.String("status", "", "only recipients in this status")
	fs.StringVar(&req.OlderThan, "older-than", "", "only messages accepted at least this long ago (90m, 6h, 2d)")
	fs.StringVar(&req.Rcpt, "rcpt", "", "only this recipient address")
	fs.StringVar(&req.Ref, "ref", "", "only messages with this X-Hermod-Ref")
	fs.BoolVar(&req.DryRun, "dry-run", false, "print how many recipients would change and a sample; change nothing")
	fs.IntVar(&req.Sample, "sample", 10, "recipients to list")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	req.IDs, req.Status = pos, queue.Status(*status)
	if len(pos) == 0 && req.Account == "" && req.Domain == "" && req.Status == "" && req.OlderThan == "" &&
		req.Rcpt == "" && req.Ref == "" {
		return usageError("usage: hermod queue %s ID... | [-account A] [-domain D] [-status S] [-older-than AGE] [-rcpt ADDR] [-ref R] [-dry-run]", action)
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	var res queue.BulkResult
	if err := cl.Do(context.Background(), "POST", "/v1/queue/"+string(action), nil, &req, &res); err != nil {
		return err
	}
	verb := map[queue.BulkAction]string{queue.ActionHold: "held", queue.ActionRelease: "released",
		queue.ActionRetry: "due now", queue.ActionDelete: "deleted"}[action]
	if res.DryRun {
		fmt.Fprintf(c.stdout, "dry run: %d recipient(s) in %d message(s) would be %s\n", res.Recipients, res.Messages, verb)
	} else {
		fmt.Fprintf(c.stdout, "%d recipient(s) in %d message(s) %s\n", res.Recipients, res.Messages, verb)
	}
	if len(res.Sample) > 0 {
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tRCPT\tRECIPIENT\tACCOUNT\tWAS\tAGE")
		for _, it := range res.Sample {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", it.ID, it.Index, it.Address, it.Account, it.Status,
				time.Since(it.Received).Round(time.Second))
		}
		tw.Flush()
		if n := res.Recipients - len(res.Sample); n > 0 {
			fmt.Fprintf(c.stdout, "-- and %d more\n", n)
		}
	}
	// Holding does not stop the clock: say which recipients are (or would
	// be) past the queue lifetime, so that release is not a surprise.
	if maxAge := cfg.Relay.MaxAge; maxAge > 0 && (action == queue.ActionHold || action == queue.ActionRelease) {
		past := 0
		for _, it := range res.Sample {
			if time.Since(it.Received) >= maxAge {
				past++
			}
		}
		if past > 0 {
			fmt.Fprintf(c.stdout, "-- %d listed recipient(s) are past relay.max_age (%s): once released, their next temporary failure bounces them (expired)\n",
				past, maxAge)
		}
	}
	return nil
}

// printHeldNotes tells, for each held recipient of m, when its queue
// lifetime (relay.max_age, from the configuration at path) ends or that it
// has ended: a hold does not stop that clock.
func (c *cli) printHeldNotes(m api.MessageView, path string) {
	cfg, err := loadConfig(path)
	if err != nil || cfg.Relay.MaxAge <= 0 {
		return
	}
	end := m.Received.Add(cfg.Relay.MaxAge)
	for _, r := range m.Recipients {
		if r.Status != queue.StatusHeld {
			continue
		}
		if time.Now().Before(end) {
			fmt.Fprintf(c.stdout, "\nrecipient %d is held; its relay.max_age (%s) ends %s: released after that, its next temporary failure bounces it (expired)\n",
				r.Index, cfg.Relay.MaxAge, end.Local().Format(time.RFC3339))
		} else {
			fmt.Fprintf(c.stdout, "\nrecipient %d is held past relay.max_age (%s, ended %s): released now, its next temporary failure bounces it (expired)\n",
				r.Index, cfg.Relay.MaxAge, end.Local().Format(time.RFC3339))
		}
	}
}
