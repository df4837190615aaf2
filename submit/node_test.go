package submit

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"

	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/sender"
	"github.com/hermod-mta/hermod/smtpd"
	"github.com/hermod-mta/hermod/verp"
	"github.com/hermod-mta/hermod/vocab"
)

// TestNodeIDs: with Options.Node, accepted mail is queued under an id that
// names the node, and every recipient's VERP envelope sender decodes to
// that id; without it, ids are single-node ids as before.
func TestNodeIDs(t *testing.T) {
	store, err := queue.Open(filepath.Join(t.TempDir(), "q.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	key, err := dkim.GenerateKey(dkim.AlgorithmEd25519)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := verp.New([]byte("submit node test secret 0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range []vocab.NodeID{"n1", "node0001", ""} {
		p := New(Options{
			Hostname:       "mta.example.test",
			Rule:           &sender.Rule{DefaultFrom: "bounce@example.test", BounceDomain: "m.example.test", ReturnPathLabel: "hermod-bounce"},
			PlatformSigner: dkim.NewSigner("example.test", "hermod", key),
			VERP:           codec,
			Queue:          store,
			Node:           node,
		})
		var h textproto.Header
		h.Set("From", "taro@customer.example")
		h.Set("Subject", "hi")
		sub := &smtpd.Submission{
			User:     &smtpd.User{Name: "app", Accounts: []string{"*"}},
			MailFrom: "app@example.test",
			Rcpts:    []string{"a@dest.example", "b@dest.example"},
			Header:   h,
			Body:     smtpd.NewBody([]byte("body\r\n")),
		}
		id, err := p.Submit(context.Background(), sub)
		if err != nil {
			t.Fatalf("node %q: Submit: %v", node, err)
		}
		if queue.IDNode(id) != node || !queue.ValidID(id) || (node == "" && len(id) != 16) || (node != "" && !strings.HasPrefix(id, string(node)+"-")) {
			t.Errorf("node %q: queued as %q (IDNode %q)", node, id, queue.IDNode(id))
		}
		m, err := store.Get(id)
		if err != nil {
			t.Fatalf("node %q: Get(%q): %v", node, id, err)
		}
		if !strings.Contains(m.MessageIDHeader, id+"@mta.example.test") {
			t.Errorf("node %q: Message-ID %q does not carry id %q", node, m.MessageIDHeader, id)
		}
		for i, r := range m.Recipients {
			gotID, gotIdx, err := codec.ParseAddress(r.EnvelopeFrom)
			if err != nil || gotID != id || gotIdx != i {
				t.Errorf("node %q: envelope sender %q of recipient %d decodes to %q, %d, %v", node, r.EnvelopeFrom, i, gotID, gotIdx, err)
			}
		}
	}
}
