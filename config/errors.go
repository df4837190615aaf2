package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNoConfig is returned, wrapped, by [Load] when the configuration file does
// not exist, so that callers can tell "nothing to read" from "read but invalid"
// with errors.Is.
var ErrNoConfig = errors.New("config: no configuration file")

// Error is one problem with the configuration: the key it concerns, the line of
// the file where that key (or the nearest enclosing table) appears, and what is
// wrong. Any part may be unknown: File is "" for text given to [Parse] without a
// path, Line is 0 when the key is not in the file (a missing required key) or
// could not be located, Key is "" for TOML syntax errors.
type Error struct {
	File string
	Line int
	Key  string // full dotted key path, e.g. "submission.users[0].password_hash"
	Msg  string
}

// Error formats e as "config: <file>:<line>: <key>: <msg>", leaving out the
// parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// errList collects *Error values in the order they were found.
type errList []*Error

func (l *errList) add(key, format string, args ...any) {
	*l = append(*l, &Error{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// err returns nil, the single *Error, or errors.Join of all of them.
func (l errList) err() error {
	switch len(l) {
	case 0:
		return nil
	case 1:
		return l[0]
	}
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errors.Join(errs...)
}
