package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hermod-mta/hermod/bounce"
	"github.com/hermod-mta/hermod/queue"
)

// TestBounceListenerAgreesWithParse: for every message of the bounce
// corpus and every recipient it names, the event the listener records
// (bounceEvent of bounce.Decide with the stored address) says what
// `hermod bounce parse` prints: bounced or not, the same reason and status,
// and suppression (a bounced event with a hard reason, eventHooks) exactly
// when the line says "hard": true. The IDN recipient is stored as typed
// (U-label) while the DSN names the A-label.
func TestBounceListenerAgreesWithParse(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "bounce", "testdata", "corpus", "*.eml"))
	if err != nil || len(files) < 50 {
		t.Fatalf("corpus: %d files, %v", len(files), err)
	}
	remote := netip.MustParseAddr("192.0.2.7")
	lines := 0
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := bounce.Parse(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, l := range bounce.Lines(path, rep) {
			if l.Recipient == "" || seen[strings.ToLower(l.Recipient)] {
				continue
			}
			seen[strings.ToLower(l.Recipient)] = true
			lines++
			stored := l.Recipient
			if stored == "taro@xn--r8jz45g.jp" {
				stored = "taro@例え.jp"
			}
			ev, ok := bounceEvent(bounce.Decide(rep, stored), remote, rep.Subject)
			if ok != (l.Action != bounce.OutcomeIgnore) {
				t.Errorf("%s %s: listener records=%v, bounce parse action %q", path, l.Recipient, ok, l.Action)
				continue
			}
			suppressed := ev.Status == queue.StatusBounced && bounce.Reason(ev.Reason).Hard()
			switch l.Action {
			case bounce.OutcomeBounce:
				if ev.Status != queue.StatusBounced || ev.Reason != string(l.Reason) || ev.EnhancedCode != l.Status || suppressed != l.Hard {
					t.Errorf("%s %s: event %+v (suppressed %v), bounce parse %+v", path, l.Recipient, ev, suppressed, l)
				}
			case bounce.OutcomeComplaint:
				if ev.Status != "" || ev.Source != "feedback" || l.Hard {
					t.Errorf("%s %s: complaint event %+v, line %+v", path, l.Recipient, ev, l)
				}
			case bounce.OutcomeNote:
				if ev.Status != "" || suppressed || l.Hard {
					t.Errorf("%s %s: note event %+v, line %+v", path, l.Recipient, ev, l)
				}
			}
			if ok {
				if _, other := bounceEvent(bounce.Decide(rep, "someone.else@elsewhere.example"), remote, rep.Subject); other {
					t.Errorf("%s: a report naming %s changed someone else", path, l.Recipient)
				}
			}
		}
	}
	if lines < 90 {
		t.Errorf("only %d corpus lines checked", lines)
	}
}
