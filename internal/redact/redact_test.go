package redact_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/redact"
)

func TestError(t *testing.T) {
	base := errors.New("failed to connect to postgres://u:hunter2@h/db")
	err := redact.Error(fmt.Errorf("connect: %w", base), "postgres://u:hunter2@h/db", "hunter2", "")
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), redact.Mask) {
		t.Errorf("redacted error = %q", err)
	}
	if !errors.Is(err, base) {
		t.Error("the redacted error does not unwrap to the original")
	}
	if plain := errors.New("x"); redact.Error(plain, "y") != plain {
		t.Error("an error without secrets is not returned as it is")
	}
	if redact.Error(nil, "y") != nil {
		t.Error("nil is not nil")
	}
}
