package completer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/redact"
	"github.com/effects-run/effects/internal/schema"
)

// OpenPool returns a pool on cfg.DatabaseURL with a connection for every
// writer plus one for checks, one for retention batches and one the
// reconciler holds through a pass. It does not
// connect yet (the completer waits for PostgreSQL by itself); it fails only
// on a URL it cannot parse. Its errors never contain the URL or the
// password.
func OpenPool(cfg Config) (*pgxpool.Pool, error) {
	cfg = cfg.WithDefaults()
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("DATABASE_URL: %w", err), cfg.DatabaseURL)
	}
	if need := int32(cfg.Writers + 3); pc.MaxConns < need {
		pc.MaxConns = need
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("DATABASE_URL: %w", err), cfg.DatabaseURL, pc.ConnConfig.Password)
	}
	return pool, nil
}

// Migrate connects to cfg.DatabaseURL and creates or upgrades cfg.Table (see
// [schema.Migrate]): what `completer migrate` does. Its errors never contain
// the URL or the password.
func Migrate(ctx context.Context, cfg Config) error {
	conn, err := Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if err := schema.Migrate(ctx, conn, cfg.Table); err != nil {
		return redact.Error(err, cfg.DatabaseURL, conn.Config().Password)
	}
	return nil
}

// Connect opens one connection to cfg.DatabaseURL, waiting at most 30s. Its
// errors never contain the URL or the password.
func Connect(ctx context.Context, cfg Config) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("DATABASE_URL: %w", err), cfg.DatabaseURL)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("connect to PostgreSQL: %w", err), cfg.DatabaseURL, cc.Password)
	}
	return conn, nil
}
