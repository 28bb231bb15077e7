package settings

import (
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

func TestDefaults(t *testing.T) {
	r := envconfig.FromMap(map[string]string{"EFFECTS_SHUTDOWN_TIMEOUT": "", "EFFECTS_STREAM_MAX_AGE": " "})
	s := Read(r, ":9092")
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	want := Shared{NATSURL: DefaultNATSURL, AdminAddr: ":9092", LogLevel: "info", ShutdownTimeout: 30 * time.Second,
		Streams: effects.StreamOptions{MaxAge: 168 * time.Hour, Duplicates: 2 * time.Minute, Replicas: 1}}
	if s != want {
		t.Errorf("%+v\nwant %+v", s, want)
	}
}

// TestZeroIsAnErrorEverywhere: the one meaning of an explicit zero in a
// shared setting is "wrong", named in the error, never the default.
func TestZeroIsAnErrorEverywhere(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"EFFECTS_SHUTDOWN_TIMEOUT", "0"}, {"EFFECTS_SHUTDOWN_TIMEOUT", "0s"}, {"EFFECTS_SHUTDOWN_TIMEOUT", "-1s"},
		{"EFFECTS_STREAM_MAX_AGE", "0"}, {"EFFECTS_DUPLICATE_WINDOW", "0ms"}, {"EFFECTS_STREAM_REPLICAS", "0"},
		{"EFFECTS_STREAM_REPLICAS", "6"},
	} {
		r := envconfig.FromMap(map[string]string{tc.name: tc.value})
		Read(r, ":9090")
		if err := r.Err(); err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s=%s: error %v, want one naming the variable", tc.name, tc.value, err)
		}
	}
	r := envconfig.FromMap(map[string]string{"EFFECTS_STREAM_MAX_AGE": "1m", "EFFECTS_DUPLICATE_WINDOW": "2m"})
	Read(r, "")
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "EFFECTS_DUPLICATE_WINDOW") {
		t.Errorf("duplicate window over max age: %v", err)
	}
}
