package sender

import (
	"errors"
	"strings"
	"testing"
)

// planted are fields a client adds to borrow an identity the rule did not
// grant, in the spellings a client may use.
const planted = "Sender: Bank Security <security@bank.example>\r\n" +
	"sender: security@bank.example\r\n" +
	"DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=s1; h=From; bh=x; b=y\r\n" +
	"ARC-Seal: i=1; a=rsa-sha256; d=bank.example; s=s1; cv=none; b=y\r\n" +
	"ARC-Message-Signature: i=1; a=rsa-sha256; d=bank.example; s=s1; h=From; bh=x; b=y\r\n" +
	"ARC-Authentication-Results: i=1; mx.bank.example; dkim=pass header.d=bank.example\r\n" +
	"Authentication-Results: mx.partner.example; dkim=pass header.d=bank.example; dmarc=pass\r\n" +
	"Return-Path: <security@bank.example>\r\n" +
	"Resent-From: security@bank.example\r\n" +
	"Resent-Sender: security@bank.example\r\n" +
	"Resent-Date: Mon, 02 Jan 2006 15:04:05 +0900\r\n" +
	"RESENT-TO: partner@example.net\r\n"

// TestApplyRemovesIdentityFields: under both identities, no planted field
// survives, and the others do.
func TestApplyRemovesIdentityFields(t *testing.T) {
	for _, verified := range []bool{false, true} {
		h := readHeader(t, "From: Taro <taro@customer.example>\r\n"+planted+otherFields)
		d, err := testRule.Apply(&h, Input{CustomDomainOption: true, IsVerified: func(string) bool { return verified }})
		if err != nil {
			t.Fatalf("verified=%v: Apply: %v", verified, err)
		}
		if verified != (d.CustomDomain == "customer.example") {
			t.Fatalf("verified=%v: decision %+v", verified, d)
		}
		back := checkWire(t, writeHeader(t, h))
		got := strings.Join(fieldKeys(back), " ")
		if want := "From Message-Id Reply-To Subject To"; got != want {
			t.Errorf("verified=%v: fields %q, want %q", verified, got, want)
		}
	}
}

// TestApplyRefusesQuotedAt: a quoted local part holding "@" is refused
// under both identities, with the header untouched.
func TestApplyRefusesQuotedAt(t *testing.T) {
	for _, from := range []string{
		`"victim@bank.example"@customer.example`,
		`Taro <"victim@bank.example"@customer.example>`,
		`"victim@bank.example (via MakeLeaps)"@customer.example`,
		`"@"@customer.example`,
		`"a\@b"@customer.example`,
	} {
		for _, verified := range []bool{false, true} {
			h := readHeader(t, "From: "+from+"\r\n"+otherFields)
			before := writeHeader(t, h)
			_, err := testRule.Apply(&h, Input{CustomDomainOption: true, IsVerified: func(string) bool { return verified }})
			var fe *FromError
			if !errors.As(err, &fe) || !strings.Contains(fe.Msg, `containing "@"`) {
				t.Errorf("From %s (verified=%v): Apply = %v, want the quoted-@ FromError", from, verified, err)
			}
			if after := writeHeader(t, h); after != before {
				t.Errorf("From %s: header changed on error", from)
			}
		}
	}
	// Quoted local parts without "@" stay allowed.
	h := readHeader(t, "From: \"taro seikyu\"@customer.example\r\n"+otherFields)
	if _, err := testRule.Apply(&h, Input{}); err != nil {
		t.Errorf("quoted local part without @ refused: %v", err)
	}
}
