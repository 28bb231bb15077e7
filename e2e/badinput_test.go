package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// Bounds of the bad-input test: generous, so that they catch a leak or an
// unbounded buffer (hundreds of megabytes, thousands of goroutines), not
// noise. The measured figures are logged.
const (
	// heapGrowthAfter bounds the live heap after the run (after a GC)
	// over the live heap before it.
	heapGrowthAfter = 64 << 20
	// heapGrowthPeak bounds the heap in use at any sample during the run
	// over the heap before it: bad requests must not pile up in memory.
	heapGrowthPeak = 768 << 20
	// rssGrowthPeak bounds the process's resident set at any sample over
	// the one before (the whole pipeline runs in this process; the race
	// detector more than doubles it).
	rssGrowthPeak = 1536 << 20
	// goroutineGrowth bounds the goroutines left once the run is over.
	goroutineGrowth = 50
)

// badCase is one kind of request of the bad-input run, with the status the
// ingest must answer (0: the connection is closed without a reply).
type badCase struct {
	name string
	want int
	// per100 is how many of every 100 requests are of this case.
	per100 int
}

// The mix of the run: per 100 requests, 10 valid effects and 5 rows of an
// invalid kind (both answered 200; the rows end succeeded and failed), the
// rest bad requests. Every 400th request is also an oversized chunked body
// and a row whose payload is over the limit (failed with the reason).
var badCases = []badCase{
	{"valid effect", http.StatusOK, 10},
	{"row of an invalid kind", http.StatusOK, 5},
	{"truncated JSON", http.StatusBadRequest, 10},
	{"random bytes", http.StatusBadRequest, 10},
	{"JSON that is not an event", http.StatusBadRequest, 19},
	{"wrong secret", http.StatusUnauthorized, 8},
	{"no secret", http.StatusUnauthorized, 4},
	{"wrong method", http.StatusMethodNotAllowed, 8},
	{"wrong path", http.StatusNotFound, 4},
	{"wrong content type", http.StatusUnsupportedMediaType, 8},
	{"huge headers", http.StatusRequestHeaderFieldsTooLarge, 5},
	{"oversized body (Content-Length)", http.StatusRequestEntityTooLarge, 5},
	{"slow body", http.StatusRequestTimeout, 2},
	{"slow headers", 0, 2},
}

const (
	caseChunkedOversized = "oversized body (chunked)"
	caseOversizedPayload = "row with a payload over the limit"
)

// notEvents are bodies that are JSON but not a usable event: each is a 400.
var notEvents = []string{
	`{}`, `[]`, `null`, `"event"`, `42`, `{"id":1}`, `{"id":"e"}`, `{"id":"e","event":null}`,
	`{"id":"e","event":{"op":"TRUNCATE"}}`, `{"id":"e","event":{"op":"INSERT","data":{"new":null}}}`,
	`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"not-a-uuid","kind":"count"}}}}`,
	`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"}}}}`,
	`{"id":"e","event":{"op":"INSERT","session_variables":{"x-hasura-role":1},"data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"count"}}}}`,
	`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"count","created_at":"yesterday"}}}}`,
	`{"id":"` + strings.Repeat("e", 200) + `","event":{"op":"INSERT"}}`, `{"id":"e v","event":{"op":"INSERT"}}`,
}

// TestBadInputAtVolume sends 10,000 requests to the ingest's webhook, most of
// them bad — malformed, oversized, with a wrong or no secret, a wrong method,
// path or content type, huge headers, bodies and headers that stall — mixed
// with valid effects. The ingest answers each bad request with the status
// that says why, keeps serving, and its memory stays flat (heap measured
// before, during and after); every valid effect's row ends succeeded, run
// once, and every row that can never succeed ends failed with the reason.
func TestBadInputAtVolume(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	reg := effects.NewRegistry()
	reg.Handle("count", func(_ context.Context, e effects.Effect) (any, error) {
		mu.Lock()
		calls[e.ID]++
		mu.Unlock()
		return map[string]string{"id": e.ID}, nil
	})
	// Short enough for the slow clients to be cut within the run, long
	// enough for a loaded machine (the race detector) to read a 4 MiB body.
	const readHeaderTimeout, readTimeout = 3 * time.Second, 15 * time.Second
	p := startPipeline(t, options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 32},
		ingest: func(c *ingest.Config) { c.ReadHeaderTimeout, c.ReadTimeout = readHeaderTimeout, readTimeout }})
	u, err := url.Parse(p.url)
	if err != nil {
		t.Fatal(err)
	}
	addr := u.Host

	const total = 10_000
	plan := make([]string, 0, total)
	for len(plan) < total {
		for _, c := range badCases {
			for range c.per100 {
				plan = append(plan, c.name)
			}
		}
	}
	plan = plan[:total]
	for i := 399; i < total; i += 400 {
		plan[i] = caseChunkedOversized
		plan[i-200] = caseOversizedPayload
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	rnd.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	count := map[string]int{}
	for _, c := range plan {
		count[c]++
	}

	// The rows, inserted before the run as any client would.
	ctx := context.Background()
	insertRows := func(kind, payload string, n int) []json.RawMessage {
		rows, err := p.pg.Pool.Query(ctx, `INSERT INTO effects (kind, payload)
			SELECT $1, $2::jsonb FROM generate_series(1, $3) RETURNING row_to_json(effects)::text`, kind, payload, n)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []json.RawMessage
		for rows.Next() {
			var r json.RawMessage
			if err := rows.Scan(&r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	big := `{"blob":"` + strings.Repeat("b", ingest.DefaultMaxPayloadBytes) + `"}`
	queues := map[string][]json.RawMessage{
		"valid effect":           insertRows("count", `{"n":1}`, count["valid effect"]),
		"row of an invalid kind": insertRows("no such/kind", `{}`, count["row of an invalid kind"]),
		caseOversizedPayload:     insertRows("count", big, count[caseOversizedPayload]),
	}
	var qmu sync.Mutex
	nextRow := func(c string) json.RawMessage {
		qmu.Lock()
		defer qmu.Unlock()
		r := queues[c][0]
		queues[c] = queues[c][1:]
		return r
	}
	// Bad requests carry the event of a valid row (without taking it from
	// its queue): were one of them accepted, that row would run twice.
	decoys := queues["valid effect"]
	var decoy atomic.Int64
	validBody := func() []byte {
		_, b := p.event("INSERT", decoys[int(decoy.Add(1))%len(decoys)])
		return b
	}

	client := &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	do := func(method, path string, body []byte, header map[string]string) (int, string, error) {
		req, err := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Effects-Secret", secret)
		for k, v := range header {
			if v == "" {
				req.Header.Del(k)
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data), nil
	}
	// raw sends head on a connection of its own, then body (writing on
	// while the server reads, in the background), and reads the reply; 0
	// when the server closed the connection without one.
	raw := func(head string, body io.Reader, stall time.Duration) (int, string, error) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, "", err
		}
		defer conn.Close()
		// Written in the background, as the server may answer (and close)
		// before it has read everything: the reply is what counts.
		go func() { // ends when conn is closed
			if _, err := io.WriteString(conn, head); err == nil && body != nil {
				_, _ = io.Copy(conn, body)
			}
		}()
		_ = conn.SetReadDeadline(time.Now().Add(stall + 30*time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return 0, "", nil // closed without a reply
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data), nil
	}
	post := func(extra string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nX-Effects-Secret: %s\r\n%s",
			ingest.EventsPath, secret, extra)
	}

	var redelivered atomic.Int64
	send := func(c string, i int) (int, string, error) {
		switch c {
		case "valid effect", "row of an invalid kind", caseOversizedPayload:
			// Delivered as Hasura does: a transport error or a 503 is
			// tried again, with the same event id.
			_, b := p.event("INSERT", nextRow(c))
			for try := 0; ; try++ {
				s, body, err := do(http.MethodPost, ingest.EventsPath, b, nil)
				if (err == nil && s != http.StatusServiceUnavailable) || try == 10 {
					return s, body, err
				}
				redelivered.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
		case "truncated JSON":
			b := validBody()
			return do(http.MethodPost, ingest.EventsPath, b[:1+i%(len(b)-1)], nil)
		case "random bytes":
			r := rand.New(rand.NewPCG(uint64(i), 3)) // one per request: workers run at once
			b := make([]byte, 1+i%4096)
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			return do(http.MethodPost, ingest.EventsPath, b, nil)
		case "JSON that is not an event":
			return do(http.MethodPost, ingest.EventsPath, []byte(notEvents[i%len(notEvents)]), nil)
		case "wrong secret":
			return do(http.MethodPost, ingest.EventsPath, validBody(), map[string]string{"X-Effects-Secret": "wrong-" + strconv.Itoa(i)})
		case "no secret":
			return do(http.MethodPost, ingest.EventsPath, validBody(), map[string]string{"X-Effects-Secret": ""})
		case "wrong method":
			m := []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch}[i%4]
			return do(m, ingest.EventsPath, validBody(), nil)
		case "wrong path":
			return do(http.MethodPost, "/hasura/event", validBody(), nil)
		case "wrong content type":
			ct := []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", "application/xml"}[i%4]
			return do(http.MethodPost, ingest.EventsPath, validBody(), map[string]string{"Content-Type": ct})
		case "huge headers":
			b := validBody()
			return raw(post(fmt.Sprintf("X-Padding: %s\r\nContent-Length: %d\r\n\r\n", strings.Repeat("p", 80<<10), len(b)))+string(b), nil, 0)
		case "oversized body (Content-Length)":
			// The limit is refused from the header: the body is not sent.
			return raw(post(fmt.Sprintf("Content-Length: %d\r\n\r\n", ingest.DefaultMaxBodyBytes+1+i)), nil, 0)
		case caseChunkedOversized:
			// No length: the server reads up to the limit, then refuses.
			body := io.MultiReader(strings.NewReader(fmt.Sprintf("%x\r\n", 5<<20)),
				io.LimitReader(repeatReader('x'), 5<<20), strings.NewReader("\r\n0\r\n\r\n"))
			return raw(post("Transfer-Encoding: chunked\r\n\r\n"), body, 0)
		case "slow body":
			b := validBody()
			return raw(post(fmt.Sprintf("Content-Length: %d\r\n\r\n", len(b)))+string(b[:len(b)/2]), nil, readTimeout)
		case "slow headers":
			return raw("POST "+ingest.EventsPath+" HTTP/1.1\r\nHost: ingest\r\nX-Effects-Secret: ", nil, readHeaderTimeout)
		}
		return 0, "", fmt.Errorf("no case %q", c)
	}
	want := map[string]int{caseChunkedOversized: http.StatusRequestEntityTooLarge, caseOversizedPayload: http.StatusOK}
	for _, c := range badCases {
		want[c.name] = c.want
	}

	// Memory before, sampled during, after.
	heapBefore, goroutinesBefore := settledHeap()
	rssBefore := rssBytes()
	var heapPeak, rssPeak atomic.Uint64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > heapPeak.Load() {
				heapPeak.Store(ms.HeapInuse)
			}
			if r := rssBytes(); r > rssPeak.Load() {
				rssPeak.Store(r)
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	})

	type outcome struct {
		status int
		body   string
		err    error
	}
	results := make([]outcome, total)
	start := time.Now()
	var wg sync.WaitGroup
	// Slow clients all at once, beside the rest: they hold connections
	// while the others are served.
	work := make(chan int)
	for i, c := range plan {
		if c == "slow body" || c == "slow headers" {
			wg.Go(func() {
				s, b, err := send(c, i)
				results[i] = outcome{s, b, err}
			})
		}
	}
	const workers = 32
	for range workers {
		wg.Go(func() {
			for i := range work {
				s, b, err := send(plan[i], i)
				results[i] = outcome{s, b, err}
			}
		})
	}
	for i, c := range plan {
		if c != "slow body" && c != "slow headers" {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	took := time.Since(start)

	// Every request got the status of its case, with an error that says
	// why; transport errors are failures too.
	wrong := map[string]int{}
	for i, r := range results {
		c := plan[i]
		switch {
		case r.err != nil:
			wrong[c]++
			if wrong[c] <= 3 {
				t.Errorf("%s: %v", c, r.err)
			}
		case r.status != want[c]:
			wrong[c]++
			if wrong[c] <= 3 {
				t.Errorf("%s: %d %.200s, want %d", c, r.status, r.body, want[c])
			}
		case r.status >= 400 && r.status != http.StatusRequestHeaderFieldsTooLarge && !strings.Contains(r.body, `"error":`):
			// 431 comes from net/http itself, as plain text.
			wrong[c]++
			if wrong[c] <= 3 {
				t.Errorf("%s: %d without an error in the reply: %.200s", c, r.status, r.body)
			}
		}
	}

	// The rows: valid ones succeeded, run once; the others failed, with the
	// reason.
	settling := time.Now()
	p.waitFor(2*time.Minute, "every row to leave pending", func() bool {
		var pending int
		if err := p.pg.Pool.QueryRow(ctx, `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending == 0
	})
	settled := time.Since(settling)
	type tally struct{ succeeded, failed, runs, badReason int }
	byKind := map[string]*tally{}
	rows, err := p.pg.Pool.Query(ctx, `SELECT id::text, kind, status, coalesce(error, ''), length(payload::text) FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, kind, status, reason string
		var plen int
		if err := rows.Scan(&id, &kind, &status, &reason, &plen); err != nil {
			t.Fatal(err)
		}
		group := kind
		if plen > ingest.DefaultMaxPayloadBytes {
			group = "oversized"
		}
		tl := byKind[group]
		if tl == nil {
			tl = &tally{}
			byKind[group] = tl
		}
		mu.Lock()
		tl.runs += calls[id]
		mu.Unlock()
		switch status {
		case "succeeded":
			tl.succeeded++
		case "failed":
			tl.failed++
			if !strings.Contains(reason, "not valid") && !strings.Contains(reason, "EFFECTS_MAX_PAYLOAD_BYTES") {
				tl.badReason++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	valid, invalid, oversized := byKind["count"], byKind["no such/kind"], byKind["oversized"]
	switch {
	case valid == nil || valid.succeeded != count["valid effect"] || valid.failed != 0 || valid.runs != count["valid effect"]:
		t.Errorf("valid effects: %+v, want %d succeeded, each run once", valid, count["valid effect"])
	case invalid == nil || invalid.failed != count["row of an invalid kind"] || invalid.badReason != 0 || invalid.runs != 0:
		t.Errorf("rows of an invalid kind: %+v, want %d failed with the reason, none run", invalid, count["row of an invalid kind"])
	case oversized == nil || oversized.failed != count[caseOversizedPayload] || oversized.badReason != 0 || oversized.runs != 0:
		t.Errorf("rows with a payload over the limit: %+v, want %d failed with the reason, none run", oversized, count[caseOversizedPayload])
	}

	// Still serving: one more effect goes through.
	id, row := p.insert("count", `{"after":true}`)
	_, body := p.event("INSERT", row)
	if r := p.post(body); r.Code != http.StatusOK {
		t.Fatalf("after the run: %d %s", r.Code, r.Error)
	}
	if r := p.settled(id); r.Status != "succeeded" {
		t.Errorf("the effect after the run: %+v", r)
	}

	client.CloseIdleConnections()
	close(stopSampling)
	sampler.Wait()
	heapAfter, goroutinesAfter := settledHeap()
	rssAfter := rssBytes()
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	t.Logf("bad input at volume: %d requests in %s, every row final %s after the last (%d valid effects, %d rows of an invalid kind, %d payloads over the limit); "+
		"%d deliveries tried again (transport error or 503); "+
		"heap in use before %s, peak %s, after %s; RSS before %s, peak %s, after %s; goroutines before %d, after %d",
		total, took.Round(time.Millisecond), settled.Round(time.Millisecond), count["valid effect"], count["row of an invalid kind"], count[caseOversizedPayload], redelivered.Load(),
		mib(heapBefore), mib(heapPeak.Load()), mib(heapAfter), mib(rssBefore), mib(rssPeak.Load()), mib(rssAfter),
		goroutinesBefore, goroutinesAfter)
	for _, c := range append(badCases, badCase{name: caseChunkedOversized}, badCase{name: caseOversizedPayload}) {
		t.Logf("  %-32s %5d requests, %d answered otherwise than %d", c.name, count[c.name], wrong[c.name], want[c.name])
	}
	if heapAfter > heapBefore+heapGrowthAfter {
		t.Errorf("heap in use grew from %s to %s after the run (bound: +%s)", mib(heapBefore), mib(heapAfter), mib(heapGrowthAfter))
	}
	if peak := heapPeak.Load(); peak > heapBefore+heapGrowthPeak {
		t.Errorf("heap in use peaked at %s during the run, from %s (bound: +%s)", mib(peak), mib(heapBefore), mib(heapGrowthPeak))
	}
	if peak := rssPeak.Load(); rssBefore > 0 && peak > rssBefore+rssGrowthPeak {
		t.Errorf("RSS peaked at %s during the run, from %s (bound: +%s)", mib(peak), mib(rssBefore), mib(rssGrowthPeak))
	}
	if goroutinesAfter > goroutinesBefore+goroutineGrowth {
		t.Errorf("goroutines grew from %d to %d", goroutinesBefore, goroutinesAfter)
	}
}

// settledHeap returns the heap in use after a GC, and the goroutine count
// once it stops falling (connections closing).
func settledHeap() (uint64, int) {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m >= n {
			break
		}
		n = m
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, runtime.NumGoroutine()
}

// rssBytes is the process's resident set (Linux), 0 where unknown.
func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
