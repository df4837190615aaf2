package queue

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestSpoolSummary runs every spool fault scenario again and prints the
// reliability suite's one line for the spool (scripts/reliability.sh sets
// HERMOD_SPOOL_SUMMARY=1; each scenario also runs on its own in every
// `go test ./...`).
func TestSpoolSummary(t *testing.T) {
	if os.Getenv("HERMOD_SPOOL_SUMMARY") == "" {
		t.Skip("set HERMOD_SPOOL_SUMMARY=1 (scripts/reliability.sh does)")
	}
	scenarios := []struct {
		name string
		test func(*testing.T)
	}{
		{"disk nearly full", TestDiskNearlyFullRefusesNewMail},
		{"disk full underneath", TestDiskFillsUnderneath},
		{"store unwritable mid-run", TestStoreUnwritableMidRun},
		{"batch replay", TestBatchReplayIsPure},
		{"writes racing close", TestWritesAfterCloseFail},
		{"stop mid-delivery", TestAbortDoesNotCountAnAttempt},
		{"damaged bodies", TestDamagedBodyNeverSent},
		{"damaged or busy data dirs", TestOpenRefuses},
		{"v0 store", TestMigrateV0},
	}
	var broken []string
	for _, sc := range scenarios {
		if !t.Run(sc.name, sc.test) {
			broken = append(broken, sc.name)
		}
	}
	line := fmt.Sprintf("spool: %d fault scenarios, %d broke a promise", len(scenarios), len(broken))
	if len(broken) > 0 {
		line += " (" + strings.Join(broken, ", ") + ")"
	}
	t.Log(line)
	fmt.Println(line)
}
