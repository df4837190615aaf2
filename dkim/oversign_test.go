package dkim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// fullMessage carries every field of DefaultHeaders once, so that each is
// tried both absent (testMessage) and present.
func fullMessage() string {
	var b strings.Builder
	for _, n := range DefaultHeaders() {
		v := "value of " + n
		switch n {
		case "From", "Sender", "Reply-To", "To", "Cc", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "Disposition-Notification-To":
			v = "Taro <taro@example.invalid>"
		case "Content-Type":
			v = "text/plain; charset=utf-8"
		case "List-Unsubscribe":
			v = "<https://example.invalid/unsubscribe/1>"
		}
		b.WriteString(n + ": " + v + "\r\n")
	}
	b.WriteString("\r\nHello,\r\nplease find the invoice attached.\r\n")
	return b.String()
}

// injected is the field an attacker prepends to a signed message to
// replay it with another meaning.
func injected(name string) string {
	switch name {
	case "Content-Type":
		return "Content-Type: text/html\r\n"
	case "From", "Sender", "Reply-To", "Resent-From", "Resent-Sender", "Disposition-Notification-To":
		return name + ": Bank <security@bank.example>\r\n"
	case "List-Unsubscribe":
		return "List-Unsubscribe: <https://evil.example/u>\r\n"
	}
	return name + ": injected\r\n"
}

// tamperCase is one replayed message that must not verify.
type tamperCase struct {
	name string
	msg  string
}

// tamperCases signs base with s and returns the signed message and, for
// every field of DefaultHeaders, the signed message with one more instance
// of that field prepended (where a replaying attacker puts it).
func tamperCases(t *testing.T, s *Signer, base string) (signed string, cases []tamperCase) {
	t.Helper()
	signed = sign(t, s, base) + base
	for _, n := range DefaultHeaders() {
		cases = append(cases, tamperCase{n, injected(n) + signed})
	}
	return signed, cases
}

func TestOversignDefaultHeaders(t *testing.T) {
	s, dns := setup(t, AlgorithmEd25519)
	for _, base := range []struct{ name, msg string }{{"absent", testMessage}, {"present", fullMessage()}} {
		t.Run(base.name, func(t *testing.T) {
			signed, cases := tamperCases(t, s, base.msg)
			if err := verifyOne(t, signed, dns); err != nil {
				t.Fatalf("untouched message does not verify: %v", err)
			}
			for _, tc := range cases {
				if err := verifyOne(t, tc.msg, dns); err == nil {
					t.Errorf("go-msgauth verified the message with a prepended %s", strings.TrimSpace(injected(tc.name)))
				}
			}
		})
	}
}

// TestOversignCounts checks the count behind "once more than it occurs": a
// field present twice is listed three times, and a field on one line longer
// than bufio's buffer is counted too.
func TestOversignCounts(t *testing.T) {
	s, dns := setup(t, AlgorithmEd25519)
	longRefs := "References:"
	for i := 0; len(longRefs) < 6000; i++ {
		longRefs += " <" + strings.Repeat("r", 40) + "@example.invalid>"
	}
	msg := "Comments: one\r\nComments: two\r\n" + longRefs + "\r\n" + testMessage
	sig := sign(t, s, msg)
	compact := strings.Join(strings.Fields(sig), "")
	for _, want := range []string{":Comments:Comments:Comments:", ":References:References:"} {
		if !strings.Contains(compact, want) {
			t.Errorf("h= lacks %q:\n%s", want, sig)
		}
	}
	signed := sig + msg
	if err := verifyOne(t, signed, dns); err != nil {
		t.Fatalf("untouched message does not verify: %v", err)
	}
	for _, add := range []string{"Comments: three\r\n", "References: <evil@example.invalid>\r\n"} {
		if err := verifyOne(t, add+signed, dns); err == nil {
			t.Errorf("verified with %q prepended", add)
		}
	}
}

// dkimpyScript verifies each base64 message of a JSON document on stdin
// with dkimpy, answering DNS from the document, and prints one JSON list of
// booleans.
const dkimpyScript = `
import base64, json, sys
import dkim
doc = json.load(sys.stdin)
def dns(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = doc["dns"].get(n.rstrip("."))
    return v.encode() if v is not None else None
print(json.dumps([bool(dkim.verify(base64.b64decode(m), dnsfunc=dns)) for m in doc["messages"]]))
`

// python is /usr/bin/python3 -P with dkimpy, exactly as scripts/deps.sh
// probes it; the test fails without it under scripts/test.sh.
func python(t *testing.T) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-P", "-c", "import dkim").Run(); err != nil {
		if os.Getenv("HERMOD_REQUIRE_TOOLS") == "1" {
			t.Fatalf("dkimpy not available (%s -P -c 'import dkim': %v); apt-get install python3-dkim", py, err)
		}
		t.Skipf("dkimpy not available: %v", err)
	}
	return py
}

// dkimpyVerify returns dkimpy's verdict on each message.
func dkimpyVerify(t *testing.T, dns fakeDNS, msgs []string) []bool {
	t.Helper()
	py := python(t)
	doc := struct {
		DNS      fakeDNS  `json:"dns"`
		Messages []string `json:"messages"`
	}{DNS: dns}
	for _, m := range msgs {
		doc.Messages = append(doc.Messages, base64.StdEncoding.EncodeToString([]byte(m)))
	}
	in, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-P", "-c", dkimpyScript)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy: %v\n%s", err, stderr.String())
	}
	var res []bool
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(msgs) {
		t.Fatalf("dkimpy printed %q (%v), want %d results", out, err, len(msgs))
	}
	return res
}

// TestOversignDkimpy replays every signed message with one more instance
// of each default field, for RSA and Ed25519 keys, and wants dkimpy to
// refuse every one and accept the untouched ones.
func TestOversignDkimpy(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmRSA, AlgorithmEd25519} {
		t.Run(string(alg), func(t *testing.T) {
			s, dns := setup(t, alg)
			var msgs, names []string
			for _, base := range []struct{ name, msg string }{{"absent", testMessage}, {"present", fullMessage()}} {
				signed, cases := tamperCases(t, s, base.msg)
				msgs, names = append(msgs, signed), append(names, base.name+": untouched")
				for _, tc := range cases {
					msgs, names = append(msgs, tc.msg), append(names, base.name+": prepended "+strings.TrimSpace(injected(tc.name)))
				}
			}
			res := dkimpyVerify(t, dns, msgs)
			for i, ok := range res {
				untouched := strings.HasSuffix(names[i], "untouched")
				if ok != untouched {
					t.Errorf("%s: dkimpy verify = %v, want %v", names[i], ok, untouched)
				}
			}
		})
	}
}
