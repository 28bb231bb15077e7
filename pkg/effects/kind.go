package effects

import (
	"errors"
	"fmt"
)

// Stream and subject names. Other teams code against these; changing one is a
// breaking change of the wire contract.
const (
	// EffectsStream captures every effect, one subject token per kind.
	EffectsStream = "EFFECTS"
	// CompletedStream captures every completion.
	CompletedStream = "EFFECTS_COMPLETED"

	// SubjectPrefix is the prefix of an effect's subject: "effects.<kind>".
	SubjectPrefix = "effects."
	// CompletedPrefix is the prefix of a completion's subject:
	// "effects.completed.<kind>".
	CompletedPrefix = "effects.completed."

	// EffectsSubjects is the subject filter of [EffectsStream].
	EffectsSubjects = "effects.*"
	// CompletedSubjects is the subject filter of [CompletedStream].
	CompletedSubjects = "effects.completed.>"

	// InvalidKindSubject carries the failed completion of a row whose kind is
	// not a valid kind. Its last token contains "~", which no valid kind
	// does, so it never collides with a real kind's subject.
	InvalidKindSubject = CompletedPrefix + "~invalid"

	// MaxKindLength is the longest valid kind.
	MaxKindLength = 64
)

// ErrInvalidKind is returned (wrapped) by [ValidateKind].
var ErrInvalidKind = errors.New("invalid kind")

// ValidateKind reports whether kind can name a kind of effect: 1 to 64 of
// [A-Za-z0-9_-], and not "completed" (which would make the effect subject
// overlap the completion subjects).
func ValidateKind(kind string) error {
	if kind == "" {
		return fmt.Errorf("%w: kind is empty", ErrInvalidKind)
	}
	if len(kind) > MaxKindLength {
		return fmt.Errorf("%w: kind is %d bytes long, the limit is %d", ErrInvalidKind, len(kind), MaxKindLength)
	}
	for i := 0; i < len(kind); i++ {
		c := kind[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: kind %q may only contain letters, digits, '_' and '-'", ErrInvalidKind, kind)
		}
	}
	if kind == "completed" {
		return fmt.Errorf("%w: %q is reserved for completion subjects", ErrInvalidKind, kind)
	}
	return nil
}

// Subject is the subject an effect of kind is published on. kind must be
// valid.
func Subject(kind string) string { return SubjectPrefix + kind }

// CompletedSubject is the subject a completion of kind is published on. For a
// kind that is not valid it is [InvalidKindSubject].
func CompletedSubject(kind string) string {
	if ValidateKind(kind) != nil {
		return InvalidKindSubject
	}
	return CompletedPrefix + kind
}
