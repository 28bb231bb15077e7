// Package redact removes secrets (database URLs, passwords) from errors
// before they are logged or returned: drivers may quote connection settings
// in their messages.
package redact

import "strings"

// Mask is what a secret is replaced with.
const Mask = "xxxxx"

// Error returns err with every non-empty secret in its text replaced by
// [Mask]. The result still unwraps to err, for errors.Is and errors.As; err
// itself is returned when its text holds no secret (and nil for nil).
func Error(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if s != "" && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, Mask)
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
