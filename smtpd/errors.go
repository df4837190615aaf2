package smtpd

import (
	"fmt"

	"github.com/emersion/go-smtp"
)

// reply builds the one kind of error session methods return: go-smtp detects
// *smtp.SMTPError by type assertion, so it must never be wrapped.
func reply(code int, enhanced smtp.EnhancedCode, format string, args ...any) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: fmt.Sprintf(format, args...)}
}

// Reply codes used in more than one place.
var (
	errAuthRequired = reply(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required: log in with AUTH PLAIN or LOGIN before MAIL")
	errAuthFailed   = reply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
	errAuthLocked   = reply(454, smtp.EnhancedCode{4, 7, 0}, "Too many failed logins from your address; try again later")
	errLocal        = reply(451, smtp.EnhancedCode{4, 3, 0}, "Local error in processing; try again later")
	errTooBig       = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message size exceeds the fixed maximum message size")
	errLineTooLong  = reply(550, smtp.EnhancedCode{5, 5, 2}, "Message has a line longer than 998 characters (RFC 5322 2.1.1); fold headers or encode the body")
	errShutdown     = reply(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down; try again later")
	errAuthBusy     = reply(454, smtp.EnhancedCode{4, 7, 0}, "Authentication temporarily unavailable; try again later")
	errDataTimeout  = reply(451, smtp.EnhancedCode{4, 4, 2}, "Timeout while receiving the message; nothing was queued")
	errDataLost     = reply(451, smtp.EnhancedCode{4, 4, 2}, "Message data incomplete (connection lost before the final dot); nothing was queued")
	errHeaderTooBig = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message header section too large (size or number of fields)")
)
