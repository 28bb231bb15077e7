package settings

import (
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/envconfig"
)

// FuzzShared feeds arbitrary values of the shared settings to the one
// reader every service uses: no panic; a refusal names the variable that is
// wrong; what is accepted keeps the package's promise (unset or empty is the
// default; a value given is positive and within range, the duplicate window
// within the max age, replicas 1 to 5). The seed corpus (f.Add and
// testdata/fuzz/FuzzShared/) runs in every `go test`; `make fuzz` fuzzes it.
func FuzzShared(f *testing.F) {
	for _, s := range [][4]string{
		{"", "", "", ""}, {"30s", "168h", "2m", "3"}, {"0", "0s", "-1m", "0"}, {"1ns", "1ns", "1ns", "5"},
		{" 5s ", "1h", "2h", "6"}, {"5", "1e3s", "9223372036s", "+1"}, {"1h1m1s1ms1us1ns", "2562047h", "2562048h", "1 "},
		{"\t", ".5s", "1.5h", "0x2"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, shutdown, maxAge, dupes, replicas string) {
		env := map[string]string{
			"EFFECTS_SHUTDOWN_TIMEOUT": shutdown,
			"EFFECTS_STREAM_MAX_AGE":   maxAge,
			"EFFECTS_DUPLICATE_WINDOW": dupes,
			"EFFECTS_STREAM_REPLICAS":  replicas,
		}
		r := envconfig.FromMap(env)
		s := Read(r, ":9090")
		if err := r.Err(); err != nil {
			named := false
			for name := range env {
				named = named || strings.HasPrefix(err.Error(), name+"=")
			}
			if !named {
				t.Fatalf("error %q does not start with the variable's name", err)
			}
			return
		}
		if s.ShutdownTimeout <= 0 || s.Streams.MaxAge <= 0 || s.Streams.Duplicates <= 0 || s.Streams.Duplicates > s.Streams.MaxAge {
			t.Fatalf("accepted %+v from %q", s, env)
		}
		if err := s.Streams.Validate(); err != nil {
			t.Fatalf("accepted streams %+v that Validate refuses: %v", s.Streams, err)
		}
		if strings.TrimSpace(shutdown) == "" && s.ShutdownTimeout != DefaultShutdownTimeout ||
			strings.TrimSpace(maxAge) == "" && s.Streams.MaxAge != DefaultStreamMaxAge ||
			strings.TrimSpace(replicas) == "" && s.Streams.Replicas != DefaultStreamReplicas {
			t.Fatalf("an empty value did not give the default: %+v from %q", s, env)
		}
	})
}
