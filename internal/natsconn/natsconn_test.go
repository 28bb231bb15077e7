package natsconn

import (
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/testenv"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                    "nats://127.0.0.1:4222",
		"nats://user:s3cret@nats:4222":             "nats://redacted@nats:4222",
		"nats://tok3n@a:4222,nats://u:p4ss@b:4222": "nats://redacted@a:4222,nats://redacted@b:4222",
		"nats://a:4222, nats://b:4222":             "nats://a:4222, nats://b:4222",
		"::not a url":                              "(unparsable url)",
	} {
		got := Redact(in)
		if got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"s3cret", "tok3n", "p4ss"} {
			if strings.Contains(got, secret) {
				t.Errorf("Redact(%q) leaks %s", in, secret)
			}
		}
	}
}

func TestSettingsFromEnv(t *testing.T) {
	r := envconfig.FromMap(map[string]string{"EFFECTS_DUPLICATE_WINDOW": "5m"})
	s := SettingsFromEnv(r)
	if s.URL != DefaultURL || s.Streams.Duplicates.String() != "5m0s" || s.Streams.Replicas != 1 || r.Err() != nil {
		t.Fatalf("%+v %v", s, r.Err())
	}
	r = envconfig.FromMap(map[string]string{"EFFECTS_STREAM_MAX_AGE": "a week"})
	SettingsFromEnv(r)
	if r.Err() == nil || !strings.Contains(r.Err().Error(), "EFFECTS_STREAM_MAX_AGE") {
		t.Fatal(r.Err())
	}
}

func TestCloseDrainsAndWaits(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, _, err := Connect(srv.URL, "test", slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	sub, err := nc.Subscribe("x", func(*nats.Msg) { got <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	_ = sub
	if err := nc.Publish("x", []byte("last words")); err != nil {
		t.Fatal(err)
	}
	Close(nc, 5*time.Second)
	if !nc.IsClosed() {
		t.Fatal("not closed")
	}
	select {
	case <-got: // the message buffered before Close was delivered
	default:
		t.Fatal("buffered message lost on Close")
	}
}

// With NATS down the log names NATS and its URL, without the credentials.
func TestConnectLogsUnreachableNATS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	nc, _, err := Connect("nats://alice:hunter2@"+addr, "test", logger, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), "cannot reach NATS") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming NATS: %s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), addr) || strings.Contains(buf.String(), "hunter2") {
		t.Errorf("want the address and no password: %s", buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
