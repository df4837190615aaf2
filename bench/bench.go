// Package bench is `hermod bench`: a bounded load benchmark on loopback.
package bench

import (
	"errors"
	"io"
)

// Main runs the benchmark with command-line args and prints one figure per line.
func Main(args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: not implemented yet")
}
