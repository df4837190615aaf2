package main

import "github.com/hermod-mta/hermod/bench"

// bench runs the load benchmark (see package bench and README).
func (c *cli) bench(args []string) error {
	return bench.Main(args, c.stdout, c.stderr)
}
