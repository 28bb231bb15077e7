package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// SyncOptions tune a [Syncer].
type SyncOptions struct {
	// Streams: a bucket created again gets the streams' max age and
	// replicas.
	Streams effects.StreamOptions
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// Syncer keeps the bucket EFFECTS_CONTROL equal to PostgreSQL: it creates
// the bucket when it is missing, writes the paused kinds and the recent
// cancels PostgreSQL holds and the bucket lacks (or holds otherwise),
// removes paused kinds PostgreSQL no longer has, and writes the synced key
// last, which is what lets the dispatchers trust a bucket filled again. The
// completer runs [Syncer.Once] every few seconds; `completer migrate` and a
// control that finds the bucket gone run it once.
//
// It reads the bucket before PostgreSQL and writes each key only if it is
// still at the revision it read, so it never undoes a change a control made
// meanwhile (a control writes PostgreSQL, then the bucket): whatever it
// read in PostgreSQL is at least as new as what it read in the bucket.
// Several completers may run it at once.
type Syncer struct {
	db    DB
	js    jetstream.JetStream
	table schema.Table
	o     SyncOptions
	// last is the state of both sides when they were last found equal:
	// while neither changes, a pass reads no more than two small answers.
	last fingerprint
}

type fingerprint struct {
	created           time.Time
	first, last, msgs uint64
	pauses, cancels   string
}

// NewSyncer returns a syncer of table's controls.
func NewSyncer(db DB, js jetstream.JetStream, table schema.Table, o SyncOptions) *Syncer {
	o.Streams = o.Streams.WithDefaults()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Syncer{db: db, js: js, table: table, o: o}
}

// SyncResult is what one pass found and did.
type SyncResult struct {
	// Compared: the bucket was read and compared with PostgreSQL (false:
	// neither had changed since they were last found equal).
	Compared bool
	// Created: the bucket was missing and was created again.
	Created bool
	// Written and Removed count the keys put and deleted to make the
	// bucket equal to PostgreSQL.
	Written, Removed int
}

// Repaired reports whether the pass changed the bucket.
func (r SyncResult) Repaired() bool { return r.Created || r.Written > 0 || r.Removed > 0 }

// Once makes the bucket equal to PostgreSQL (see [Syncer]).
func (s *Syncer) Once(ctx context.Context) (SyncResult, error) {
	var res SyncResult
	kv, err := s.js.KeyValue(ctx, controlkv.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = s.js.CreateKeyValue(ctx, controlkv.Config(s.o.Streams))
		if errors.Is(err, jetstream.ErrBucketExists) { // another completer, just now
			kv, err = s.js.KeyValue(ctx, controlkv.Bucket)
		} else if err == nil {
			res.Created = true
		}
	}
	if err != nil {
		return res, fmt.Errorf("control bucket %s: %w", controlkv.Bucket, err)
	}
	st, err := s.js.Stream(ctx, controlkv.Stream)
	if err != nil {
		return res, fmt.Errorf("control bucket %s: %w", controlkv.Bucket, err)
	}
	info := st.CachedInfo()
	ttl := info.Config.MaxAge
	window := ttl - min(time.Minute, ttl/10) // cancels older than this expire in the bucket
	fp := fingerprint{created: info.Created, first: info.State.FirstSeq, last: info.State.LastSeq, msgs: info.State.Msgs}
	if err := s.db.QueryRow(ctx, `SELECT
	        (SELECT coalesce(string_agg(kind || ' ' || paused_at::text || ' ' || coalesce(paused_by, ''), ',' ORDER BY kind), '')
	           FROM `+s.table.PausedTable().Quoted()+` WHERE paused),
	        (SELECT count(*) || ' ' || coalesce(max(cancelled_at)::text, '')
	           FROM `+s.table.Quoted()+` WHERE status = 'cancelled' AND ($1::interval IS NULL OR cancelled_at > now() - $1::interval))`,
		windowArg(window)).Scan(&fp.pauses, &fp.cancels); err != nil {
		return res, s.dbError(err)
	}
	if fp == s.last && !res.Created {
		return res, nil
	}
	res.Compared = true

	// The bucket first, then PostgreSQL: see Syncer.
	entries, err := readAll(ctx, kv)
	if err != nil {
		return res, fmt.Errorf("read control bucket %s: %w", controlkv.Bucket, err)
	}
	pauses, cancels, err := s.truth(ctx, window)
	if err != nil {
		return res, s.dbError(err)
	}

	refresh := func(e jetstream.KeyValueEntry) bool {
		// Keys that must outlive the bucket's max age are written again
		// at half of it.
		return ttl > 0 && time.Since(e.Created()) > ttl/2
	}
	put := func(key string, value []byte, e jetstream.KeyValueEntry, isNew bool) error {
		var err error
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			_, err = kv.Create(ctx, key, value)
		} else {
			_, err = kv.Update(ctx, key, value, e.Revision())
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return nil // changed meanwhile: the next pass looks again
		}
		if err == nil {
			res.Written++
			if isNew {
				s.o.Logger.Warn("control bucket lacked a control PostgreSQL holds; written again", "key", key)
			}
		}
		return err
	}
	for kind, m := range pauses {
		key := controlkv.PausedKey(kind)
		e := live(entries[key])
		if e != nil && string(e.Value()) == string(m.Encode()) && !refresh(e) {
			continue
		}
		if err := put(key, m.Encode(), entries[key], e == nil); err != nil {
			return res, fmt.Errorf("write %s: %w", key, err)
		}
	}
	for key, e := range entries {
		k := controlkv.ParseKey(key)
		if k.Type != controlkv.Paused || live(e) == nil {
			continue
		}
		if _, ok := pauses[k.Kind]; ok {
			continue
		}
		err := kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
		if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return res, fmt.Errorf("delete %s: %w", key, err)
		}
		if err == nil {
			res.Removed++
			s.o.Logger.Warn("control bucket paused a kind PostgreSQL does not; removed", "kind", k.Kind)
		}
	}
	for key, m := range cancels {
		if live(entries[key]) != nil {
			continue // a cancel never changes
		}
		if err := put(key, m.Encode(), entries[key], true); err != nil {
			return res, fmt.Errorf("write %s: %w", key, err)
		}
	}
	// Synced last: it tells the dispatchers everything before it is there.
	if e := live(entries[controlkv.SyncedKey]); e == nil || refresh(e) {
		if _, err := kv.Put(ctx, controlkv.SyncedKey, controlkv.Mark{By: "completer", At: time.Now()}.Encode()); err != nil {
			return res, fmt.Errorf("write %s: %w", controlkv.SyncedKey, err)
		}
		res.Written++
	}
	if res.Repaired() {
		s.o.Logger.Warn("control bucket made equal to PostgreSQL", "bucket", controlkv.Bucket,
			"created", res.Created, "written", res.Written, "removed", res.Removed)
		return res, nil // compare again next time: this pass changed the bucket
	}
	s.last = fp
	return res, nil
}

// truth reads the paused kinds and the cancels of the last window (all of
// them when window is not positive) from PostgreSQL, as bucket keys.
func (s *Syncer) truth(ctx context.Context, window time.Duration) (pauses map[string]controlkv.Mark, cancels map[string]controlkv.Mark, err error) {
	pauses, cancels = map[string]controlkv.Mark{}, map[string]controlkv.Mark{}
	var kind string
	var at time.Time
	var by *string
	rows, err := s.db.Query(ctx, `SELECT kind, paused_at, paused_by FROM `+s.table.PausedTable().Quoted()+` WHERE paused AND paused_at IS NOT NULL`)
	if err != nil {
		return nil, nil, err
	}
	if _, err := pgx.ForEachRow(rows, []any{&kind, &at, &by}, func() error {
		if effects.ValidateKind(kind) == nil {
			pauses[kind] = controlkv.Mark{By: deref(by), At: at}
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	var id string
	rows, err = s.db.Query(ctx, `SELECT kind, id::text, cancelled_at, cancelled_by FROM `+s.table.Quoted()+`
	      WHERE status = 'cancelled' AND cancelled_at IS NOT NULL AND ($1::interval IS NULL OR cancelled_at > now() - $1::interval)`, windowArg(window))
	if err != nil {
		return nil, nil, err
	}
	if _, err := pgx.ForEachRow(rows, []any{&kind, &id, &at, &by}, func() error {
		if effects.ValidateKind(kind) == nil {
			cancels[controlkv.CancelledKey(kind, id)] = controlkv.Mark{By: deref(by), At: at}
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	return pauses, cancels, nil
}

func (s *Syncer) dbError(err error) error {
	if isUndefined(err) {
		return fmt.Errorf("read the controls of %s: %w (is the table migrated to this version? run `completer migrate`)", s.table, err)
	}
	return fmt.Errorf("read the controls of %s: %w", s.table, err)
}

func windowArg(window time.Duration) *time.Duration {
	if window <= 0 {
		return nil
	}
	return &window
}

// readAll returns the bucket's entries by key, delete markers included.
func readAll(ctx context.Context, kv jetstream.KeyValue) (map[string]jetstream.KeyValueEntry, error) {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string]jetstream.KeyValueEntry{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watcher stopped")
			}
			if e == nil {
				return out, nil // the end of what the bucket holds
			}
			out[e.Key()] = e
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// live is e unless it is missing or a delete marker.
func live(e jetstream.KeyValueEntry) jetstream.KeyValueEntry {
	if e == nil || e.Operation() != jetstream.KeyValuePut {
		return nil
	}
	return e
}

// DefaultSyncInterval is how often the completer runs a [Syncer].
const DefaultSyncInterval = 5 * time.Second

// Sync results (effects_control_syncs_total's result label).
const (
	syncUnchanged = "unchanged"
	syncRepaired  = "repaired"
	syncError     = "error"
)

// Run runs [Syncer.Once] at once and then every interval until ctx ends,
// counting the passes in effects_control_syncs_total{result} on reg and
// logging failures (at most every 30s while they last).
func (s *Syncer) Run(ctx context.Context, interval time.Duration, reg prometheus.Registerer) error {
	passes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "effects_control_syncs_total",
		Help: "Passes that compared the operator controls' bucket (EFFECTS_CONTROL) with PostgreSQL, by result: unchanged, repaired (the bucket was created again or keys written or removed), error.",
	}, []string{"result"})
	if err := reg.Register(passes); err != nil {
		return err
	}
	for _, r := range []string{syncUnchanged, syncRepaired, syncError} {
		passes.WithLabelValues(r)
	}
	var lastLog time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// A request lost in a NATS restart must not hold the next pass up.
		pctx, cancel := context.WithTimeout(ctx, max(interval, 15*time.Second))
		res, err := s.Once(pctx)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			passes.WithLabelValues(syncError).Inc()
			if time.Since(lastLog) >= 30*time.Second {
				lastLog = time.Now()
				s.o.Logger.Warn("cannot bring the operator controls' bucket up to date with PostgreSQL; trying again", "bucket", controlkv.Bucket, "error", err, "retry_in", interval.String())
			}
		case res.Repaired():
			passes.WithLabelValues(syncRepaired).Inc()
		default:
			passes.WithLabelValues(syncUnchanged).Inc()
		}
		t.Reset(interval)
	}
}
