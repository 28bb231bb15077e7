package effects

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/semver"

	"github.com/effects-run/effects/internal/consume"
)

// BatchPublishServerVersion is the first nats-server version with fast batch
// publishing (the stream setting AllowBatchPublish, "allow_batched").
const BatchPublishServerVersion = "2.14.0"

// ServerHasBatchPublish reports whether a nats-server of version (as it
// reports it in INFO, e.g. "2.14.0" or "2.14.0-RC.1") has fast batch
// publishing. A version that cannot be read has not.
func ServerHasBatchPublish(version string) bool {
	v := "v" + strings.TrimPrefix(strings.TrimSpace(version), "v")
	return semver.IsValid(v) && semver.Compare(semver.Canonical(v), "v"+BatchPublishServerVersion) >= 0
}

// batchPublish says whether the server js is connected to has fast batch
// publishing: the streams get AllowBatchPublish only then, since an older
// server does not know the setting.
func batchPublish(js jetstream.JetStream) bool {
	nc := js.Conn()
	return nc != nil && ServerHasBatchPublish(nc.ConnectedServerVersion())
}

// withBatchPublish returns the stream configurations for the server js is
// connected to: the effects stream allows fast batches (the table source
// publishes its batches so) where the server has them.
func withBatchPublish(js jetstream.JetStream, cfgs []jetstream.StreamConfig) []jetstream.StreamConfig {
	if batchPublish(js) {
		for i := range cfgs {
			if cfgs[i].Name == EffectsStream {
				cfgs[i].AllowBatchPublish = true
			}
		}
	}
	return cfgs
}

// StreamOptions are the settings of the two streams that services may change.
type StreamOptions struct {
	// MaxAge is how long a message is kept, acked or not. Default 168h: it
	// must outlast the longest outage of a dispatcher or an extra consumer,
	// since Limits retention removes old messages whether or not they were
	// consumed.
	MaxAge time.Duration
	// Duplicates is the window in which a repeated Nats-Msg-Id is dropped.
	// Default 2m; set it above Hasura's num_retries * (interval_sec +
	// timeout_sec). Never more than MaxAge.
	Duplicates time.Duration
	// Replicas is the stream replication factor. Default 1.
	Replicas int
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (o StreamOptions) WithDefaults() StreamOptions {
	if o.MaxAge == 0 {
		o.MaxAge = 168 * time.Hour
	}
	if o.Duplicates == 0 {
		o.Duplicates = 2 * time.Minute
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	return o
}

// Validate names the field that is wrong.
func (o StreamOptions) Validate() error {
	switch {
	case o.MaxAge < 0:
		return errors.New("stream max age must not be negative")
	case o.Duplicates < 0:
		return errors.New("duplicate window must not be negative")
	case o.MaxAge > 0 && o.Duplicates > o.MaxAge:
		return fmt.Errorf("duplicate window %s is longer than the stream max age %s", o.Duplicates, o.MaxAge)
	case o.Replicas < 1 || o.Replicas > 5:
		return fmt.Errorf("stream replicas %d is not between 1 and 5", o.Replicas)
	}
	return nil
}

// StreamConfigs returns the configuration of the effects and completions
// streams: Limits retention (so any number of extra durable consumers can
// read them), file storage.
func StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	o = o.WithDefaults()
	base := func(name, subject, desc string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    []string{subject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.MaxAge,
			Duplicates:  o.Duplicates,
			Replicas:    o.Replicas,
			Discard:     jetstream.DiscardOld,
		}
	}
	return []jetstream.StreamConfig{
		base(EffectsStream, EffectsSubjects, "effects to handle, one subject per kind"),
		base(CompletedStream, CompletedSubjects, "outcomes of effects, one subject per kind"),
	}
}

// EnsureStreams creates whichever of the two streams does not exist, with the
// settings o, and leaves a stream that exists exactly as it is. Every service
// calls it at start, so they may start in any order; none of them changes a
// stream's configuration, so a service started with a stray setting cannot
// change retention for everyone. [ApplyStreams] is the one step that does.
// With the streams it creates the consumers' position bucket
// (internal/consume's PositionBucket), so that on a new deployment it exists
// before the first message.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	return ensureStreams(ctx, js, o, false)
}

func ensureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions, update bool) error {
	created := false
	for _, want := range withBatchPublish(js, StreamConfigs(o)) {
		c, err := ensureStream(ctx, js, want, update)
		if err != nil {
			return err
		}
		created = created || c
	}
	switch {
	case created:
		return consume.CreatePositionBucket(ctx, js, o.Replicas)
	case update:
		return consume.SetPositionBucketReplicas(ctx, js, o.Replicas)
	}
	return nil
}

// ApplyStreams creates the two streams, or brings the settings this project
// owns (subjects, max age, duplicate window, replicas; on nats-server 2.14+
// fast batch publishing allowed on the effects stream) to o on streams that
// exist, keeping any other setting an operator made. It is the explicit
// step that changes the streams (`completer migrate` runs it); services only
// call [EnsureStreams]. The consumers' position bucket gets the streams'
// replicas too (created with the streams, or by the first reader that
// needs it).
func ApplyStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	return ensureStreams(ctx, js, o, true)
}

// ensureStream creates the stream (created true) or checks it, updating it
// with update.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, update bool) (created bool, err error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another service created it at the same moment.
			return ensureStream(ctx, js, want, update)
		}
		if err != nil {
			return false, fmt.Errorf("create stream %s: %w", want.Name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if !update {
		// Not changed, but checked: the pipeline cannot work on a stream
		// that does not capture its subjects or keeps messages for one
		// consumer only.
		if have.Retention != want.Retention {
			return false, fmt.Errorf("stream %s has %s retention, want %s: JetStream cannot change it; delete or rename the stream",
				want.Name, have.Retention, want.Retention)
		}
		if !slices.Contains(have.Subjects, want.Subjects[0]) {
			return false, fmt.Errorf("stream %s captures %v, not %s: run `completer migrate streams` to set its subjects",
				want.Name, have.Subjects, want.Subjects[0])
		}
		return false, nil
	}
	if slices.Equal(have.Subjects, want.Subjects) && have.Retention == want.Retention &&
		have.MaxAge == want.MaxAge && have.Duplicates == want.Duplicates && have.Replicas == want.Replicas &&
		(have.AllowBatchPublish || !want.AllowBatchPublish) {
		return false, nil
	}
	updated := have
	updated.Subjects = want.Subjects
	updated.MaxAge = want.MaxAge
	updated.Duplicates = want.Duplicates
	updated.Replicas = want.Replicas
	// Allowed, never disallowed: an operator may have allowed it on a
	// stream this project does not publish batches to.
	updated.AllowBatchPublish = have.AllowBatchPublish || want.AllowBatchPublish
	if have.Retention != want.Retention {
		return false, fmt.Errorf("stream %s has %s retention, want %s: JetStream cannot change it; delete or rename the stream",
			want.Name, have.Retention, want.Retention)
	}
	if _, err := js.UpdateStream(ctx, updated); err != nil {
		return false, fmt.Errorf("update stream %s: %w", want.Name, err)
	}
	return false, nil
}

// StreamDrift lists, one line per setting, where the existing streams differ
// from o in the settings [ApplyStreams] owns ("EFFECTS max age 1h0m0s, here
// 2h0m0s"): a service warns about them, since it never applies them itself.
// A stream that does not exist is not listed.
func StreamDrift(ctx context.Context, js jetstream.JetStream, o StreamOptions) ([]string, error) {
	var drift []string
	for _, want := range withBatchPublish(js, StreamConfigs(o)) {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up stream %s: %w", want.Name, err)
		}
		have := s.CachedInfo().Config
		if have.MaxAge != want.MaxAge {
			drift = append(drift, fmt.Sprintf("%s max age %s, here %s", want.Name, have.MaxAge, want.MaxAge))
		}
		if have.Duplicates != want.Duplicates {
			drift = append(drift, fmt.Sprintf("%s duplicate window %s, here %s", want.Name, have.Duplicates, want.Duplicates))
		}
		if have.Replicas != want.Replicas {
			drift = append(drift, fmt.Sprintf("%s replicas %d, here %d", want.Name, have.Replicas, want.Replicas))
		}
		if want.AllowBatchPublish && !have.AllowBatchPublish {
			drift = append(drift, fmt.Sprintf("%s fast batch publishing (allow_batched) off, here on", want.Name))
		}
	}
	return drift, nil
}
