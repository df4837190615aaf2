package main

import (
	"context"
	"fmt"

	"github.com/hermod-mta/hermod/api"
)

// printRotation shows a domain's DKIM key rollover: while pending, the new
// record to publish beside the current one; once done, when the old record
// may be removed.
func (c *cli) printRotation(d api.DomainView) {
	r := d.Rotation
	if r == nil {
		return
	}
	if r.Pending() {
		check := r.Record.Problem
		if r.Record.OK {
			check = "ok"
		}
		fmt.Fprintf(c.stdout, "\nKey rollover: publish this record too; the current key (selector %s) signs until hermod sees it:\n", r.OldSelector)
		fmt.Fprintf(c.stdout, "\n  name:   %s\n  type:   TXT\n  value:  %s\n  check:  %s\n  zone:   %s\n", r.Record.Name, r.Record.Value, check, r.Record.Zone)
		return
	}
	fmt.Fprintf(c.stdout, "\nKey rollover done %s: selector %s signs; the old record %s._domainkey.%s may be removed after %s\n",
		r.Switched.Local().Format("2006-01-02 15:04:05"), r.Selector, r.OldSelector, d.Name, r.RemoveOldAfter.Local().Format("2006-01-02 15:04:05"))
}

// dkimRotate is `hermod dkim rotate` (start a platform key rollover) and
// `hermod dkim check` (look its record up now), through the daemon.
func (c *cli) dkimRotate(cmd string, args []string) error {
	fs, path := c.flags("dkim " + cmd)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageError("usage: hermod dkim %s [-config FILE]", cmd)
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	var v api.PlatformDKIM
	if err := cl.Do(context.Background(), "POST", "/v1/dkim/"+cmd, nil, nil, &v); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "platform DKIM d=%s: selector %s signs\n", v.Domain, v.Selector)
	r := v.Rotation
	switch {
	case r == nil:
		fmt.Fprintln(c.stdout, "no key rollover")
	case r.Switched.IsZero():
		check := r.Record.Problem
		if r.Record.OK {
			check = "ok"
		}
		fmt.Fprintf(c.stdout, "\nKey rollover: publish this record beside the current one; selector %s signs until hermod sees it (checked every minute; now: hermod dkim check):\n\n%s\n\ncheck: %s\n",
			r.OldSelector, r.Record.Zone, check)
	default:
		fmt.Fprintf(c.stdout, "\nKey rollover done %s: selector %s signs; the old record %s._domainkey.%s may be removed after %s\n",
			r.Switched.Local().Format("2006-01-02 15:04:05"), r.Selector, r.OldSelector, v.Domain, r.RemoveOldAfter.Local().Format("2006-01-02 15:04:05"))
	}
	return nil
}
