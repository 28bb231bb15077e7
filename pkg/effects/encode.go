package effects

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/internal/jsonenc"
)

// encodeCompletion writes c exactly as EncodeJSON(c) does (a test checks
// it byte for byte), without reflection: every completion a dispatcher
// publishes goes through it.
func encodeCompletion(c Completion) ([]byte, error) {
	if y := c.CompletedAt.Year(); y < 0 || y > 9999 {
		return EncodeJSON(c) // its error, word for word
	}
	if _, off := c.CompletedAt.Zone(); off%60 != 0 {
		return EncodeJSON(c)
	}
	n := len(`{"effect_id":"","kind":"","status":"","completion":,"error":,"attempts":,"completed_at":"2006-01-02T15:04:05.999999999-07:00"}`) +
		len(c.EffectID) + len(c.Kind) + len(c.Status) + len(c.Completion) + 20
	if c.Error != nil {
		n += len(*c.Error) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, `{"effect_id":`...)
	b = jsonenc.AppendString(b, c.EffectID)
	b = append(b, `,"kind":`...)
	b = jsonenc.AppendString(b, c.Kind)
	b = append(b, `,"status":`...)
	b = jsonenc.AppendString(b, string(c.Status))
	b = append(b, `,"completion":`...)
	switch {
	case c.Completion == nil:
		b = append(b, "null"...)
	case jsondec.Valid(c.Completion):
		b = jsondec.AppendCompact(b, c.Completion)
	default:
		// As encoding/json writes a json.RawMessage with HTML escaping
		// off: compacted, refused when not valid JSON.
		buf := bytes.NewBuffer(b)
		if err := json.Compact(buf, c.Completion); err != nil {
			return EncodeJSON(c)
		}
		b = buf.Bytes()
	}
	b = append(b, `,"error":`...)
	if c.Error == nil {
		b = append(b, "null"...)
	} else {
		b = jsonenc.AppendString(b, *c.Error)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(c.Attempts), 10)
	b = append(b, `,"completed_at":"`...)
	b = c.CompletedAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}
