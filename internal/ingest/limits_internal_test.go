package ingest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/testenv"
)

// The server's own limits answer what is not a usable request with a status
// that says why: 415 for a body that is not JSON by its Content-Type, 431
// for headers over MaxHeaderBytes, 408 for a body that stalls past
// ReadTimeout; and a client that stalls in its headers is cut off after
// ReadHeaderTimeout. Meanwhile the server goes on answering others.
func TestServeLimitsAnswerClearly(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	srv, err := New(Config{WebhookSecret: "s", ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 600 * time.Millisecond},
		js, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, srv)
	waitFor(t, srv.StreamsReady(), "the streams")

	// raw sends head (request line and headers, without the blank line),
	// then body after the pause, and returns the reply, or nil when the
	// server closed the connection without one.
	raw := func(head string, pause time.Duration, body string) *http.Response {
		t.Helper()
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause) // the stall under test: a slow client
		_, _ = io.WriteString(conn, body)
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return nil
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	errorOf := func(resp *http.Response) string {
		var got struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&got)
		return got.Error
	}
	post := func(extra string, length int) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: ingest\r\n%s: s\r\n%sContent-Length: %d\r\n", EventsPath, SecretHeader, extra, length)
	}
	body := string(readFixture(t, "insert.json"))

	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "application/xml", "not a media type/"} {
		resp := raw(post("Content-Type: "+ct+"\r\n", len(body)), 0, "\r\n"+body)
		if resp == nil || resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(errorOf(resp), "not JSON") {
			t.Errorf("Content-Type %s: %v, want 415 saying it is not JSON", ct, resp)
		}
	}
	for _, ct := range []string{"", "Content-Type: application/json; charset=utf-8\r\n", "Content-Type: application/vnd.hasura+json\r\n"} {
		if resp := raw(post(ct, len(body)), 0, "\r\n"+body); resp == nil || resp.StatusCode != http.StatusOK {
			t.Errorf("%q: %v, want 200", ct, resp)
		}
	}

	// net/http allows 4 KiB over MaxHeaderBytes before it answers 431.
	huge := "X-Huge: " + strings.Repeat("h", MaxHeaderBytes+8<<10) + "\r\n"
	if resp := raw(post(huge, len(body)), 0, "\r\n"+body); resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("headers over %d bytes: %v, want 431", MaxHeaderBytes, resp)
	}

	// A body that stalls: 408 once ReadTimeout has passed.
	start := time.Now()
	resp := raw(post("Content-Type: application/json\r\n", len(body)), 0, "\r\n"+body[:10])
	if resp == nil || resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(errorOf(resp), "did not arrive within") {
		t.Errorf("a stalled body: %v, want 408", resp)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("a stalled body was answered after %s, before the read timeout", took)
	}

	// Headers that stall are cut off, unanswered (net/http's way).
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST "+EventsPath+" HTTP/1.1\r\nHost: ingest\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection stalled in its headers got a reply")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("a connection stalled in its headers is still open after 30s")
	}
	// And the server still serves.
	if resp := raw(post("Content-Type: application/json\r\n", len(body)), 0, "\r\n"+body); resp == nil || resp.StatusCode != http.StatusOK {
		t.Errorf("after the slow clients: %v, want 200", resp)
	}
}
