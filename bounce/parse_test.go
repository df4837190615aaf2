package bounce

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.json from the parser's output")

// goldenRecipient is the part of a Recipient the golden table pins down.
type goldenRecipient struct {
	Recipient string `json:"recipient"`
	Status    string `json:"status"`
	Reason    Reason `json:"reason"`
	Hard      bool   `json:"hard"`
}

// golden is the expected result for one corpus file.
type golden struct {
	Kind                 Kind              `json:"kind"`
	Recipients           []goldenRecipient `json:"recipients"`
	FeedbackType         string            `json:"feedback_type,omitempty"`
	OriginalMessageID    string            `json:"original_message_id,omitempty"`
	OriginalEnvelopeFrom string            `json:"original_envelope_from,omitempty"`
}

func toGolden(rep *Report) golden {
	g := golden{
		Kind:                 rep.Kind,
		FeedbackType:         rep.FeedbackType,
		OriginalMessageID:    rep.OriginalMessageID,
		OriginalEnvelopeFrom: rep.OriginalEnvelopeFrom,
		Recipients:           []goldenRecipient{},
	}
	for _, r := range rep.Recipients {
		g.Recipients = append(g.Recipients, goldenRecipient{r.Recipient, r.Status, r.Reason, r.Hard})
	}
	return g
}

func corpus(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.eml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 35 {
		t.Fatalf("corpus has %d files, want at least 35", len(files))
	}
	sort.Strings(files)
	return files
}

func parseFile(t testing.TB, path string) *Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Parse(f)
	if err != nil {
		t.Fatalf("%s: Parse: %v", path, err)
	}
	return rep
}

func TestGolden(t *testing.T) {
	want := map[string]golden{}
	b, err := os.ReadFile("testdata/golden.json")
	if err != nil && !*update {
		t.Fatal(err)
	}
	if err == nil {
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("golden.json: %v", err)
		}
	}
	got := map[string]golden{}
	for _, path := range corpus(t) {
		name := filepath.Base(path)
		g := toGolden(parseFile(t, path))
		got[name] = g
		if *update {
			continue
		}
		gotPath := strings.TrimSuffix(path, ".eml") + ".got"
		w, ok := want[name]
		if !ok {
			t.Errorf("%s: missing from golden.json", name)
			continue
		}
		wj, _ := json.MarshalIndent(w, "", "  ")
		gj, _ := json.MarshalIndent(g, "", "  ")
		if !bytes.Equal(wj, gj) {
			if err := os.WriteFile(gotPath, gj, 0o644); err != nil {
				t.Error(err)
			}
			t.Errorf("%s: mismatch (written %s)\n%s", name, gotPath, lineDiff(string(wj), string(gj)))
		} else if err := os.Remove(gotPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	}
	for name := range want {
		if _, ok := got[name]; !ok && !*update {
			t.Errorf("golden.json names %s, which is not in testdata", name)
		}
	}
	if *update {
		out, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile("testdata/golden.json", append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// lineDiff is a minimal line-by-line diff, enough for small JSON values.
func lineDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w == g {
			fmt.Fprintf(&b, "  %s\n", w)
			continue
		}
		if i < len(wl) {
			fmt.Fprintf(&b, "- %s\n", w)
		}
		if i < len(gl) {
			fmt.Fprintf(&b, "+ %s\n", g)
		}
	}
	return b.String()
}

// TestDump prints every corpus report; run with -v -run Dump when
// reviewing golden.json.
func TestDump(t *testing.T) {
	if !testing.Verbose() {
		t.Skip("only with -v")
	}
	for _, path := range corpus(t) {
		for _, l := range Lines(filepath.Base(path), parseFile(t, path)) {
			b, _ := json.Marshal(l)
			t.Log(string(b))
		}
	}
}

func TestAutoReplyNotBounce(t *testing.T) {
	tests := []struct {
		msg  string
		want Kind
	}{
		{"From: Ken <ken@example.com>\nSubject: Automatic reply: Undeliverable invoice?\nAuto-Submitted: auto-replied\n\nI am away until Monday.\n", KindAutoReply},
		{"From: Ken <ken@example.com>\nSubject: Re: invoice\nX-Autoreply: yes\n\nThanks, received.\n", KindAutoReply},
		{"From: Ken <ken@example.com>\nSubject: Out of Office\nPrecedence: bulk\n\nAway.\n", KindAutoReply},
		{"From: Ken <ken@example.com>\nSubject: Re: invoice\nAuto-Submitted: no\n\nThanks.\n", KindUnknown},
		{"From: Ken <ken@example.com>\nSubject: Re: invoice\nPrecedence: bulk\n\nThanks.\n", KindUnknown},
		// Exim marks its bounces auto-replied; the daemon sender wins.
		{"From: Mail Delivery System <Mailer-Daemon@mx.example>\nSubject: Mail delivery failed\nAuto-Submitted: auto-replied\n\n  a@example.com\n    Unrouteable address\n", KindBounce},
	}
	for _, tt := range tests {
		rep, err := Parse(strings.NewReader(tt.msg))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Kind != tt.want {
			t.Errorf("Parse(%.60q).Kind = %q, want %q", tt.msg, rep.Kind, tt.want)
		}
	}
}
