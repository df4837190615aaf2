package main

import (
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
