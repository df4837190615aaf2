package suppress

import "github.com/hermod-mta/hermod/vocab"

// ErrInvalidAddress is wrapped by every error NormalizeAddress returns, and so
// by every method given an address it cannot normalise. It is
// vocab.ErrInvalidAddress: the normalisation lives in vocab.ParseAddress,
// shared with the listeners, so that every part of hermod keys an address
// the same way.
var ErrInvalidAddress = vocab.ErrInvalidAddress

// NormalizeAddress returns the form of a mailbox address the suppression list
// is keyed by: vocab.ParseAddress as a string (domain lower-cased and in
// A-label form, local part kept as given with canonical quoting).
func NormalizeAddress(addr string) (string, error) {
	a, err := vocab.ParseAddress(addr)
	return string(a), err
}
