// Package hermod is a transactional mail relay (MTA); the daemon and CLI are
// in cmd/hermod. This package holds what is embedded from the module root.
package hermod

import _ "embed"

// ExampleConfig is config.example.toml: every configuration key documented
// with its default. It is valid as it is (config.Parse accepts it), so it
// serves as the embedded default configuration and as the template that
// `hermod config` prints.
//
//go:embed config.example.toml
var ExampleConfig []byte
