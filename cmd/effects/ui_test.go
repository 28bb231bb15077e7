package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// effects ui refuses to serve beyond this machine without a token, and
// other bad settings, with exit code 2, before connecting to anything.
func TestUIRefusals(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none") // never reached
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--addr", "0.0.0.0:8090"}, nil, "--addr 0.0.0.0:8090 is not a loopback address and EFFECTS_UI_TOKEN is not set"},
		{[]string{"--addr", ":8090"}, nil, "is not a loopback address"},
		{[]string{"--addr", "10.1.2.3:8090"}, nil, "is not a loopback address"},
		{[]string{"--addr", "example.com:8090"}, nil, "is not a loopback address"},
		{[]string{"--addr", "0.0.0.0:8090"}, map[string]string{"EFFECTS_UI_READONLY_TOKEN": "readonly-token-0123456789"}, "is not a loopback address"},
		{nil, map[string]string{"EFFECTS_UI_TOKEN": "short"}, "EFFECTS_UI_TOKEN is 5 characters: want at least 16"},
		{nil, map[string]string{"EFFECTS_UI_READONLY_TOKEN": "readonly-token-0123456789"}, "EFFECTS_UI_READONLY_TOKEN is set without EFFECTS_UI_TOKEN"},
		{[]string{"--addr", "8090"}, nil, `--addr "8090": want HOST:PORT`},
		{[]string{"--refresh", "10ms"}, nil, "--refresh 10ms: want 1s or more"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("EFFECTS_UI_TOKEN", "")
			t.Setenv("EFFECTS_UI_READONLY_TOKEN", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, errOut := runEffects(append([]string{"ui"}, tc.args...)...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("effects ui %v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
			}
			for _, v := range tc.env {
				if strings.Contains(errOut, v) {
					t.Errorf("the token is in the message: %q", errOut)
				}
			}
		})
	}
	t.Setenv("DATABASE_URL", "")
	if code, _, errOut := runEffects("ui"); code != 2 || !strings.Contains(errOut, "DATABASE_URL is not set") {
		t.Errorf("without DATABASE_URL: exit %d, %q", code, errOut)
	}
}

// lockedBuffer is a bytes.Buffer safe to read while runUI writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveUI runs effects ui with args until the test ends and returns its
// address and its log.
func serveUI(t *testing.T, args ...string) (string, *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	code := make(chan int, 1)
	stderr := &lockedBuffer{}
	go func() { code <- runUI(ctx, args, io.Discard, stderr, func(a string) { addrc <- a }) }()
	var addr string
	select {
	case addr = <-addrc:
	case c := <-code:
		t.Fatalf("effects ui exited %d:\n%s", c, stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("effects ui did not serve in 30s:\n%s", stderr)
	}
	t.Cleanup(func() {
		cancel()
		if c := <-code; c != 0 {
			t.Errorf("effects ui exited %d after the stop:\n%s", c, stderr)
		}
	})
	return addr, stderr
}

func uiGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// On loopback without a token it serves anyone on this machine; with a
// token it serves on any address and wants the token; the token never
// appears in its log.
func TestUIServes(t *testing.T) {
	pg, ids := oncallTable(t)
	n, _ := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	t.Setenv("EFFECTS_UI_TOKEN", "")
	t.Setenv("EFFECTS_UI_READONLY_TOKEN", "")

	addr, _ := serveUI(t, "--addr", "127.0.0.1:0")
	code, body := uiGet(t, "http://"+addr+"/?status=failed", "")
	if code != http.StatusOK || !strings.Contains(body, ids["echo-failed"]) || strings.Contains(body, ids["echo-pending"]) {
		t.Errorf("open console: %d\n%s", code, body)
	}

	token := "ui-test-token-0123456789abcdef"
	t.Setenv("EFFECTS_UI_TOKEN", token)
	addr, log := serveUI(t, "--addr", "0.0.0.0:0")
	_, port, _ := strings.Cut(addr, "]:")
	if port == "" {
		_, port, _ = strings.Cut(addr, ":")
	}
	url := "http://127.0.0.1:" + port + "/kinds"
	if code, body := uiGet(t, url, ""); code != http.StatusUnauthorized || strings.Contains(body, "echo") {
		t.Errorf("without the token: %d\n%s", code, body)
	}
	if code, body := uiGet(t, url, token); code != http.StatusOK || !strings.Contains(body, `data-kind="echo"`) {
		t.Errorf("with the token: %d\n%s", code, body)
	}
	if !strings.Contains(log.String(), "plain HTTP") || strings.Contains(log.String(), token) {
		t.Errorf("log:\n%s", log)
	}
}
