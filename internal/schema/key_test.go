package schema_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// pgCode is the SQLSTATE of err, "" when it is not a PostgreSQL error.
func pgCode(err error) (code, constraint string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.ConstraintName
	}
	return "", ""
}

// The key migration on a table at the version before it that already has rows, pending ones
// of one kind among them: every row gets key NULL, nothing is refused, and
// keys work from then on. For a plain and a schema-qualified, mixed-case
// table name (EFFECTS_TABLE).
func TestKeyMigrationOnExistingRows(t *testing.T) {
	pg := testenv.StartPostgres(t)
	for _, table := range []string{"effects", pg.Schema + "_k.Jobs"} {
		t.Run(table, func(t *testing.T) {
			conn := connect(t, pg.URL)
			ctx := testCtx(t)
			tb, _ := schema.ParseTable(table)
			if tb.Schema != "" {
				if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{tb.Schema}.Sanitize()); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					_, _ = connect(t, pg.URL).Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{tb.Schema}.Sanitize()+" CASCADE")
				})
			}
			// A table of the version before the key, holding rows: pending
			// ones of one kind (which the unique index must take), final
			// ones.
			before := schema.MigrationVersion("_key.sql") - 1
			if before < 1 {
				t.Fatalf("no key migration (version %d)", before+1)
			}
			if err := schema.MigrateTo(ctx, conn, table, before); err != nil {
				t.Fatal(err)
			}
			if v := version(t, conn, table); v != before {
				t.Fatalf("version %d, want %d", v, before)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO "+tb.Quoted()+` (kind, status) SELECT 'sync', s FROM unnest(ARRAY['pending', 'pending', 'pending', 'succeeded', 'failed']) s`); err != nil {
				t.Fatal(err)
			}
			migrate(t, conn, table)
			var rows, withKey int
			if err := conn.QueryRow(ctx, "SELECT count(*), count(key) FROM "+tb.Quoted()).Scan(&rows, &withKey); err != nil {
				t.Fatal(err)
			}
			if rows != 5 || withKey != 0 {
				t.Errorf("after the migration: %d rows, %d with a key; want 5 rows, none with a key", rows, withKey)
			}
			got := catalog(t, conn, table)
			for _, want := range []string{
				"column key text",
				"constraint " + tb.Name + "_key_length CHECK ((octet_length(key) <= 512)) NOT VALID",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("catalog lacks %q; have:\n%s", want, got)
				}
			}
			index := false
			for _, line := range strings.Split(got, "\n") {
				index = index || strings.Contains(line, "CREATE UNIQUE INDEX") && strings.Contains(line, tb.Name+"_key_idx") &&
					strings.HasSuffix(line, " USING btree (kind, key) WHERE (status = 'pending'::text)")
			}
			if !index {
				t.Errorf("no unique index %s_key_idx on (kind, key) of pending rows; have:\n%s", tb.Name, got)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO "+tb.Quoted()+" (kind, key) VALUES ('sync', '42')"); err != nil {
				t.Fatal(err)
			}
			_, err := conn.Exec(ctx, "INSERT INTO "+tb.Quoted()+" (kind, key) VALUES ('sync', '42')")
			if code, constraint := pgCode(err); code != "23505" || constraint != tb.Name+"_key_idx" {
				t.Errorf("second pending row with the key: %v, want a unique violation of %s_key_idx", err, tb.Name)
			}
			migrate(t, conn, table)
			if again := catalog(t, conn, table); again != got {
				t.Errorf("migrating again changed the table:\n%s\nthen:\n%s", got, again)
			}
		})
	}
}

// The key's rules as users meet them from SQL.
func TestKeyOnePendingPerKey(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)
	migrate(t, conn, "effects")

	insert := func(kind, key string) (string, error) {
		var id string
		err := conn.QueryRow(ctx, "INSERT INTO effects (kind, key) VALUES ($1, $2) RETURNING id::text", kind, key).Scan(&id)
		return id, err
	}
	insertOnce := func(kind, key string) (inserted bool) {
		t.Helper()
		rows, err := conn.Query(ctx, `INSERT INTO effects (kind, key) VALUES ($1, $2)
			ON CONFLICT (kind, key) WHERE status = 'pending' DO NOTHING RETURNING id`, kind, key)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[[16]byte])
		if err != nil {
			t.Fatalf("ON CONFLICT insert: %v", err)
		}
		return len(ids) == 1
	}
	setStatus := func(id, status string) error {
		_, err := conn.Exec(ctx, "UPDATE effects SET status = $2 WHERE id = $1", id, status)
		return err
	}

	first, err := insert("sync_customer", "42")
	if err != nil {
		t.Fatal(err)
	}
	// A second pending row: refused with the unique violation naming the
	// index, or skipped with ON CONFLICT.
	_, err = insert("sync_customer", "42")
	if code, constraint := pgCode(err); code != "23505" || constraint != "effects_key_idx" {
		t.Fatalf("second insert: %v, want unique violation of effects_key_idx", err)
	}
	if insertOnce("sync_customer", "42") {
		t.Error("ON CONFLICT ... DO NOTHING inserted a second pending row")
	}
	// Another kind, another key: not limited.
	if _, err := insert("send_invoice", "42"); err != nil {
		t.Errorf("same key, other kind: %v", err)
	}
	if !insertOnce("sync_customer", "43") {
		t.Error("ON CONFLICT skipped a key nobody holds")
	}
	// Rows without a key are not limited.
	for range 3 {
		if _, err := conn.Exec(ctx, "INSERT INTO effects (kind) VALUES ('sync_customer')"); err != nil {
			t.Fatalf("row without a key: %v", err)
		}
	}

	// Final rows free the key: succeeded, then failed.
	if err := setStatus(first, "succeeded"); err != nil {
		t.Fatal(err)
	}
	second, err := insert("sync_customer", "42")
	if err != nil {
		t.Fatalf("after the holder succeeded: %v", err)
	}
	if err := setStatus(second, "failed"); err != nil {
		t.Fatal(err)
	}
	if !insertOnce("sync_customer", "42") {
		t.Fatal("after the holder failed, ON CONFLICT skipped the key")
	}
	// A final row set back to pending by hand (before a MANUAL re-run, say)
	// takes the key again, or is refused while another row holds it.
	if err := setStatus(second, "pending"); err == nil {
		t.Error("a failed row set back to pending while another pending row holds its key was accepted")
	} else if code, _ := pgCode(err); code != "23505" {
		t.Errorf("set back to pending: %v, want a unique violation", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM effects WHERE kind = 'sync_customer' AND key = '42' AND status = 'pending'").Scan(&n); err != nil || n != 1 {
		t.Errorf("pending rows with the key: %d, %v; want 1", n, err)
	}

	// The key's length is bounded by name, predictably: 512 bytes of
	// incompressible text pass, 513 are refused by the check constraint.
	b := make([]byte, 256)
	_, _ = rand.Read(b)
	long := hex.EncodeToString(b)
	if _, err := insert("sync_customer", long); err != nil {
		t.Errorf("512-byte key: %v", err)
	}
	_, err = insert("sync_customer", long+"x")
	if code, constraint := pgCode(err); code != "23514" || constraint != "effects_key_length" {
		t.Errorf("513-byte key: %v, want a check violation of effects_key_length", err)
	}
	_, err = insert("sync_customer", strings.Repeat("é", 300)) // 600 bytes in 300 characters
	if code, _ := pgCode(err); code != "23514" {
		t.Errorf("600-byte key of 300 characters: %v, want a check violation", err)
	}

	// Why Hasura's on_conflict cannot use the index: it names the arbiter
	// with ON CONFLICT ON CONSTRAINT, and a partial unique index is not a
	// constraint (hasura/graphql-engine#3666). The column form above is
	// what works.
	_, err = conn.Exec(ctx, `INSERT INTO effects (kind, key) VALUES ('sync_customer', '42')
		ON CONFLICT ON CONSTRAINT effects_key_idx DO NOTHING`)
	if code, _ := pgCode(err); code != "42704" {
		t.Errorf("ON CONFLICT ON CONSTRAINT effects_key_idx: %v, want undefined_object (42704)", err)
	}
}

// Concurrent inserts of one key, as from many clients at once: exactly one
// row is inserted, whichever statement form each client uses.
func TestKeyConcurrentInserts(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	setup := connect(t, pg.URL)
	migrate(t, setup, "effects")
	const clients = 8
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = connect(t, pg.URL)
	}
	var wg sync.WaitGroup
	errs := make([]error, clients)
	start := make(chan struct{})
	for i, c := range conns {
		wg.Go(func() {
			<-start
			q := `INSERT INTO effects (kind, key) VALUES ('sync_customer', '7')`
			if i%2 == 0 {
				q += ` ON CONFLICT (kind, key) WHERE status = 'pending' DO NOTHING`
			}
			_, err := c.Exec(testCtx(t), q)
			if code, _ := pgCode(err); code == "23505" {
				err = nil // refused: what a plain insert gets
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	var n int
	if err := setup.QueryRow(testCtx(t), "SELECT count(*) FROM effects WHERE key = '7'").Scan(&n); err != nil || n != 1 {
		t.Errorf("rows with the key: %d, %v; want 1", n, err)
	}
}

// The README's recipe for Hasura, whose on_conflict cannot name a partial
// index: a SQL function, tracked as a mutation, that inserts unless the key
// is held. It returns the new row, or no row.
func TestKeyInsertOnceFunction(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)
	migrate(t, conn, "effects")
	// As in the README ("One pending effect per key").
	if _, err := conn.Exec(ctx, `
CREATE FUNCTION effects_insert_once(kind text, key text, payload jsonb DEFAULT '{}')
RETURNS SETOF effects LANGUAGE sql VOLATILE AS $$
    INSERT INTO effects (kind, key, payload)
    VALUES (effects_insert_once.kind, effects_insert_once.key, effects_insert_once.payload)
    ON CONFLICT (kind, key) WHERE status = 'pending' DO NOTHING
    RETURNING *
$$;`); err != nil {
		t.Fatal(err)
	}
	call := func(key string) int {
		t.Helper()
		rows, err := conn.Query(ctx, `SELECT id FROM effects_insert_once('sync_customer', $1, '{"id": 42}')`, key)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[[16]byte])
		if err != nil {
			t.Fatal(err)
		}
		return len(ids)
	}
	if n := call("42"); n != 1 {
		t.Fatalf("first call returned %d rows, want the new one", n)
	}
	if n := call("42"); n != 0 {
		t.Errorf("second call returned %d rows, want none (the key is held)", n)
	}
	if _, err := conn.Exec(ctx, `UPDATE effects SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	if n := call("42"); n != 1 {
		t.Errorf("after the holder succeeded: %d rows, want 1", n)
	}
	var payload string
	if err := conn.QueryRow(ctx, `SELECT payload::text FROM effects WHERE status = 'pending'`).Scan(&payload); err != nil || payload != `{"id": 42}` {
		t.Errorf("payload %q, %v", payload, err)
	}
}
