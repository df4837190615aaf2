package config

import (
	"strings"
	"testing"
	"time"
)

// TestDelayWarning: absent is 4h, "0" disables (stays 0), a value is kept,
// a negative one is refused naming the key.
func TestDelayWarning(t *testing.T) {
	for _, c := range []struct {
		extra string
		want  time.Duration
	}{
		{"", 4 * time.Hour},
		{"[relay]\ndelay_warning = \"0\"\n", 0},
		{"[relay]\ndelay_warning = \"90m\"\n", 90 * time.Minute},
	} {
		cfg, err := Parse([]byte(minimal+c.extra), "test.toml")
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if cfg.Relay.DelayWarning != c.want {
			t.Errorf("%q: delay_warning %s, want %s", c.extra, cfg.Relay.DelayWarning, c.want)
		}
	}
	_, err := Parse([]byte(minimal+"[relay]\ndelay_warning = \"-1h\"\n"), "test.toml")
	if err == nil || !strings.Contains(err.Error(), "relay.delay_warning") {
		t.Errorf("negative delay_warning: %v", err)
	}
}
