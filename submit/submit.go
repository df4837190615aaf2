// Package submit is the step between smtpd and queue: it resolves the
// account, applies the sender rule, completes and cleans the header, signs the
// message once with the key the rule chose, gives every recipient its own VERP
// envelope sender, marks suppressed recipients, and enqueues the result.
package submit

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"

	"github.com/hermod-mta/hermod/dkim"
	"github.com/hermod-mta/hermod/queue"
	"github.com/hermod-mta/hermod/sender"
	"github.com/hermod-mta/hermod/smtpd"
	"github.com/hermod-mta/hermod/verp"
	"github.com/hermod-mta/hermod/vocab"
)

// Accounts is what the pipeline needs to know about company accounts and
// their verified domains (implemented by the domain store).
type Accounts interface {
	// LookupAccount reports whether the account exists and has the
	// custom-domain option.
	LookupAccount(id string) (exists, customDomain bool)
	// IsVerified reports whether domain (ASCII, lower case) is a verified
	// domain of the account.
	IsVerified(accountID, domain string) bool
	// SigningKey returns the DKIM selector and key of a verified domain.
	SigningKey(domain string) (accountID, selector string, key crypto.Signer, ok bool)
}

// Suppressions tells whether an address must not be sent to.
type Suppressions interface {
	// Suppressed returns the reason when address is on the list for account.
	Suppressed(account, address string) (reason string, ok bool, err error)
}

// Enqueuer stores a message durably, given as consecutive parts.
type Enqueuer interface {
	EnqueueParts(ctx context.Context, m *queue.Message, parts ...[]byte) error
}

// Options configures a Pipeline.
type Options struct {
	// Hostname goes into Received and generated Message-IDs.
	Hostname string
	Rule     *sender.Rule
	// PlatformSigner signs mail sent from the platform identity.
	PlatformSigner *dkim.Signer
	VERP           *verp.Codec
	Accounts       Accounts     // nil: no accounts, every message uses the platform identity
	Suppressions   Suppressions // nil: nothing is suppressed
	Queue          Enqueuer
	Now            func() time.Time
	Logger         *slog.Logger
	// OnSign, when set, is called after each DKIM signature (metrics).
	OnSign func()
	// Node is this node's `[cluster] node_id`: accepted mail gets ids that
	// name it (queue.NewNodeID). "" (no cluster) keeps single-node ids.
	Node vocab.NodeID
}

// Pipeline implements smtpd.Submitter.
type Pipeline struct {
	opts Options
	log  *slog.Logger
}

// New returns a pipeline.
func New(opts Options) *Pipeline {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pipeline{opts: opts, log: opts.Logger}
}

var _ smtpd.Submitter = (*Pipeline)(nil)

func reject(code int, ec smtp.EnhancedCode, format string, args ...any) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: fmt.Sprintf(format, args...)}
}

// Header fields the application uses to talk to hermod; removed before sending.
const (
	headerAccount = "X-Hermod-Account"
	headerKind    = "X-Hermod-Kind"
	headerRef     = "X-Hermod-Ref"
)

// Submit processes one submission and returns the queue id once it is durable.
func (p *Pipeline) Submit(ctx context.Context, sub *smtpd.Submission) (string, error) {
	now := p.opts.Now()
	h := sub.Header // a copy of the header's fields is not needed: sub is ours
	account, customDomain, err := p.account(sub.User, strings.TrimSpace(h.Get(headerAccount)))
	if err != nil {
		return "", err
	}
	kind, err := sender.ParseKind(strings.TrimSpace(h.Get(headerKind)))
	if err != nil {
		return "", reject(550, smtp.EnhancedCode{5, 6, 0}, "Invalid %s: %v", headerKind, err)
	}
	ref := strings.TrimSpace(h.Get(headerRef))
	if len(ref) > 200 {
		return "", reject(550, smtp.EnhancedCode{5, 6, 0}, "%s is longer than 200 characters", headerRef)
	}
	for f := h.Fields(); f.Next(); {
		if strings.HasPrefix(strings.ToLower(f.Key()), "x-hermod-") {
			f.Del()
		}
	}

	in := sender.Input{Kind: kind, CustomDomainOption: customDomain, IsVerified: func(string) bool { return false }}
	if account != "" && p.opts.Accounts != nil {
		in.IsVerified = func(d string) bool { return p.opts.Accounts.IsVerified(account, d) }
	}
	headerFrom := h.Get("From")
	var dec sender.Decision
	if sub.System {
		dec = sender.Decision{From: headerFrom, EnvelopeHost: p.opts.Rule.BounceDomain}
	} else {
		dec, err = p.opts.Rule.Apply(&h, in)
	}
	if err != nil {
		var fe *sender.FromError
		if errors.As(err, &fe) {
			return "", reject(550, smtp.EnhancedCode{5, 6, 0}, "%s", fe.Error())
		}
		return "", fmt.Errorf("submit: sender rule: %w", err)
	}

	id := queue.NewNodeID(p.opts.Node, now)
	if strings.TrimSpace(h.Get("Message-Id")) == "" {
		h.Set("Message-Id", "<"+id+"@"+p.opts.Hostname+">")
	}
	if strings.TrimSpace(h.Get("Date")) == "" {
		h.Set("Date", now.Format(time.RFC1123Z))
	}
	h.Add("Received", p.received(sub, id, now)) // Add prepends
	signer := p.opts.PlatformSigner
	if dec.CustomDomain != "" {
		_, sel, key, ok := p.opts.Accounts.SigningKey(dec.CustomDomain)
		if !ok { // verified a moment ago, deleted since: fall back is not possible after rewrite
			return "", reject(451, smtp.EnhancedCode{4, 3, 0}, "Sending domain %s changed during submission; try again", dec.CustomDomain)
		}
		signer = dkim.NewSigner(dec.CustomDomain, sel, key)
	}

	// The header is small, the body may be 25 MiB: it is signed as it
	// stands and handed to the queue in parts, never assembled here.
	var hdr bytes.Buffer
	if err := textproto.WriteHeader(&hdr, h); err != nil {
		return "", fmt.Errorf("submit: write header: %w", err)
	}
	sig, signingDomain := "", ""
	if signer != nil {
		var err error
		sig, err = signer.Sign(io.MultiReader(bytes.NewReader(hdr.Bytes()), sub.Body.Reader()))
		if err != nil {
			return "", fmt.Errorf("submit: dkim sign: %w", err)
		}
		signingDomain = signer.Domain
		if p.opts.OnSign != nil {
			p.opts.OnSign()
		}
	}
	parts := append([][]byte{[]byte(sig), hdr.Bytes()}, sub.Body.Chunks()...)

	m := &queue.Message{
		ID: id, Account: account, User: sub.User.Name, Ref: ref, Kind: string(kind),
		MailFrom: sub.MailFrom, HeaderFrom: headerFrom, From: h.Get("From"),
		MessageIDHeader: h.Get("Message-Id"), SigningDomain: signingDomain, Received: now,
	}
	for i, rcpt := range sub.Rcpts {
		r := &queue.Recipient{Address: rcpt, EnvelopeFrom: p.opts.VERP.LocalPart(id, i) + "@" + dec.EnvelopeHost}
		if p.opts.Suppressions != nil {
			reason, ok, err := p.opts.Suppressions.Suppressed(account, rcpt)
			if err != nil {
				return "", fmt.Errorf("submit: suppression lookup: %w", err)
			}
			if ok {
				r.Status = queue.StatusSuppressed
				r.Last = &queue.Event{Reason: reason, Text: "address is on the suppression list (" + reason + ")"}
			}
		}
		m.Recipients = append(m.Recipients, r)
	}
	if err := p.opts.Queue.EnqueueParts(ctx, m, parts...); err != nil {
		if errors.Is(err, queue.ErrStorage) {
			p.log.Error("queue refused message", "err", err)
			return "", reject(452, smtp.EnhancedCode{4, 3, 1}, "Insufficient system storage; message not accepted, try again later")
		}
		return "", fmt.Errorf("submit: enqueue: %w", err)
	}
	p.log.Info("queued", "msgid", id, "from", m.From, "mail_from", sub.MailFrom, "rcpts", len(m.Recipients),
		"size", m.Size, "user", sub.User.Name, "account", account, "dkim", signingDomain, "client", sub.RemoteAddr)
	return id, nil
}

// account resolves X-Hermod-Account against what the user may use, and
// tells whether the account has the custom-domain option.
func (p *Pipeline) account(u *smtpd.User, requested string) (id string, customDomain bool, err error) {
	if requested == "" {
		if len(u.Accounts) == 1 && u.Accounts[0] != "*" {
			requested = u.Accounts[0]
		} else if len(u.Accounts) > 1 {
			return "", false, reject(550, smtp.EnhancedCode{5, 7, 1}, "%s is required: user %s sends for several accounts", headerAccount, u.Name)
		} else {
			return "", false, nil // "*" and no header: platform identity, no account
		}
	}
	if !u.MayUse(requested) {
		return "", false, reject(550, smtp.EnhancedCode{5, 7, 1}, "User %s may not send for account %q", u.Name, requested)
	}
	if p.opts.Accounts != nil {
		exists, option := p.opts.Accounts.LookupAccount(requested)
		if !exists {
			return "", false, reject(550, smtp.EnhancedCode{5, 7, 1}, "Unknown account %q in %s: create it first (PUT /v1/accounts/%s)", requested, headerAccount, requested)
		}
		customDomain = option
	}
	return requested, customDomain, nil
}

// received builds the trace field (RFC 5321 4.4).
func (p *Pipeline) received(sub *smtpd.Submission, id string, now time.Time) string {
	proto := "ESMTPA"
	if sub.TLS {
		proto = "ESMTPSA"
	}
	helo := strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e || r == '(' || r == ')' {
			return -1
		}
		return r
	}, sub.HELO)
	return fmt.Sprintf("from %s ([%s]) by %s (hermod) with %s id %s; %s",
		helo, sub.RemoteAddr, p.opts.Hostname, proto, id, now.Format(time.RFC1123Z))
}
