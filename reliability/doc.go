// Package reliability holds hermod's reliability and security suite (issue
// 6): in-process daemons on loopback and the real binary, attacked with SMTP
// smuggling, open-relay tricks, forged bounces, bad API requests, brute force
// and connection floods, faced with failing remote MX hosts and DNS servers,
// loaded for a while and signalled, and asked to lend identities it did not
// grant (identity_test.go). Each promise ends with one summary line
// on standard output ("smuggling: …", "open relay: …", …).
//
// The fast part runs in `go test ./...`; `go test ./reliability -args -long`
// (or HERMOD_SOAK=1) runs the longer soak. scripts/reliability.sh runs
// everything and prints the summary lines.
package reliability
