package bounce

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	for _, path := range append(corpus(f), corpusFiles(f)...) {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(""))
	f.Add([]byte("\x1b$B"))
	f.Add([]byte("Content-Type: multipart/report; boundary=x; report-type=delivery-status\n\n--x\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822;\n\n--x--"))
	f.Fuzz(func(t *testing.T, b []byte) {
		done := make(chan *Report, 1)
		go func() { done <- parse(b) }()
		var rep *Report
		select {
		case rep = <-done:
		case <-time.After(10 * time.Second): // generous: CI machines are slow and shared
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("hang on %q\n%s", b, buf[:n])
		}
		if rep == nil {
			t.Fatal("parse returned nil")
		}
		for _, rc := range rep.Recipients {
			if rc.Hard && !rc.Reason.Hard() {
				t.Fatalf("Hard set for soft reason %q", rc.Reason)
			}
			if len(rc.Diagnostic) > maxDiagnostic {
				t.Fatalf("diagnostic of %d bytes", len(rc.Diagnostic))
			}
		}
		if len(Lines("f", rep)) == 0 {
			t.Fatal("Lines returned nothing")
		}
	})
}

func BenchmarkParse(b *testing.B) {
	msg, err := os.ReadFile("testdata/01-postfix-user-unknown.eml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		rep, err := Parse(bytes.NewReader(msg))
		if err != nil || rep.Kind != KindBounce {
			b.Fatalf("Parse = %v, %v", rep, err)
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseReadError(t *testing.T) {
	if _, err := Parse(failingReader{}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Parse(failing reader) error = %v, want the read error wrapped", err)
	}
}

func TestParseGarbage(t *testing.T) {
	for _, in := range []string{
		"",
		"not a mail at all",
		"Subject: hi\n\nhello",
		"Content-Type: multipart/report; report-type=delivery-status; boundary=zz\n\n--zz\nbroken",
		strings.Repeat("Content-Type: multipart/mixed; boundary=a\n\n--a\n", 300),
	} {
		rep, err := Parse(strings.NewReader(in))
		if err != nil {
			t.Errorf("Parse(%.40q) error: %v", in, err)
			continue
		}
		if rep.Kind != KindUnknown {
			t.Errorf("Parse(%.40q).Kind = %q, want unknown", in, rep.Kind)
		}
	}
}

// A DSN carries Auto-Submitted: auto-replied (RFC 3834 5): the
// delivery-status part must win over the auto-reply header.
func TestDSNBeatsAutoSubmitted(t *testing.T) {
	rep := parseFile(t, "testdata/01-postfix-user-unknown.eml")
	if rep.Kind != KindBounce {
		t.Fatalf("Kind = %q, want bounce", rep.Kind)
	}
	rc := rep.Recipients[0]
	if rc.Action != "failed" || rc.Code != 550 || rc.RemoteMTA != "mx1.example.com" ||
		rc.OriginalRecipient != "taro.yamada@example.com" ||
		!strings.Contains(rc.Diagnostic, "User unknown in virtual mailbox table") {
		t.Errorf("recipient = %+v", rc)
	}
	if rep.OriginalEnvelopeFrom != "bounce-md_k3j9x2a7f1q8@m.makeleaps.com" {
		t.Errorf("OriginalEnvelopeFrom = %q", rep.OriginalEnvelopeFrom)
	}
	if rep.Subject != "Undelivered Mail Returned to Sender" {
		t.Errorf("Subject = %q", rep.Subject)
	}
}

func TestJapaneseDecoding(t *testing.T) {
	rep := parseFile(t, "testdata/28-ooo-japanese.eml")
	if rep.Subject != "自動返信: 請求書送付のお知らせ" {
		t.Errorf("Subject = %q", rep.Subject)
	}
	rep = parseFile(t, "testdata/26-softbank-filtered.eml") // no charset label
	if len(rep.Recipients) != 1 || !strings.Contains(rep.Recipients[0].Diagnostic, "受信拒否") {
		t.Errorf("recipients = %+v", rep.Recipients)
	}
}

func TestLines(t *testing.T) {
	rep := parseFile(t, "testdata/07-postfix-multi-failed-delayed.eml")
	lines := Lines("x.eml", rep)
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	want := Line{File: "x.eml", Kind: KindBounce, Recipient: "ito@example.net", Status: "4.2.2",
		Reason: ReasonMailboxFull, Diagnostic: "452 4.2.2 <ito@example.net>: Mailbox is over quota, try again later",
		RemoteMTA: "mx.example.net", Action: OutcomeNote}
	if lines[1] != want {
		t.Errorf("line 2 = %+v\nwant     %+v", lines[1], want)
	}
	empty := Lines("y.eml", &Report{Kind: KindAutoReply})
	if len(empty) != 1 || empty[0] != (Line{File: "y.eml", Kind: KindAutoReply, Reason: ReasonVacation, Action: OutcomeIgnore}) {
		t.Errorf("Lines(no recipients) = %+v", empty)
	}
}

func TestDiagnosticBounded(t *testing.T) {
	long := strings.Repeat("blah ", 2000)
	msg := "From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n<a@x.example>:\n550 5.1.1 " + long + "\n"
	rep, err := Parse(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Recipients) != 1 || len(rep.Recipients[0].Diagnostic) > maxDiagnostic {
		t.Fatalf("recipients = %d, diagnostic %d bytes", len(rep.Recipients), len(rep.Recipients[0].Diagnostic))
	}
}
