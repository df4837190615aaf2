package bounce

import (
	"encoding/json"
	"strings"
)

// sesNotification is the part of an Amazon SES notification (delivered by
// e-mail, or as the Message of an SNS envelope) that Parse reads.
type sesNotification struct {
	NotificationType string `json:"notificationType"`
	Bounce           *struct {
		BounceType        string `json:"bounceType"`
		ReportingMTA      string `json:"reportingMTA"`
		BouncedRecipients []struct {
			EmailAddress   string `json:"emailAddress"`
			Action         string `json:"action"`
			Status         string `json:"status"`
			DiagnosticCode string `json:"diagnosticCode"`
		} `json:"bouncedRecipients"`
	} `json:"bounce"`
	Complaint *struct {
		ComplainedRecipients []struct {
			EmailAddress string `json:"emailAddress"`
		} `json:"complainedRecipients"`
		ComplaintFeedbackType string `json:"complaintFeedbackType"`
	} `json:"complaint"`
	Delivery *struct {
		Recipients []string `json:"recipients"`
	} `json:"delivery"`
	Mail *struct {
		Source string `json:"source"`
	} `json:"mail"`
}

// parseSES fills rep from a text body that is an SES notification in JSON
// and reports whether it was one.
func parseSES(text string, rep *Report) bool {
	text = strings.TrimSpace(text)
	if !strings.HasPrefix(text, "{") || !strings.Contains(text, "notificationType") {
		return false
	}
	var n sesNotification
	if err := json.Unmarshal([]byte(text), &n); err != nil {
		return false
	}
	if n.NotificationType == "" {
		var sns struct{ Message string }
		if json.Unmarshal([]byte(text), &sns) != nil || sns.Message == "" || json.Unmarshal([]byte(sns.Message), &n) != nil {
			return false
		}
	}
	if n.Mail != nil && rep.OriginalEnvelopeFrom == "" {
		rep.OriginalEnvelopeFrom = mailAddr(n.Mail.Source)
	}
	switch n.NotificationType {
	case "Bounce":
		if n.Bounce == nil {
			return false
		}
		rep.Kind = KindBounce
		for _, b := range n.Bounce.BouncedRecipients {
			if len(rep.Recipients) >= maxRecipients {
				break
			}
			rc := Recipient{
				Recipient:  mailAddr(b.EmailAddress),
				Action:     "failed",
				Status:     scanEnhanced(b.Status),
				Diagnostic: cleanDiag(stripType(b.DiagnosticCode)),
				RemoteMTA:  stripType(n.Bounce.ReportingMTA),
			}
			code, enh := replyCodes(rc.Diagnostic)
			rc.Code = code
			if rc.Status == "" {
				rc.Status = enh
			}
			classifyRecipient(&rc, code, rc.Diagnostic, PhaseFromText(rc.Diagnostic))
			if n.Bounce.BounceType != "Permanent" {
				// Transient or Undetermined: SES gave up on a
				// temporary or unknown failure; never hard.
				rc.Hard = false
				if rc.Reason.Hard() {
					rc.Reason = ReasonOther
				}
			}
			rep.Recipients = append(rep.Recipients, rc)
		}
	case "Complaint":
		if n.Complaint == nil {
			return false
		}
		rep.Kind = KindFeedback
		rep.FeedbackType = strings.ToLower(n.Complaint.ComplaintFeedbackType)
		if rep.FeedbackType == "" {
			rep.FeedbackType = "abuse"
		}
		for _, c := range n.Complaint.ComplainedRecipients {
			if a := mailAddr(c.EmailAddress); a != "" && len(rep.Recipients) < maxRecipients {
				rep.Recipients = append(rep.Recipients, Recipient{Recipient: a})
			}
		}
	case "Delivery":
		rep.Kind = KindDelivered
		if n.Delivery != nil {
			for _, a := range n.Delivery.Recipients {
				if a := mailAddr(a); a != "" && len(rep.Recipients) < maxRecipients {
					rep.Recipients = append(rep.Recipients, Recipient{Recipient: a, Action: "delivered", Status: "2.0.0"})
				}
			}
		}
	default:
		return false
	}
	return true
}
