package completer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
)

// benchMsg is a completion message whose settling costs nothing: what the
// completer does per completion outside its consume loop is what is
// measured.
type benchMsg struct {
	jetstream.Msg
	data []byte
	acks *int
}

func (m benchMsg) Data() []byte         { return m.data }
func (m benchMsg) Headers() nats.Header { return nil }
func (m benchMsg) Subject() string      { return "effects.completed.echo" }
func (m benchMsg) Ack() error           { *m.acks++; return nil }
func (m benchMsg) InProgress() error    { return nil }

// BenchmarkProcess: one op is one completion through worker.process (parse,
// reduce, the batch statement, counting and acking) in batches of 500, each
// completing pending rows of its own. PostgreSQL runs in its own processes,
// so -benchmem's allocations and the CPU profile are the completer's; the
// per-completion instruction count comes from
// valgrind --tool=callgrind --toggle-collect='*worker).process'.
func BenchmarkProcess(b *testing.B) {
	const size = 500
	pg := testenv.StartMigrated(b)
	ctx := context.Background()
	c, err := New(Config{DatabaseURL: pg.URL}, pg.Pool, benchJS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	wk := c.newWorker()
	rows, err := pg.Pool.Query(ctx, `INSERT INTO effects (kind, payload) SELECT 'echo', '{"n":1}' FROM generate_series(1, $1::int) RETURNING id::text`, b.N)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	acks := 0
	msgs := make([][]jetstream.Msg, (b.N+size-1)/size)
	at := time.Now().UTC().Format(time.RFC3339Nano)
	for i, id := range ids {
		data := fmt.Appendf(nil, `{"effect_id":%q,"kind":"echo","status":"succeeded","completion":{"status":200,"body":{"ok":true}},"attempts":1,"completed_at":%q}`, id, at)
		msgs[i/size] = append(msgs[i/size], benchMsg{data: data, acks: &acks})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for _, batch := range msgs {
		wk.process(ctx, batch)
	}
	b.StopTimer()
	if acks != len(ids) {
		b.Fatalf("%d acks for %d completions", acks, len(ids))
	}
}

// benchJS is a JetStream New accepts; process never calls it.
type benchJS struct{ jetstream.JetStream }
