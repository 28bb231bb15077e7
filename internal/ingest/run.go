package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/pkg/effects"
)

// idleTimeout closes a kept-alive connection nobody uses. Hasura reuses
// connections, so it only cuts off clients that went away; the read limits
// are Config.ReadHeaderTimeout, Config.ReadTimeout and MaxHeaderBytes.
const idleTimeout = 2 * time.Minute

// Stream setup retries: quick at first, for a NATS starting alongside, then
// every few seconds, with jitter so that replicas do not retry in step.
const (
	ensureAttemptTimeout = 5 * time.Second
	ensureBackoffMin     = 100 * time.Millisecond
	ensureBackoffMax     = 5 * time.Second
)

// Run listens on cfg.HTTPAddr and serves until ctx is cancelled; see
// [Server.Serve].
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("ingest: listen on %s (EFFECTS_HTTP_ADDR): %w", s.cfg.HTTPAddr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves the webhook on ln until ctx is cancelled, then stops
// accepting, lets requests in flight get their acks and replies (for up to
// cfg.ShutdownTimeout) and returns nil. It closes ln.
//
// Meanwhile it makes sure the streams exist, retrying while NATS is not
// reachable. It serves before they do: until then a publish fails and Hasura
// is told 503 with Retry-After, which it honours, where a refused connection
// would use up its retries.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		// No WriteTimeout: a request's time is bounded by
		// EFFECTS_PUBLISH_TIMEOUT, and a write deadline would cut off a
		// reply that JetStream's ack has already earned.
	}

	ensureCtx, stopEnsure := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.ensureStreams(ensureCtx) })
	defer func() {
		stopEnsure()
		wg.Wait()
	}()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	s.logger.Info("ingest listening", "addr", ln.Addr().String(), "path", EventsPath, "config", s.cfg)

	select {
	case err := <-served:
		return fmt.Errorf("ingest: serve: %w", err)
	case <-ctx.Done():
	}
	// The requests' own contexts are not ctx's children, so cancelling ctx
	// does not cut their publishes short; Shutdown waits for them.
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if p, ok := s.pub.(*natsPublisher); ok {
		// Once every request is answered: the subscription to the
		// PubAcks ends; a later Serve subscribes again.
		defer p.p.Close()
	}
	err := srv.Shutdown(sctx)
	<-served
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("ingest: requests still in flight after %s (EFFECTS_SHUTDOWN_TIMEOUT): %w", s.cfg.ShutdownTimeout, err)
	}
	return nil
}

// Ready is a readiness check: nil once the streams were ensured by
// [Server.Serve].
func (s *Server) Ready(context.Context) error {
	select {
	case <-s.streamsReady:
		return nil
	default:
	}
	if p := s.streamsErr.Load(); p != nil {
		return fmt.Errorf("streams not ready: %w", *p)
	}
	return errors.New("streams not ready yet")
}

// StreamsReady is closed once [Server.Serve] has ensured the streams.
func (s *Server) StreamsReady() <-chan struct{} { return s.streamsReady }

// ensureStreams creates the streams that are missing, retrying with backoff
// until it succeeds or ctx ends (services may start in any order, NATS among
// them), then watches for kinds no consumer takes until ctx ends.
func (s *Server) ensureStreams(ctx context.Context) {
	attempts, ok := retry.Until(ctx, retry.Policy{Min: ensureBackoffMin, Max: ensureBackoffMax}, s.ensureStreamsOnce,
		func(err error, n int, wait time.Duration) {
			s.streamsErr.Store(&err)
			s.logger.Warn("ensuring the streams failed; retrying", "attempt", n, "retry_in", wait.String(), "error", err)
		})
	if !ok {
		return
	}
	s.streamsReadyOnce.Do(func() { close(s.streamsReady) })
	s.logger.Info("streams ready", "attempts", attempts)
	s.checkMaxPayload()
	s.warnStreamDrift(ctx)
	s.watchConsumers(ctx)
}

// warnStreamDrift says when the existing streams differ from this service's
// EFFECTS_STREAM_* settings, which it never applies itself.
func (s *Server) warnStreamDrift(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	if drift, err := effects.StreamDrift(ctx, s.js, s.cfg.Streams); err == nil && len(drift) > 0 {
		s.logger.Warn("the streams differ from this service's EFFECTS_STREAM_MAX_AGE, EFFECTS_DUPLICATE_WINDOW or "+
			"EFFECTS_STREAM_REPLICAS; services never change a stream: run `completer migrate streams` to apply them",
			"differences", drift)
	}
}

// errNotConnected stands in for a stream request while the connection is
// down: such a request would sit in the reconnect buffer and its reply could
// be lost across the reconnect, holding up the start for the attempt timeout.
var errNotConnected = errors.New("not connected to NATS")

func (s *Server) ensureStreamsOnce(ctx context.Context) error {
	if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
		return errNotConnected
	}
	ctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	return effects.EnsureStreams(ctx, s.js, s.cfg.Streams)
}

// checkMaxPayload warns when the NATS server would refuse an effect message
// that EFFECTS_MAX_PAYLOAD_BYTES allows: such rows would be failed rather
// than delivered.
func (s *Server) checkMaxPayload() {
	nc := s.js.Conn()
	if nc == nil {
		return
	}
	if mp := nc.MaxPayload(); mp > 0 && mp < int64(s.cfg.MaxPayloadBytes)+BodyOverhead {
		s.logger.Warn("the NATS server's max_payload is below EFFECTS_MAX_PAYLOAD_BYTES plus room for the message; "+
			"lower EFFECTS_MAX_PAYLOAD_BYTES or raise max_payload",
			"max_payload", mp, "max_payload_bytes", s.cfg.MaxPayloadBytes)
	}
}
