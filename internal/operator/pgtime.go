package operator

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// PGTime is a timestamptz as the on-call commands show it. A row can hold
// 'infinity', '-infinity' or a year time.Time's JSON cannot write (BC, past
// 9999); a time.Time scan of 'infinity' fails the whole query, so one such
// row would break `effects list` for everyone. PGTime scans any of them and
// prints them as PostgreSQL does: infinity, -infinity, or the time.
type PGTime struct{ pgtype.Timestamptz }

// Finite reports whether t is a finite time, and that time.
func (t PGTime) Finite() (time.Time, bool) {
	if !t.Valid || t.InfinityModifier != pgtype.Finite {
		return time.Time{}, false
	}
	return t.Time, true
}

// Format writes t in layout (which starts with the year), "infinity" or
// "-infinity", or "-" for NULL; a BC year as PostgreSQL writes it.
func (t PGTime) Format(layout string) string {
	switch {
	case !t.Valid:
		return "-"
	case t.InfinityModifier == pgtype.Infinity:
		return "infinity"
	case t.InfinityModifier == pgtype.NegativeInfinity:
		return "-infinity"
	}
	u := t.Time.UTC()
	if y := u.Year(); y <= 0 {
		// PostgreSQL's way: year 1 BC is year 0.
		return fmt.Sprintf("%04d%s BC", 1-y, u.Format(strings.TrimPrefix(layout, "2006")))
	}
	return u.Format(layout)
}

// MarshalJSON writes an RFC 3339 time, "infinity" or "-infinity" (strings),
// or null. A BC year is written as PostgreSQL does ("0044-03-15T00:00:00Z
// BC") and a year past 9999 with its fifth digit: time.Time's MarshalJSON
// refuses both.
func (t PGTime) MarshalJSON() ([]byte, error) {
	if !t.Valid {
		return []byte("null"), nil
	}
	return json.Marshal(t.Format(time.RFC3339Nano))
}

// UnmarshalJSON reads what MarshalJSON writes (years 1 to 9999, BC too).
func (t *PGTime) UnmarshalJSON(b []byte) error {
	var s *string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	switch {
	case s == nil:
		*t = PGTime{}
	case *s == "infinity":
		*t = PGTime{pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}}
	case *s == "-infinity":
		*t = PGTime{pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}}
	default:
		v, bc := strings.CutSuffix(*s, " BC")
		tm, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return err
		}
		if bc {
			tm = tm.AddDate(1-2*tm.Year(), 0, 0)
		}
		*t = PGTime{pgtype.Timestamptz{Time: tm, Valid: true}}
	}
	return nil
}
