// Package testenv starts the real components integration tests need: an
// in-process NATS server with JetStream (so a test can restart or kill it)
// and a private schema in the PostgreSQL named by EFFECTS_TEST_DATABASE_URL
// (default postgres://postgres@127.0.0.1:5432/test).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultDatabaseURL is the PostgreSQL tests use unless
// EFFECTS_TEST_DATABASE_URL names another.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// NATS is an in-process NATS server with JetStream.
type NATS struct {
	Server *server.Server
	URL    string
	opts   *server.Options
}

// StartNATS starts a NATS server with JetStream on a free port, storing in a
// directory of the test's; it is shut down when the test ends.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	return StartNATSWith(t, nil)
}

// StartNATSWith is [StartNATS] with configure (if not nil) applied to the
// server's options first (e.g. JetStream limits).
func StartNATSWith(t testing.TB, configure func(*server.Options)) *NATS {
	t.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      FixedPort(t), // it may be restarted on it (Start)
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	if configure != nil {
		configure(opts)
	}
	n := &NATS{opts: opts}
	n.start(t)
	t.Cleanup(n.Shutdown)
	return n
}

func (n *NATS) start(t testing.TB) {
	t.Helper()
	s, err := server.NewServer(n.opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10s")
	}
	n.Server = s
	n.URL = s.ClientURL()
	// Restart on the same port, so clients reconnect.
	n.opts.Port = s.Addr().(*net.TCPAddr).Port
}

// Shutdown stops the server (clients see a disconnect).
func (n *NATS) Shutdown() {
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
}

// Start starts the server again after Shutdown, on the same port with the
// same store.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	n.start(t)
}

// Restart starts the server again on the same port with the same store.
func (n *NATS) Restart(t testing.TB) {
	t.Helper()
	n.Shutdown()
	n.start(t)
}

// Connect returns a client connection and JetStream context, closed when the
// test ends.
func (n *NATS) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connect(t, n.URL)
}

// connect connects to url (one server or a comma-separated list), retrying
// without end, and closes the connection when the test ends.
func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// Postgres is a private schema in the test database.
type Postgres struct {
	// URL connects with search_path set to Schema.
	URL    string
	Schema string
	Pool   *pgxpool.Pool
}

// StartPostgres creates a schema of the test's own in the test database and
// returns a pool whose search_path is that schema. The schema is dropped when
// the test ends.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	base := os.Getenv("EFFECTS_TEST_DATABASE_URL")
	if base == "" {
		base = DefaultDatabaseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])

	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to the test database (set EFFECTS_TEST_DATABASE_URL, or run the tests with `make test`, "+
			"which starts a private PostgreSQL when none answers): %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse database url: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	pg := &Postgres{URL: u.String(), Schema: schema}
	pool, err := pgxpool.New(ctx, pg.URL)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	pg.Pool = pool
	return pg
}
