package ingest

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/retry"
)

// listen holds a connection of its own LISTENing on the table's channel and
// wakes the owner's loop on each notification, until ctx ends. When the
// connection breaks it reconnects with backoff and wakes the workers once
// more, for rows inserted meanwhile. Correctness never depends on it: the
// workers poll.
func (s *TableSource) listen(ctx context.Context) {
	for ctx.Err() == nil {
		var conn *pgx.Conn
		retry.Until(ctx, retry.Policy{Min: ensureBackoffMin, Max: s.cfg.RetryMax}, func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
			defer cancel()
			c, err := pgx.ConnectConfig(cctx, s.pool.Config().ConnConfig.Copy())
			if err != nil {
				return err
			}
			if _, err := c.Exec(cctx, "LISTEN "+s.table.NotifyChannel()); err != nil {
				_ = c.Close(context.Background())
				return err
			}
			conn = c
			return nil
		}, func(err error, n int, wait time.Duration) {
			// Without notifications, let the workers look at the
			// listener's pace (they ignore it while backing off): they
			// find rows sooner than the poll and see an outage at once.
			s.wakeAll()
			if n == 1 || n%10 == 0 {
				s.logger.Debug("table source: LISTEN failed; polling meanwhile", "attempt", n, "retry_in", wait.String(), "error", err)
			}
		})
		if conn == nil {
			return
		}
		s.wakeAll()
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				// A broken connection usually means PostgreSQL went away:
				// let the workers find out now, not at the next poll.
				s.wakeAll()
				break
			}
			s.wakeAll()
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}
}

func (s *TableSource) wakeAll() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
