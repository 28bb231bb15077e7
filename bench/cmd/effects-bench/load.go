package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// runLoad is `effects-bench load`: the load generator of an effects
// contender, in a process of its own.
//
//   - table: rows COPY-inserted into the effects table in batches; the
//     ingest's table source reads them.
//   - webhook: the same rows; once a batch's COPY has committed, its rows
//     are read back as Hasura sends them (the whole row as JSON) and each
//     is POSTed in Hasura's event format, -posters at a time. A row is
//     never POSTed before it is visible, so its completion always finds it.
//   - ingest: Hasura-format POSTs of made-up rows (nothing in PostgreSQL),
//     answered once JetStream has acknowledged; it reports its own rate and
//     the POST latencies, since nothing completes.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	mode := fs.String("mode", "", "table, webhook or ingest")
	dbURL := fs.String("db", "", "PostgreSQL URL of the effects database (table, webhook)")
	url := fs.String("url", "", "the ingest's /hasura/events (webhook, ingest)")
	secret := fs.String("secret", "", "X-Effects-Secret")
	batch := fs.Int("batch", 5000, "rows per COPY")
	posters := fs.Int("posters", 100, "concurrent POSTs (Hasura's default pool is 100)")
	_ = fs.Parse(args)

	ctx := context.Background()
	var pool *pgxpool.Pool
	if *mode != "ingest" {
		var err error
		if pool, err = pgxpool.New(ctx, *dbURL); err != nil {
			return err
		}
		defer pool.Close()
		if err := pool.Ping(ctx); err != nil {
			return err
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *posters, MaxConnsPerHost: *posters}}
	post := func(ctx context.Context, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Effects-Secret", *secret)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("ingest answered %d: %s", resp.StatusCode, b)
		}
		// Read to the end, so that the connection is reused, without a
		// buffer per reply (io.Discard reads through a pooled one).
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}

	switch *mode {
	case "table":
		return serveChild("load", func(ctx context.Context, ph phase) (any, error) {
			return map[string]int{"inserted": ph.N}, produce(ctx, ph, *batch, func(ctx context.Context, from, k int) error {
				_, err := copyRows(ctx, pool, from, k)
				return err
			})
		})
	case "webhook":
		return serveChild("load", func(ctx context.Context, ph phase) (any, error) {
			posted, err := webhookPhase(ctx, pool, ph, *batch, *posters, post)
			return map[string]int{"posted": posted}, err
		})
	case "ingest":
		return serveChild("load", func(ctx context.Context, ph phase) (any, error) {
			var mu sync.Mutex
			next := 0
			lat := make([]time.Duration, 0, ph.N)
			start := time.Now()
			err := postAll(ctx, *posters, func(ctx context.Context, body *bytes.Buffer) (bool, error) {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= ph.N {
					return false, nil
				}
				row := fmt.Sprintf(`{"id":%q,"kind":"echo","payload":{"i":%d,"to":"ops@example.com"},"created_at":%q,"status":"pending","attempts":0,"completed_at":null,"completion":null,"error":null,"published_at":null}`,
					newUUID(), i, time.Now().UTC().Format("2006-01-02T15:04:05.999999+00:00"))
				hasuraEvent(body, []byte(row))
				t0 := time.Now()
				if err := post(ctx, body.Bytes()); err != nil {
					return false, err
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
				return true, nil
			})
			elapsed := time.Since(start)
			if err != nil {
				return nil, err
			}
			slices.Sort(lat)
			return ingestResult{N: len(lat), Seconds: elapsed.Seconds(),
				P50: pct(lat, 0.50), P95: pct(lat, 0.95), P99: pct(lat, 0.99)}, nil
		})
	}
	return fmt.Errorf("load: -mode %q: want table, webhook or ingest", *mode)
}

// webhookPhase inserts ph.N rows with COPY and POSTs each in Hasura's
// format, posters at a time, with post. A batch's rows are read back and
// handed to the posters only once its COPY has committed: a row POSTed
// before its INSERT commits may complete before it is visible, and the
// completer then drops the completion as unknown and the run hangs.
func webhookPhase(ctx context.Context, pool *pgxpool.Pool, ph phase, batch, posters int, post func(ctx context.Context, body []byte) error) (int, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	rows := make(chan []byte, ph.N)
	go func() {
		defer close(rows)
		err := produce(ctx, ph, batch, func(ctx context.Context, from, k int) error {
			ids, err := copyRows(ctx, pool, from, k)
			if err != nil {
				return err
			}
			// CopyFrom has returned: its transaction committed.
			r, err := pool.Query(ctx, `SELECT row_to_json(e)::text FROM effects e WHERE id = ANY($1)`, ids)
			if err != nil {
				return err
			}
			defer r.Close()
			for r.Next() {
				var row []byte
				if err := r.Scan(&row); err != nil {
					return err
				}
				rows <- row
			}
			return r.Err()
		})
		if err != nil {
			cancel(fmt.Errorf("inserting: %w", err))
		}
	}()
	var posted int
	var mu sync.Mutex
	err := postAll(ctx, posters, func(ctx context.Context, body *bytes.Buffer) (bool, error) {
		var row []byte
		select {
		case r, ok := <-rows:
			if !ok {
				return false, nil
			}
			row = r
		case <-ctx.Done():
			return false, nil
		}
		hasuraEvent(body, row)
		if err := post(ctx, body.Bytes()); err != nil {
			return false, err
		}
		mu.Lock()
		posted++
		mu.Unlock()
		return true, nil
	})
	if cerr := context.Cause(ctx); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil && posted != ph.N {
		err = fmt.Errorf("posted %d rows of %d", posted, ph.N)
	}
	return posted, err
}

// ingestResult is what the ingest-alone load generator reports: POSTs,
// their wall time, and the percentiles of their round trips in seconds.
type ingestResult struct {
	N       int     `json:"n"`
	Seconds float64 `json:"seconds"`
	P50     float64 `json:"p50"`
	P95     float64 `json:"p95"`
	P99     float64 `json:"p99"`
}

// pct is the q-quantile of sorted durations, in seconds (nearest rank).
func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(len(sorted)-1, int(q*float64(len(sorted))))
	return sorted[i].Seconds()
}

// postAll runs posters goroutines, each calling one until it returns false
// or an error; the first error stops them all.
func postAll(ctx context.Context, posters int, one func(ctx context.Context, body *bytes.Buffer) (bool, error)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for range posters {
		wg.Go(func() {
			var body bytes.Buffer
			for {
				body.Reset()
				more, err := one(ctx, &body)
				if err != nil {
					cancel(err)
					return
				}
				if !more || ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// hasuraEvent writes the body Hasura's event trigger POSTs for an INSERT of
// row (the row as JSON), with a fresh event id.
func hasuraEvent(body *bytes.Buffer, row []byte) {
	fmt.Fprintf(body, `{"id":%q,"created_at":%q,"trigger":{"name":"effects_dispatch"},"table":{"schema":"public","name":"effects"},"event":{"op":"INSERT","session_variables":null,"trace_context":null,"data":{"old":null,"new":%s}},"delivery_info":{"current_retry":0,"max_retries":10}}`,
		newUUID(), time.Now().UTC().Format("2006-01-02T15:04:05.999999"), row)
}

// copyRows COPY-inserts k echo rows numbered from, with ids made here (so
// the webhook load can read exactly these rows back), and returns the ids.
func copyRows(ctx context.Context, pool *pgxpool.Pool, from, k int) ([]pgtype.UUID, error) {
	ids := make([]pgtype.UUID, k)
	rows := make([][]any, k)
	for i := range rows {
		_, _ = rand.Read(ids[i].Bytes[:])
		ids[i].Bytes[6] = ids[i].Bytes[6]&0x0f | 0x40
		ids[i].Bytes[8] = ids[i].Bytes[8]&0x3f | 0x80
		ids[i].Valid = true
		rows[i] = []any{ids[i], "echo", fmt.Sprintf(`{"i": %d, "to": "ops@example.com"}`, from+i)}
	}
	_, err := pool.CopyFrom(ctx, pgx.Identifier{"effects"}, []string{"id", "kind", "payload"}, pgx.CopyFromRows(rows))
	return ids, err
}

// newUUID is a random (version 4) UUID in its text form.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// lineReader reads lines from the driver.
type lineReader struct{ sc *bufio.Scanner }

func newLineReader(f *os.File) *lineReader { return &lineReader{sc: bufio.NewScanner(f)} }

func (r *lineReader) next() (string, bool) {
	if !r.sc.Scan() {
		return "", false
	}
	return r.sc.Text(), true
}

func cutWord(s string) (word, rest string, ok bool) { return strings.Cut(s, " ") }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
