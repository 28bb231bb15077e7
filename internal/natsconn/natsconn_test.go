package natsconn

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
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

func TestCheckServerVersion(t *testing.T) {
	for v, ok := range map[string]bool{
		"2.9.10": false, "2.9.25": false, "2.2.0": false, "1.4.1": false, "2.10.0-beta.1": false,
		"2.10.0": true, "2.10.29": true, "2.11.0-RC.1": true, "2.15.3": true, "3.0.0": true, "v2.12.1": true,
		"": false, "garbage": false, "2.10": true,
	} {
		err := CheckServerVersion(v)
		if (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", v, err, ok)
		}
		if err != nil && !errors.Is(err, ErrServerTooOld) {
			t.Errorf("%q: %v does not wrap ErrServerTooOld", v, err)
		}
	}
	if err := CheckServerVersion("2.9.10"); err == nil || !strings.Contains(err.Error(), "2.9.10") || !strings.Contains(err.Error(), MinServerVersion) {
		t.Errorf("error %v should name the version and the minimum", err)
	}
}

// TestConnectRefusesAnOldServer: a 2.9 server (a stand-in, and Debian's
// binary when it is installed) is refused with an error that says why.
func TestConnectRefusesAnOldServer(t *testing.T) {
	for _, s := range testenv.OldNATSServers(t, "2.9.10") {
		t.Run(s.Name, func(t *testing.T) {
			nc, _, err := Connect(s.URL, "test", slog.New(slog.DiscardHandler), 0)
			if err == nil {
				nc.Close()
				t.Fatal("connected to a 2.9 server")
			}
			if !errors.Is(err, ErrServerTooOld) || !strings.Contains(err.Error(), "2.9.") {
				t.Errorf("error %v", err)
			}
		})
	}
}

// TestConnectAcceptsTheEmbeddedServer: the server the tests embed passes.
func TestConnectAcceptsTheEmbeddedServer(t *testing.T) {
	n := testenv.StartNATS(t)
	nc, _, err := Connect(n.URL, "test", slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := Ready(nc)(context.Background()); err != nil {
		t.Error(err)
	}
}

// TestLateConnectionToAnOldServerIsClosed: NATS was not up when the service
// started; the first server that answers is too old. The connection is
// closed and readiness says why.
func TestLateConnectionToAnOldServerIsClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing answers until the stand-in below
	nc, _, err := Connect("nats://"+addr, "test", slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	closed := nc.StatusChanged(nats.CLOSED)
	if nc.Status() == nats.CLOSED {
		t.Fatal("closed before any server answered")
	}
	testenv.ServeFakeNATS(t, addr, "2.9.10")
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the connection to a 2.9 server was not closed")
	}
	if err := Ready(nc)(context.Background()); !errors.Is(err, ErrServerTooOld) {
		t.Errorf("Ready: %v, want ErrServerTooOld", err)
	}
}

// TestCIAndREADMEStateTheMinimumVersion: CI checks the server it starts
// against the same minimum the services enforce, and the README states it.
func TestCIAndREADMEStateTheMinimumVersion(t *testing.T) {
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "\nNATS_MIN_VERSION="+MinServerVersion+"\n") {
		t.Errorf(".ci/run does not set NATS_MIN_VERSION=%s", MinServerVersion)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	major, minor, _ := strings.Cut(MinServerVersion, ".")
	minor, _, _ = strings.Cut(minor, ".")
	if !strings.Contains(string(readme), "nats-server "+major+"."+minor+" or later") {
		t.Errorf("README.md does not say nats-server %s.%s or later", major, minor)
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
