package config

import (
	"os"
	"testing"
)

// FuzzParse: any input either loads into a configuration that validates
// again, or is refused with an error; it never panics.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../config.example.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("hostname = \"x\"\n[submission]\nlisten = \"127.0.0.1:25\"\n"))
	f.Add([]byte("[relay]\nretry = [\"1m\", \"bad\"]\n"))
	f.Add([]byte("[[relay.route]]\ndomain = \"*\"\nhost = \"127.0.0.1:1\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.toml")
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a configuration that Validate refuses: %v", err)
		}
	})
}
