package effects

import (
	"bytes"
	"strconv"

	"github.com/effects-run/effects/internal/jsondec"
)

// parseCompletionFast decodes data, which jsondec.Valid accepted, into c the
// way json.Unmarshal would, without reflection. It reports false, leaving c
// in any state, as soon as it meets anything it does not decode exactly as
// encoding/json does: a field of the wrong type, a duplicate field, a key
// that differs from a field's name only in case, a string with invalid UTF-8
// or a surrogate escape, attempts that is not a whole number, a completed_at
// time.Time refuses. The caller then decodes with encoding/json, which also
// words the error. FuzzParseCompletionFast holds the two to the same result.
//
// The completion is a copy, as a json.RawMessage's is: the completer keeps
// it after the message is gone.
//
// encoding/json was 22% of the completer's CPU; every completion
// encodeCompletion writes takes this path.
func parseCompletionFast(data []byte, c *Completion) bool {
	i := jsondec.SkipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false // null, or a type error encoding/json words
	}
	d := jsondec.New(data)
	var seen jsondec.Fields // effect_id, kind, status, completion, error, attempts, completed_at
	_, ok := d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "effect_id":
			if !seen.First(0) {
				return 0, false
			}
			return d.StringTo(v, &c.EffectID)
		case string(key) == "kind":
			if !seen.First(1) {
				return 0, false
			}
			return d.StringTo(v, &c.Kind)
		case string(key) == "status":
			if !seen.First(2) {
				return 0, false
			}
			if s, end, ok := d.PlainString(v); ok {
				switch Status(s) { // the two statuses without allocating
				case StatusSucceeded:
					c.Status = StatusSucceeded
					return end, true
				case StatusFailed:
					c.Status = StatusFailed
					return end, true
				}
			}
			return d.StringTo(v, (*string)(&c.Status))
		case string(key) == "completion":
			if !seen.First(3) {
				return 0, false
			}
			end := d.Skip(v)
			c.Completion = bytes.Clone(data[v:end]) // null too: json.RawMessage keeps it
			return end, true
		case string(key) == "error":
			if !seen.First(4) {
				return 0, false
			}
			if data[v] == 'n' {
				return v + len("null"), true // stays nil
			}
			c.Error = new(string)
			return d.StringTo(v, c.Error)
		case string(key) == "attempts":
			if !seen.First(5) {
				return 0, false
			}
			return wholeNumber(data, v, &c.Attempts)
		case string(key) == "completed_at":
			if !seen.First(6) {
				return 0, false
			}
			end := d.Skip(v)
			// What encoding/json does for a time.Time, null included.
			return end, c.CompletedAt.UnmarshalJSON(data[v:end]) == nil
		case jsondec.FoldsTo(key, "effect_id", "kind", "status", "completion", "error", "attempts", "completed_at"):
			return 0, false
		}
		return d.Skip(v), true
	})
	return ok && !d.Failed()
}

// wholeNumber decodes the number at data[v] into dst as encoding/json
// decodes a JSON number into an int: null leaves dst as is; a fraction, an
// exponent or a number past int's range is its error, left to it.
func wholeNumber(data []byte, v int, dst *int) (int, bool) {
	if data[v] == 'n' {
		return v + len("null"), true
	}
	end := v
	if end < len(data) && data[end] == '-' {
		end++
	}
	for end < len(data) && '0' <= data[end] && data[end] <= '9' {
		end++
	}
	if end < len(data) && (data[end] == '.' || data[end] == 'e' || data[end] == 'E') {
		return 0, false
	}
	n, err := strconv.ParseInt(string(data[v:end]), 10, strconv.IntSize)
	if err != nil {
		return 0, false // not a number (a string, an object...), or too large
	}
	*dst = int(n)
	return end, true
}
