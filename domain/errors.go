package domain

import "net/http"

// Error codes carried by *Error, stable strings for the HTTP API and CLI.
const (
	CodeAccountNotFound = "account_not_found" // 404: no such account
	CodeInvalidAccount  = "invalid_account"   // 400: bad account ID or owner address
	CodeOptionRequired  = "option_required"   // 403: account lacks the custom-domain option
	CodeNotADomain      = "not_a_domain"      // 400: input is not a bare domain name
	CodePublicSuffix    = "public_suffix"     // 400: input is a public suffix (com, co.jp…)
	CodeFreemail        = "freemail"          // 400: input is a public mailbox provider
	CodeExists          = "exists"            // 409: domain already on this account
	CodeTaken           = "taken"             // 409: domain registered by another account
	CodeNotFound        = "domain_not_found"  // 404: no such domain on this account
	// CodePlatformDomain (403): the domain is, or is under, the platform's
	// own (sender, bounce or DKIM) registrable domain.
	CodePlatformDomain = "platform_domain"
	// CodeSubdomainTaken (409): the domain is under a domain another
	// account registered.
	CodeSubdomainTaken = "subdomain_of_taken"
	// CodeParentTaken (409): another account registered a domain under
	// this one.
	CodeParentTaken = "parent_of_taken"
	// CodeRotationPending (409): a key rollover already waits for its record.
	CodeRotationPending = "rotation_pending"
)

// Error is a refusal the caller can show to the user: Msg is English text
// meant for them, Code a stable identifier and Status the HTTP status the
// API should answer with. errors.Is matches two *Error values with the same
// Code, so errors.Is(err, ErrFreemail) works whatever the message says.
type Error struct {
	Code   string
	Status int
	Msg    string
}

// Error returns the message for the user.
func (e *Error) Error() string { return e.Msg }

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Refusal values to compare against with errors.Is. The errors returned by
// Store carry the same Code with a message naming the input.
var (
	ErrAccountNotFound = &Error{CodeAccountNotFound, http.StatusNotFound, "account not found"}
	ErrInvalidAccount  = &Error{CodeInvalidAccount, http.StatusBadRequest, "invalid account"}
	ErrOptionRequired  = &Error{CodeOptionRequired, http.StatusForbidden, "the custom mail domain option is not enabled for this account"}
	ErrNotADomain      = &Error{CodeNotADomain, http.StatusBadRequest, "not a domain name: enter only the part after \"@\" of your address, e.g. example.com"}
	ErrPublicSuffix    = &Error{CodePublicSuffix, http.StatusBadRequest, "a public suffix cannot be registered: enter your own domain"}
	ErrFreemail        = &Error{CodeFreemail, http.StatusBadRequest, "public mailbox provider domains such as gmail.com cannot be used: enter a domain your company owns"}
	ErrExists          = &Error{CodeExists, http.StatusConflict, "domain already registered on this account"}
	ErrTaken           = &Error{CodeTaken, http.StatusConflict, "domain registered by another account"}
	ErrNotFound        = &Error{CodeNotFound, http.StatusNotFound, "domain not found"}
	ErrPlatformDomain  = &Error{CodePlatformDomain, http.StatusForbidden, "the mail platform's own domains cannot be registered"}
	ErrSubdomainTaken  = &Error{CodeSubdomainTaken, http.StatusConflict, "domain is under a domain registered by another account"}
	ErrParentTaken     = &Error{CodeParentTaken, http.StatusConflict, "another account registered a domain under this one"}
)
