package daemon

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"mime"
	"net/netip"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/hermod-mta/hermod/domain"
	"github.com/hermod-mta/hermod/smtpd"
	"github.com/hermod-mta/hermod/submit"
)

// ownerMail tells account owners about their domains by queueing a real
// message through hermod itself, from the platform sender.
type ownerMail struct {
	hostname string
	from     string
	pipeline *submit.Pipeline
	log      *slog.Logger
}

var systemUser = &smtpd.User{Name: "hermod-system", Accounts: []string{"*"}}

func (o *ownerMail) send(ctx context.Context, acct domain.Account, d domain.Domain, subjJA, subjEN, bodyJA, bodyEN string) error {
	if acct.Owner == "" {
		o.log.Warn("domain notice not sent: account has no owner address", "account", acct.ID, "domain", d.Name)
		return nil
	}
	name := d.UnicodeName
	if name == "" {
		name = d.Name
	}
	var h textproto.Header
	h.Set("Content-Transfer-Encoding", "base64")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("MIME-Version", "1.0")
	h.Set("Subject", mime.BEncoding.Encode("utf-8", fmt.Sprintf("%s / %s: %s", subjJA, subjEN, name)))
	h.Set("To", "<"+acct.Owner+">")
	h.Set("From", o.from)
	text := fmt.Sprintf("%s\r\n\r\n%s\r\n\r\n-- \r\nhermod (%s)\r\n", bodyJA, bodyEN, o.hostname)
	text = strings.ReplaceAll(text, "{domain}", name)
	enc := base64.StdEncoding.EncodeToString([]byte(text))
	var body strings.Builder
	for len(enc) > 76 {
		body.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	body.WriteString(enc + "\r\n")
	id, err := o.pipeline.Submit(ctx, &smtpd.Submission{User: systemUser, RemoteAddr: netip.IPv6Loopback(), HELO: o.hostname,
		MailFrom: o.from, Rcpts: []string{acct.Owner}, Header: h, Body: smtpd.NewBody([]byte(body.String())), System: true})
	if err != nil {
		return fmt.Errorf("queue domain notice to %s: %w", acct.Owner, err)
	}
	o.log.Info("domain notice queued", "msgid", id, "account", acct.ID, "domain", d.Name, "status", d.Status, "to", acct.Owner)
	return nil
}

func (o *ownerMail) DomainVerificationStarted(ctx context.Context, acct domain.Account, d domain.Domain) error {
	return o.send(ctx, acct, d, "ドメイン認証を開始しました", "Domain verification started",
		"ドメイン {domain} のDNSレコードを確認し、認証を開始しました。TXTレコード（DKIM）とCNAMEレコード（Return-Path）の両方が確認できると認証が完了します。認証完了まで数十分〜数時間かかる場合があります。",
		"We found DNS records for {domain} and started verifying it. Verification completes once both the TXT (DKIM) and the CNAME (Return-Path) record are correct; this can take from tens of minutes to a few hours.")
}

func (o *ownerMail) DomainVerified(ctx context.Context, acct domain.Account, d domain.Domain) error {
	return o.send(ctx, acct, d, "ドメイン認証が完了しました", "Domain verification complete",
		"ドメイン {domain} の認証が完了しました。このドメインのアドレスを通知メールアドレスに設定しているメンバーのセキュア送信は、メンバー自身のアドレスから送付されます。",
		"The domain {domain} is verified. Secure-send mail from members whose notification address is on this domain now goes out from their own address.")
}

func (o *ownerMail) DomainFailed(ctx context.Context, acct domain.Account, d domain.Domain) error {
	reason := d.Reason
	return o.send(ctx, acct, d, "ドメイン認証に失敗しました", "Domain verification failed",
		"ドメイン {domain} の認証ができませんでした（"+reason+"）。このドメインは使用されず、メールは "+o.from+" から送付されます。DNSレコードをご確認のうえ、再度確認してください。",
		"The domain {domain} could not be verified ("+reason+"). It is not used; mail goes out from "+o.from+" until the DNS records are fixed and checked again.")
}
