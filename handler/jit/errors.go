package jit

import (
	"errors"
	"fmt"
)

// Error codes. Front doors map them to status codes; the message of an Error
// is safe to show a user, anything wrapped inside it goes to the log only.
const (
	EINVALID      = "invalid"
	ENOTFOUND     = "not_found"
	EFORBIDDEN    = "forbidden"
	EUNAUTHORIZED = "unauthorized"
	ECONFLICT     = "conflict"
	EINTERNAL     = "internal"
	EUNAVAILABLE  = "unavailable" // a dependency failed in a way worth retrying
)

// Error is the service's error: a code, a message for users and an optional
// underlying cause for the log.
type Error struct {
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// ErrVMTaken is what a store's refusal of a VM already in another policy
// wraps (see VMTaken), so callers tell it from other conflicts.
var ErrVMTaken = errors.New("the VM is in another policy")

// VMTaken is the conflict of a policy naming a VM that another policy
// already protects.
func VMTaken(vm, policy string) *Error {
	return Wrap(ECONFLICT, ErrVMTaken, fmt.Sprintf("VM %s is already in policy %s; a VM can be in one policy only", vm, policy))
}

// Errorf returns an Error with the given code and a formatted user message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error with the given code and message that keeps err as its
// cause.
func Wrap(code string, err error, message string) *Error {
	return &Error{Code: code, Message: message, Err: err}
}

// ErrorCode returns the code of the first Error in err's chain, EINTERNAL for
// any other error and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-facing message of err: the message of the
// first Error in its chain, or a generic text for any other error.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
