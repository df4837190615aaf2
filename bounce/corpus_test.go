package bounce

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// corpusDir holds the hand-written bounce corpus and its reviewed
// expectations (expect.txt).
const corpusDir = "testdata/corpus"

// expectRow is one line of expect.txt.
type expectRow struct {
	file, recipient, status string
	reason                  Reason
	hard                    bool
	action                  Outcome
}

func dash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

func loadExpect(t testing.TB) map[string][]expectRow {
	t.Helper()
	f, err := os.Open(filepath.Join(corpusDir, "expect.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]expectRow{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		fs := strings.Fields(l)
		if len(fs) != 6 || (fs[4] != "true" && fs[4] != "false") {
			t.Fatalf("expect.txt:%d: want 6 fields (file recipient status reason hard action): %q", n, l)
		}
		out[fs[0]] = append(out[fs[0]], expectRow{fs[0], dash(fs[1]), dash(fs[2]), Reason(dash(fs[3])), fs[4] == "true", Outcome(fs[5])})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func corpusFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// corpusResult pairs each expected row with the line bounce parse printed
// for its recipient (nil when none), plus lines nobody expected.
type corpusResult struct {
	rows  []expectRow
	got   []*Line
	extra []Line
}

func runCorpus(t testing.TB) corpusResult {
	t.Helper()
	want := loadExpect(t)
	var res corpusResult
	seen := map[string]bool{}
	for _, path := range corpusFiles(t) {
		name := filepath.Base(path)
		seen[name] = true
		rows, ok := want[name]
		if !ok {
			t.Errorf("%s: no line in expect.txt", name)
			continue
		}
		lines := Lines(name, parseFile(t, path))
		used := make([]bool, len(lines))
		for _, w := range rows {
			var match *Line
			for i := range lines {
				if used[i] {
					continue
				}
				if (w.recipient == "" && lines[i].Recipient == "") || SameAddress(w.recipient, lines[i].Recipient) {
					used[i], match = true, &lines[i]
					break
				}
			}
			res.rows = append(res.rows, w)
			res.got = append(res.got, match)
		}
		for i, l := range lines {
			if !used[i] {
				res.extra = append(res.extra, l)
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("expect.txt names %s, which is not in %s", name, corpusDir)
		}
	}
	return res
}

// TestCorpus checks every message of the corpus against expect.txt.
func TestCorpus(t *testing.T) {
	res := runCorpus(t)
	if len(res.rows) < 50 {
		t.Fatalf("corpus has %d expected recipients, want at least 50", len(res.rows))
	}
	for i, w := range res.rows {
		g := res.got[i]
		if g == nil {
			t.Errorf("%s: no line for recipient %q", w.file, w.recipient)
			continue
		}
		if g.Status != w.status || g.Reason != w.reason || g.Hard != w.hard || g.Action != w.action {
			t.Errorf("%s %s: got status %q reason %q hard %v action %q (%s); want %q %q %v %q",
				w.file, w.recipient, g.Status, g.Reason, g.Hard, g.Action, g.Diagnostic, w.status, w.reason, w.hard, w.action)
		}
	}
	for _, l := range res.extra {
		t.Errorf("%s: unexpected line for recipient %q (%s %s)", l.File, l.Recipient, l.Status, l.Reason)
	}
}

// TestCorpusAgreement: `hermod bounce parse` and the bounce listener give
// the same decision for every recipient of every corpus message. The
// listener calls Decide with the stored address; parse prints Lines.
func TestCorpusAgreement(t *testing.T) {
	for _, path := range corpusFiles(t) {
		rep := parseFile(t, path)
		first := map[string]bool{}
		for _, l := range Lines(filepath.Base(path), rep) {
			if l.Recipient == "" || first[strings.ToLower(l.Recipient)] {
				continue
			}
			first[strings.ToLower(l.Recipient)] = true
			d := Decide(rep, l.Recipient)
			if !d.Matched || lineOf(l.File, d) != l {
				t.Errorf("%s: listener decision %+v, bounce parse line %+v", path, d, l)
			}
		}
	}
}

// TestCorpusFigures prints, for the corpus, recipient/status/reason
// accuracy and per reason the precision and recall of "hard" (run with
// -v), and fails when suppression precision drops below 97%.
func TestCorpusFigures(t *testing.T) {
	res := runCorpus(t)
	type tally struct{ n, expHard, predHard, tp int }
	per := map[Reason]*tally{}
	get := func(r Reason) *tally {
		if per[r] == nil {
			per[r] = &tally{}
		}
		return per[r]
	}
	var n, rcptOK, statusOK, reasonOK, hardOK, tp, fp, fn int
	for i, w := range res.rows {
		n++
		g := res.got[i]
		we := get(w.reason)
		we.n++
		if w.hard {
			we.expHard++
		}
		if g == nil {
			if w.hard {
				fn++
			}
			continue
		}
		rcptOK++
		if g.Status == w.status {
			statusOK++
		}
		if g.Reason == w.reason {
			reasonOK++
		}
		if g.Hard == w.hard {
			hardOK++
		}
		if g.Hard {
			get(g.Reason).predHard++
			if w.hard {
				tp++
				get(g.Reason).tp++
			} else {
				fp++
			}
		} else if w.hard {
			fn++
		}
	}
	fp += countHard(res.extra)
	pct := func(a, b int) string {
		if b == 0 {
			return "  n/a"
		}
		return fmt.Sprintf("%5.1f%%", 100*float64(a)/float64(b))
	}
	t.Logf("corpus: %d expected recipients in %d messages, %d unexpected lines", n, len(corpusFiles(t)), len(res.extra))
	t.Logf("recipient %s  status %s  reason %s  hard/soft %s", pct(rcptOK, n), pct(statusOK, n), pct(reasonOK, n), pct(hardOK, n))
	t.Logf("suppression (hard) precision %s (%d/%d)  recall %s (%d/%d)", pct(tp, tp+fp), tp, tp+fp, pct(tp, tp+fn), tp, tp+fn)
	reasons := make([]string, 0, len(per))
	for r := range per {
		reasons = append(reasons, string(r))
	}
	sort.Strings(reasons)
	t.Logf("%-16s %4s %8s %9s %10s %7s", "reason", "n", "exp-hard", "pred-hard", "precision", "recall")
	for _, r := range reasons {
		c := per[Reason(r)]
		recallTP := 0
		for i, w := range res.rows {
			if w.reason == Reason(r) && w.hard && res.got[i] != nil && res.got[i].Hard {
				recallTP++
			}
		}
		t.Logf("%-16s %4d %8d %9d %10s %7s", r, c.n, c.expHard, c.predHard, pct(c.tp, c.predHard), pct(recallTP, c.expHard))
	}
	if tp+fp > 0 && float64(tp)/float64(tp+fp) < 0.97 {
		t.Errorf("suppression precision %s < 97%%", pct(tp, tp+fp))
	}
}

func countHard(ls []Line) int {
	n := 0
	for _, l := range ls {
		if l.Hard {
			n++
		}
	}
	return n
}
