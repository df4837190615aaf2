package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hermod-mta/hermod/api"
	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/suppress"
)

func (c *cli) accountCmd(args []string) error {
	if len(args) == 0 {
		return usageError("usage: hermod account set ID --owner ADDR --custom-domain=true|false | account show ID")
	}
	fs, path := c.flags("account " + args[0])
	owner := fs.String("owner", "", "address that receives the domain verification mails")
	custom := fs.Bool("custom-domain", false, "the account has the custom mail domain option")
	if args[0] != "set" && args[0] != "show" {
		return usageError("unknown account command %q: use set or show", args[0])
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError("usage: hermod account %s ID", args[0])
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	ctx := context.Background()
	p := "/v1/accounts/" + url.PathEscape(pos[0])
	var a domain.Account
	if args[0] == "show" {
		if err := cl.Do(ctx, "GET", p, nil, nil, &a); err != nil {
			return err
		}
	} else {
		// Flags not given keep the account's current values: changing the
		// owner must not switch the paid option off.
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		req := api.AccountRequest{Owner: *owner, CustomDomain: *custom}
		if !given["owner"] || !given["custom-domain"] {
			var cur domain.Account
			err := cl.Do(ctx, "GET", p, nil, nil, &cur)
			var ae *api.APIError
			if err != nil && !(errors.As(err, &ae) && ae.Status == 404) {
				return err
			}
			if !given["owner"] {
				req.Owner = cur.Owner
			}
			if !given["custom-domain"] {
				req.CustomDomain = cur.CustomDomain
			}
		}
		if err := cl.Do(ctx, "PUT", p, nil, req, &a); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "account %s\n  owner          %s\n  custom domain  %t\n", a.ID, a.Owner, a.CustomDomain)
	return nil
}

func (c *cli) domainCmd(args []string) error {
	if len(args) == 0 {
		return usageError("usage: hermod domain add|ls|show|rm|check|rotate ACCOUNT [DOMAIN]")
	}
	switch args[0] {
	case "add", "ls", "show", "rm", "check", "rotate":
	default:
		return usageError("unknown domain command %q: use add, ls, show, rm, check or rotate", args[0])
	}
	fs, path := c.flags("domain " + args[0])
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	want := 2
	if args[0] == "ls" {
		want = 1
	}
	if len(pos) != want {
		if want == 1 {
			return usageError("usage: hermod domain ls ACCOUNT")
		}
		return usageError("usage: hermod domain %s ACCOUNT DOMAIN", args[0])
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	ctx := context.Background()
	base := "/v1/accounts/" + url.PathEscape(pos[0]) + "/domains"
	var d api.DomainView
	switch args[0] {
	case "ls":
		var out struct {
			Domains []api.DomainView `json:"domains"`
		}
		if err := cl.Do(ctx, "GET", base, nil, nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DOMAIN\tSTATUS\tLAST CHECK\tREASON")
		for _, d := range out.Domains {
			last := "-"
			if !d.LastCheck.IsZero() {
				last = d.LastCheck.Local().Format("2006-01-02 15:04")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.UnicodeName, d.Status, last, d.Reason)
		}
		return tw.Flush()
	case "add":
		err = cl.Do(ctx, "POST", base, nil, api.DomainRequest{Domain: pos[1]}, &d)
	case "show":
		err = cl.Do(ctx, "GET", base+"/"+url.PathEscape(pos[1]), nil, nil, &d)
	case "check":
		err = cl.Do(ctx, "POST", base+"/"+url.PathEscape(pos[1])+"/check", nil, nil, &d)
	case "rotate":
		err = cl.Do(ctx, "POST", base+"/"+url.PathEscape(pos[1])+"/rotate", nil, nil, &d)
	case "rm":
		if err := cl.Do(ctx, "DELETE", base+"/"+url.PathEscape(pos[1]), nil, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s: removed from account %s; mail from it now uses the platform sender\n", pos[1], pos[0])
		return nil
	default:
		return usageError("unknown domain command %q", args[0])
	}
	if err != nil {
		return err
	}
	c.printDomain(d)
	return nil
}

// printDomain shows a domain with the records to publish, as a person pastes
// them into a DNS console (name, type, value), and the findings of the last check.
func (c *cli) printDomain(d api.DomainView) {
	name := d.UnicodeName
	if name != d.Name {
		name += " (" + d.Name + ")"
	}
	fmt.Fprintf(c.stdout, "domain %s (account %s): %s\n", name, d.Account, d.Status)
	if d.Reason != "" {
		fmt.Fprintf(c.stdout, "  %s\n", d.Reason)
	}
	fmt.Fprintln(c.stdout, "\nPublish these two records (both are required):")
	for _, r := range d.Records {
		check := "not checked yet"
		for _, f := range []domainRecord{{d.DKIM.Type, d.DKIM.OK, d.DKIM.Problem, d.DKIM.Found}, {d.CNAME.Type, d.CNAME.OK, d.CNAME.Problem, d.CNAME.Found}} {
			if f.typ == r.Type && !d.LastCheck.IsZero() {
				check = "ok"
				if !f.ok {
					check = f.problem
					if len(f.found) > 0 {
						check += "; found: " + strings.Join(f.found, " | ")
					}
				}
			}
		}
		fmt.Fprintf(c.stdout, "\n  name:   %s\n  type:   %s\n  value:  %s\n  check:  %s\n", r.Name, r.Type, r.Value, check)
		if r.Zone != "" {
			fmt.Fprintf(c.stdout, "  zone:   %s\n", r.Zone)
		}
	}
	c.printRotation(d)
	fmt.Fprintln(c.stdout)
	if !d.LastCheck.IsZero() {
		fmt.Fprintf(c.stdout, "last check %s\n", d.LastCheck.Local().Format("2006-01-02 15:04:05"))
	}
	if !d.NextCheck.IsZero() {
		fmt.Fprintf(c.stdout, "next check %s (or now: hermod domain check %s %s)\n", d.NextCheck.Local().Format("2006-01-02 15:04:05"), d.Account, d.Name)
	}
}

type domainRecord struct {
	typ     string
	ok      bool
	problem string
	found   []string
}

func (c *cli) suppressCmd(args []string) error {
	if len(args) == 0 {
		return usageError("usage: hermod suppress ls|show|add|rm [ADDRESS]")
	}
	fs, path := c.flags("suppress " + args[0])
	account := fs.String("account", "", "account (with suppress.scope = \"account\")")
	address := fs.String("address", "", "ls: only addresses starting with this")
	reason := fs.String("reason", "manual", "add: the reason recorded")
	detail := fs.String("detail", "", "add: a note")
	limit := fs.Int("limit", 100, "ls: page size")
	page := fs.String("page", "", "ls: page cursor")
	switch args[0] {
	case "ls", "show", "add", "rm":
	default:
		return usageError("unknown suppress command %q: use ls, show, add or rm", args[0])
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if args[0] != "ls" && len(pos) != 1 {
		return usageError("usage: hermod suppress %s ADDRESS", args[0])
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	ctx := context.Background()
	q := url.Values{}
	if *account != "" {
		q.Set("account", *account)
	}
	if args[0] == "ls" {
		q.Set("limit", strconv.Itoa(*limit))
		if *address != "" {
			q.Set("address", *address)
		}
		if *page != "" {
			q.Set("page", *page)
		}
		var out struct {
			Suppressions []suppress.Entry `json:"suppressions"`
			Next         string           `json:"next"`
		}
		if err := cl.Do(ctx, "GET", "/v1/suppressions", q, nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ADDRESS\tACCOUNT\tREASON\tSOURCE\tSINCE\tEXPIRES\tMESSAGE")
		for _, e := range out.Suppressions {
			exp := "never"
			if !e.Expires.IsZero() {
				exp = e.Expires.Local().Format("2006-01-02 15:04")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Address, e.Account, e.Reason, e.Source, e.Created.Local().Format("2006-01-02 15:04"), exp, e.MessageID)
		}
		tw.Flush()
		if out.Next != "" {
			fmt.Fprintf(c.stdout, "-- more: hermod suppress ls -page %s\n", out.Next)
		}
		return nil
	}
	if len(pos) != 1 {
		return usageError("usage: hermod suppress %s ADDRESS", args[0])
	}
	p := "/v1/suppressions/" + url.PathEscape(pos[0])
	var e suppress.Entry
	switch args[0] {
	case "show":
		err = cl.Do(ctx, "GET", p, q, nil, &e)
	case "add":
		err = cl.Do(ctx, "PUT", p, nil, api.SuppressionRequest{Account: *account, Reason: *reason, Detail: *detail}, &e)
	case "rm":
		if err := cl.Do(ctx, "DELETE", p, q, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s: removed from the suppression list; the next message to it will be sent\n", pos[0])
		return nil
	default:
		return usageError("unknown suppress command %q", args[0])
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: suppressed (%s, source %s, since %s)", e.Address, e.Reason, e.Source, e.Created.Local().Format("2006-01-02 15:04:05"))
	if e.MessageID != "" {
		fmt.Fprintf(c.stdout, ", message %s", e.MessageID)
	}
	if e.Detail != "" {
		fmt.Fprintf(c.stdout, "\n  %s", e.Detail)
	}
	fmt.Fprintln(c.stdout)
	return nil
}
