package reliability

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hermod-mta/hermod/internal/testnet"
)

// TestAuthBruteForce tries 12 wrong passwords from one address: the answers
// slow down, then the address is locked out (454 4.7.0), even for the right
// password. Delays are printed, not asserted.
func TestAuthBruteForce(t *testing.T) {
	t.Parallel()
	sink := testnet.NewSink(t)
	d := startDaemon(t, testConfig(t, cfgOpts{sink: sink.Addr()}), daemonOpts())
	addr := d.Addr("submission.listen")
	var cl *client
	var codes []string
	var delays []string
	wrong, locked, reconnects := 0, 0, 0
	for i := 0; i < 12; i++ {
		if cl == nil {
			var g string
			var err error
			cl, g, err = dial(addr)
			if err != nil || !strings.HasPrefix(g, "220") {
				t.Fatalf("dial: %q %v", g, err)
			}
			cl.cmd("EHLO brute.test")
			reconnects++
		}
		start := time.Now()
		r := cl.cmd(authLine("app", fmt.Sprintf("guess-%d", i)))
		if strings.HasPrefix(r, "421 4.7.0") && reconnects < 5 {
			// The command budget before AUTH (10 lines) is spent: a
			// guesser must reconnect, which is what it gets here.
			cl.close()
			cl = nil
			i--
			continue
		}
		delays = append(delays, time.Since(start).Round(10*time.Millisecond).String())
		codes = append(codes, strings.SplitN(r, " ", 3)[0]+" "+strings.SplitN(r+"  ", " ", 3)[1])
		switch {
		case strings.HasPrefix(r, "535 5.7.8"):
			wrong++
		case strings.HasPrefix(r, "454 4.7.0"):
			locked++
		case strings.HasPrefix(r, "2"):
			t.Fatalf("attempt %d: wrong password accepted: %q", i+1, r)
		default:
			t.Errorf("attempt %d: %q", i+1, r)
			cl.close()
			cl = nil
		}
	}
	// Locked out: the right password is refused too, on a new connection.
	if cl != nil {
		cl.close()
	}
	cl = mustDial(t, addr)
	cl.cmd("EHLO brute.test")
	right := cl.cmd(plainAuth)
	cl.close()
	if !strings.HasPrefix(right, "454 4.7.0") {
		t.Errorf("right password during lock-out: %q, want 454 4.7.0", right)
	}
	if locked == 0 || !strings.HasPrefix(codes[len(codes)-1], "454") {
		t.Errorf("no lock-out after 12 failures: %v", codes)
	}
	t.Logf("replies %v", codes)
	summary(t, "auth: brute force from one address slowed then locked: 12 wrong passwords, %d refused 535 then %d locked 454 (right password then: %.9s); delays %s", wrong, locked, right, strings.Join(delays, " "))
}
