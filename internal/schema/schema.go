// Package schema creates and upgrades the effects table.
//
// The migrations are SQL templates embedded in the binary and applied with
// tern. The table's name is template data, so one set of migrations serves
// any EFFECTS_TABLE, schema-qualified or not. The version tern keeps lives in
// "<table>_schema_version", next to the table, so two effects tables in one
// database (two schemas, or two names) are migrated independently.
package schema

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// DefaultTable is the table used when EFFECTS_TABLE is unset.
const DefaultTable = "effects"

// versionSuffix names the version table: "<table>_schema_version".
const versionSuffix = "_schema_version"

// Name limits. PostgreSQL silently truncates identifiers to 63 bytes; a
// truncated version table or index name could collide with another table's,
// so names whose derived names would not fit are refused instead.
const (
	maxIdentLen = 63
	// MaxTableNameLen leaves room for the longest suffix, "_schema_version".
	MaxTableNameLen = maxIdentLen - len(versionSuffix)
)

// Table is a parsed table name: an optional schema and a name. Each part is
// taken literally (case-sensitive) and always quoted in SQL.
type Table struct {
	// Schema is empty when the name is not schema-qualified; the table is
	// then found through the connection's search_path.
	Schema string
	Name   string
}

// ParseTable parses "name" or "schema.name". Each part must be 1 to 63 bytes
// of ASCII letters, digits and '_', not starting with a digit (the table name
// at most 48, so that "<name>_schema_version" fits). Anything else is refused
// rather than quoted, so that a typo in EFFECTS_TABLE fails loudly instead of
// creating a strangely named table.
func ParseTable(s string) (Table, error) {
	if s == "" {
		return Table{}, errors.New("table name is empty")
	}
	parts := strings.Split(s, ".")
	var t Table
	switch len(parts) {
	case 1:
		t.Name = parts[0]
	case 2:
		t.Schema, t.Name = parts[0], parts[1]
		if err := checkIdent("schema", t.Schema, maxIdentLen); err != nil {
			return Table{}, fmt.Errorf("table name %q: %w", s, err)
		}
	default:
		return Table{}, fmt.Errorf("table name %q: want name or schema.name", s)
	}
	if err := checkIdent("table", t.Name, MaxTableNameLen); err != nil {
		return Table{}, fmt.Errorf("table name %q: %w", s, err)
	}
	return t, nil
}

func checkIdent(what, s string, maxLen int) error {
	if s == "" {
		return fmt.Errorf("%s part is empty", what)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%s part is %d bytes long, the limit is %d", what, len(s), maxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_'
		digit := '0' <= c && c <= '9'
		if !letter && !(digit && i > 0) {
			return fmt.Errorf("%s part %q may only contain letters, digits and '_', and may not start with a digit", what, s)
		}
	}
	return nil
}

// String is the name as written in EFFECTS_TABLE.
func (t Table) String() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

// Ident is the name as a pgx identifier.
func (t Table) Ident() pgx.Identifier {
	if t.Schema == "" {
		return pgx.Identifier{t.Name}
	}
	return pgx.Identifier{t.Schema, t.Name}
}

// Quoted is the name quoted for SQL: "schema"."name".
func (t Table) Quoted() string { return t.Ident().Sanitize() }

// VersionTable is the table tern records the schema version in, in the same
// schema as t.
func (t Table) VersionTable() Table {
	return Table{Schema: t.Schema, Name: t.Name + versionSuffix}
}

// sibling is the unqualified, quoted name of an object that belongs to the
// table (index, constraint). PostgreSQL puts indexes in the table's schema.
func (t Table) sibling(suffix string) string { return pgx.Identifier{t.Name + suffix}.Sanitize() }

// templateData is what the migration templates see.
func (t Table) templateData() map[string]any {
	return map[string]any{
		"Table":           t.Quoted(),
		"StatusCheck":     t.sibling("_status_check"),
		"StatusCheckName": t.Name + "_status_check",
		"PendingIndex":    t.sibling("_pending_idx"),
		"FailedIndex":     t.sibling("_failed_idx"),
		"SucceededIndex":  t.sibling("_succeeded_idx"),
		// The table source (003).
		"UnpublishedIndex": t.sibling("_unpub_idx"),
		"NotifyTrigger":    t.sibling("_notify"),
		"NotifyFunction":   t.qualified("_notify"),
		"NotifyChannel":    t.NotifyChannel(),
		// One pending effect per key (005).
		"KeyIndex":           t.sibling("_key_idx"),
		"KeyLengthCheck":     t.sibling("_key_length"),
		"KeyLengthCheckName": t.Name + "_key_length",
		// The table source's cursor (006).
		"UnpublishedIndexQualified": t.qualified("_unpub_idx"),
		"TxidIndex":                 t.sibling("_txid_idx"),
		"CursorTable":               t.CursorTable().Quoted(),
		"CursorCheck":               t.sibling("_cursor_check"),
		// Operator controls (007).
		"CancelledIndex":   t.sibling("_cancelled_idx"),
		"CancelledAtIndex": t.sibling("_cancel_at_idx"),
		"PausedTable":      t.PausedTable().Quoted(),
		// Scheduled effects (008).
		"WaitingIndex":       t.sibling("_waiting_idx"),
		"DueIndex":           t.sibling("_due_idx"),
		"TxidIndexQualified": t.qualified("_txid_idx"),
	}
}

// CursorTable is the table that keeps the table source's cursor
// ("<table>_cursor"), in the same schema as t.
func (t Table) CursorTable() Table {
	return Table{Schema: t.Schema, Name: t.Name + "_cursor"}
}

// PausedTable is the table of paused kinds, "<name>_paused", in the same
// schema as t (migration 007).
func (t Table) PausedTable() Table { return Table{Schema: t.Schema, Name: t.Name + "_paused"} }

// qualified is the quoted name of a function that belongs to the table, in
// the table's schema (functions, unlike indexes, do not follow the table).
func (t Table) qualified(suffix string) string {
	if t.Schema == "" {
		return pgx.Identifier{t.Name + suffix}.Sanitize()
	}
	return pgx.Identifier{t.Schema, t.Name + suffix}.Sanitize()
}

// NotifyChannel is the LISTEN channel the table's insert trigger notifies:
// "<name>_inserted". Letters, digits and '_' only (ParseTable), so it needs
// no quoting in SQL. Tables of the same name in two schemas share it, which
// costs a spurious wake-up, never a missed row: the table source also polls.
func (t Table) NotifyChannel() string { return t.Name + "_inserted" }

func migrationsFS() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	return sub
}

// LatestVersion is the schema version this binary's migrations lead to.
func LatestVersion() int32 {
	paths, err := migrate.FindMigrations(migrationsFS())
	if err != nil {
		panic(err) // the embedded migrations are checked by the tests
	}
	return int32(len(paths))
}

// Migrate creates or upgrades table (see [ParseTable]) to [LatestVersion].
// It is safe to run again (a table at the latest version is left alone) and
// from several processes at once (tern holds a PostgreSQL advisory lock while
// it migrates). A table that already exists without a version table is
// upgraded in place: missing columns, the status check and the indexes are
// added; existing columns and rows are kept. A missing schema is created.
func Migrate(ctx context.Context, conn *pgx.Conn, table string) error {
	return MigrateTo(ctx, conn, table, LatestVersion())
}

// MigrateTo is [Migrate] up to version (at most [LatestVersion]): tests use
// it to make a table as an older release left it.
func MigrateTo(ctx context.Context, conn *pgx.Conn, table string, version int32) error {
	t, err := ParseTable(table)
	if err != nil {
		return err
	}
	if t.Schema != "" {
		if err := ensureSchema(ctx, conn, t.Schema); err != nil {
			return err
		}
	}
	m, err := migrate.NewMigrator(ctx, conn, t.VersionTable().Quoted())
	if err != nil {
		return fmt.Errorf("migrate %s: version table %s: %w", t, t.VersionTable(), err)
	}
	// Data must be set before LoadMigrations, which evaluates the templates.
	m.Data = t.templateData()
	if err := m.LoadMigrations(migrationsFS()); err != nil {
		return fmt.Errorf("migrate %s: load migrations: %w", t, err)
	}
	if err := m.MigrateTo(ctx, version); err != nil {
		return fmt.Errorf("migrate %s: %w", t, err)
	}
	return nil
}

// schemaLockKey is the advisory lock held while creating a schema: CREATE
// SCHEMA IF NOT EXISTS is not safe against a concurrent CREATE SCHEMA.
const schemaLockKey = int64(0x6566666563747301) // "effects" + 1

func ensureSchema(ctx context.Context, conn *pgx.Conn, schema string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLockKey); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	// Look before creating: CREATE SCHEMA IF NOT EXISTS needs the CREATE
	// privilege on the database even when the schema exists, which a role
	// that only owns its schema may lack.
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("create schema %s: %w", schema, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	return nil
}

// ErrNotMigrated is returned (wrapped) by [Check] when the table is missing or
// older than [LatestVersion].
var ErrNotMigrated = errors.New("run `completer migrate`")

// Querier is what [Check] needs: *pgx.Conn, *pgxpool.Pool and pgx.Tx have it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Check reports whether table exists and is at [LatestVersion] or newer (a
// newer schema comes from a newer binary's migrations, which only add). The
// error wraps [ErrNotMigrated] when `completer migrate` would fix it; any
// other error means the database could not be asked.
func Check(ctx context.Context, q Querier, table string) error {
	t, err := ParseTable(table)
	if err != nil {
		return err
	}
	vt := t.VersionTable()
	var tableExists, versionExists bool
	err = q.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		t.Quoted(), vt.Quoted()).Scan(&tableExists, &versionExists)
	if err != nil {
		return fmt.Errorf("look up table %s: %w", t, err)
	}
	switch {
	case !tableExists:
		return fmt.Errorf("table %s does not exist: %w", t, ErrNotMigrated)
	case !versionExists:
		return fmt.Errorf("table %s has no version table %s (made by hand?): %w", t, vt, ErrNotMigrated)
	}
	var version int32
	err = q.QueryRow(ctx, "SELECT version FROM "+vt.Quoted()).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("version table %s is empty: %w", vt, ErrNotMigrated)
	}
	if err != nil {
		return fmt.Errorf("read schema version of %s: %w", t, err)
	}
	if latest := LatestVersion(); version < latest {
		return fmt.Errorf("table %s is at schema version %d, this binary needs %d: %w", t, version, latest, ErrNotMigrated)
	}
	return nil
}
