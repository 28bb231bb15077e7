// Package ingest is the Hasura webhook: it receives the event-trigger POST
// for every new row of the effects table and puts the effect on the JetStream
// subject "effects.<kind>", answering Hasura only once JetStream has stored it.
//
// What a reply means to Hasura decides what Hasura does next, so the codes
// are chosen with care: 200 for an event published, a duplicate, an UPDATE or
// DELETE (ignored), or a row that can never succeed (its failed completion is
// published instead, so that the row shows why and Hasura does not retry
// it); 400, 401, 404, 405, 408, 413, 415 and 431 for requests that are not a
// usable event; 503
// with Retry-After while JetStream does not store, so Hasura retries later
// even after its own retries are spent.
//
// Requests hold their reply until their own ack, and one connection to NATS
// carries many requests in flight. While a batch of effects waits for its
// acks, the effects of the requests that come meanwhile are held and sent
// together once it is answered (publisher.go), so that the NATS server reads
// many messages and writes many acks in one go.
package ingest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/pkg/effects"
)

// EventsPath is where Hasura POSTs events.
const EventsPath = "/hasura/events"

// SecretHeader carries EFFECTS_WEBHOOK_SECRET; the event trigger sets it
// with value_from_env.
const SecretHeader = "X-Effects-Secret"

// TraceparentHeader is the header of a published effect that continues the
// trace Hasura started. It is spelled the way Go's OpenTelemetry propagators
// write it through an http.Header carrier, since NATS headers are
// case-sensitive.
const TraceparentHeader = "Traceparent"

// maxStoredKindLength bounds the kind copied into the failed completion of a
// row whose kind is not valid: the kind is the row's, any length, and the
// completion must fit in a NATS message. Cut longer, it is still invalid.
const maxStoredKindLength = 256

// Header values shared by every reply, set without allocating; net/http
// only reads them.
var (
	jsonContentType = []string{"application/json"}
	allowPost       = []string{http.MethodPost}
)

// emptyObject is the payload of a row without one: the column's default.
var emptyObject = []byte("{}")

// Server is the webhook. Create it with [New]; serve it with [Server.Run],
// [Server.Serve], or [Server.Handler] in a server of one's own.
type Server struct {
	cfg     Config
	js      jetstream.JetStream
	pub     effectPublisher // nil without a NATS connection (a stand-in JetStream)
	client  *effects.Client
	logger  *slog.Logger
	metrics *metrics
	now     func() time.Time

	// allowed is EFFECTS_KINDS as a set, nil when every valid kind is
	// accepted; allowedList is it as the reason of a rejected row says it.
	allowed     map[string]struct{}
	allowedList string

	checkSecret bool
	secretSum   [sha256.Size]byte
	retryAfter  []string

	// streamsReady is closed once the streams were ensured; streamsErr is
	// the last failure before that, for the readiness check.
	streamsReady     chan struct{}
	streamsReadyOnce sync.Once // Serve may be called more than once
	streamsErr       atomic.Pointer[error]

	// lastUnavailableLog keeps a JetStream outage from logging once per
	// request.
	lastUnavailableLog atomic.Int64
}

// New returns a webhook publishing through js. It fills cfg's defaults and
// validates it. Metrics are registered on reg; a nil reg keeps them
// unregistered (tests). A nil logger discards.
func New(cfg Config, js jetstream.JetStream, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if js == nil {
		return nil, errors.New("ingest: no JetStream context")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg, kindlabel.New(kindlabel.DefaultMax, cfg.Kinds...), true)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		if err := reg.Register(&consumerCollector{js: js, kinds: m.kinds}); err != nil {
			return nil, fmt.Errorf("ingest: register metrics: %w", err)
		}
	}
	s := &Server{
		cfg:          cfg,
		js:           js,
		client:       effects.NewClient(js),
		logger:       logger,
		metrics:      m,
		now:          time.Now,
		checkSecret:  cfg.WebhookSecret != "",
		retryAfter:   []string{cfg.retryAfterSeconds()},
		streamsReady: make(chan struct{}),
	}
	if nc := js.Conn(); nc != nil {
		s.pub = newNATSPublisher(nc)
	}
	if len(cfg.Kinds) > 0 {
		s.allowed = make(map[string]struct{}, len(cfg.Kinds))
		for _, k := range cfg.Kinds {
			s.allowed[k] = struct{}{}
		}
		s.allowedList = allowedList(cfg.Kinds)
	}
	if s.checkSecret {
		// Comparing digests keeps the comparison constant-time in the
		// secret's length as well as its bytes.
		s.secretSum = sha256.Sum256([]byte(cfg.WebhookSecret))
	} else {
		logger.Warn("EFFECTS_INSECURE_NO_SECRET is set and EFFECTS_WEBHOOK_SECRET is not: " +
			"anyone who can reach the webhook can submit effects")
	}
	return s, nil
}

// allowedList names the allowed kinds for a rejection's reason, at most ten
// of them.
func allowedList(kinds []string) string {
	const most = 10
	if len(kinds) <= most {
		return strings.Join(kinds, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(kinds[:most], ", "), len(kinds)-most)
}

// Handler serves [EventsPath]; any other path is 404.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// timedWriter remembers the status code a request was answered with, for
// effects_ingest_request_duration_seconds.
type timedWriter struct {
	http.ResponseWriter
	code int
}

func (t *timedWriter) WriteHeader(code int) {
	t.code = code
	t.ResponseWriter.WriteHeader(code)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	tw := &timedWriter{ResponseWriter: w, code: http.StatusOK}
	s.serve(tw, w, r)
	s.metrics.requestDone(tw.code, time.Since(start))
}

// serve answers r on w; raw is the server's own writer, which
// http.MaxBytesReader needs to close the connection of a body over the limit.
func (s *Server) serve(w, raw http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path != EventsPath:
		s.replyError(w, http.StatusNotFound, "not found: Hasura events are POSTed to "+EventsPath)
		return
	case r.Method != http.MethodPost:
		w.Header()["Allow"] = allowPost
		s.replyError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed: POST Hasura events to "+EventsPath)
		return
	case !s.authorized(r):
		s.replyError(w, http.StatusUnauthorized, "the "+SecretHeader+" header is missing or wrong")
		return
	case !jsonContent(r.Header["Content-Type"]):
		s.replyError(w, http.StatusUnsupportedMediaType, fmt.Sprintf(
			"Content-Type %s is not JSON: POST Hasura events as application/json", quoteShort(r.Header.Get("Content-Type"))))
		return
	case r.ContentLength > int64(s.cfg.MaxBodyBytes):
		s.replyTooLarge(w)
		return
	}

	bufp := bodyPool.Get().(*[]byte)
	body, err := readBody(http.MaxBytesReader(raw, r.Body, int64(s.cfg.MaxBodyBytes)), (*bufp)[:0], r.ContentLength)
	if err != nil {
		putBody(bufp, body)
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			s.replyTooLarge(w)
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The server's read deadline (ReadTimeout): a client that
			// stalls in its body.
			s.replyError(w, http.StatusRequestTimeout, fmt.Sprintf(
				"the body did not arrive within %s of the request's start", s.cfg.ReadTimeout))
			return
		}
		s.replyError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	var ev hasuraEvent
	err = decodeEvent(body, &ev)
	// Decoding copies what it keeps (strings, json.RawMessage), so the
	// buffer can serve the next request now.
	putBody(bufp, body)
	if err != nil {
		s.replyError(w, http.StatusBadRequest, err.Error())
		return
	}
	if ev.Event != nil && ev.Event.TraceContext.parent == "" {
		// No trace_context in the body: Hasura's request headers may
		// still carry its trace.
		ev.Event.TraceContext.parent = headerParent(r.Header)
	}
	s.handleEvent(w, &ev)
}

// jsonContent reports whether a request's Content-Type is JSON: Hasura
// always sends application/json. No Content-Type at all is taken for JSON
// too (a hand-made request); anything else (a form, text) is refused with
// 415 rather than decoded.
func jsonContent(values []string) bool {
	if len(values) == 0 {
		return true
	}
	mt, _, err := mime.ParseMediaType(values[0])
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}

func (s *Server) authorized(r *http.Request) bool {
	if !s.checkSecret {
		return true
	}
	got := r.Header[SecretHeader] // net/http canonicalises keys; SecretHeader is canonical
	if len(got) == 0 {
		return false
	}
	sum := sha256.Sum256([]byte(got[0]))
	return subtle.ConstantTimeCompare(sum[:], s.secretSum[:]) == 1
}

// handleEvent answers a decoded event: ignore, reject or publish.
func (s *Server) handleEvent(w http.ResponseWriter, ev *hasuraEvent) {
	if err := ev.checkEvent(); err != nil {
		s.replyError(w, http.StatusBadRequest, err.Error())
		return
	}
	switch ev.Event.Op {
	case opUpdate, opDelete:
		// The pipeline itself updates the row (status, completion); those
		// updates must not start the effect again.
		s.metrics.ingest(ev.ignoredKind(), outcomeIgnored)
		s.reply(w, http.StatusOK, appendIgnoredReply(make([]byte, 0, 40), ev.Event.Op))
		return
	}
	row, createdAt, err := ev.checkRow(s.now)
	badTime, _ := err.(*unusableCreatedAt)
	if badTime != nil {
		err = nil // failed below, once the kind is known to be valid
	}
	if err != nil {
		s.replyError(w, http.StatusBadRequest, err.Error())
		return
	}

	// A well-formed row that can never succeed is failed now, with the
	// reason in the row, instead of a 4xx that Hasura would only retry.
	kind := *row.Kind
	if err := effects.ValidateKind(kind); err != nil {
		detail := strings.TrimPrefix(err.Error(), effects.ErrInvalidKind.Error()+": ")
		s.reject(w, ev.ID, row.ID, kind, invalidKindLabel, fmt.Sprintf("kind %s is not valid: %s", quoteShort(kind), detail))
		return
	}
	if s.allowed != nil {
		if _, ok := s.allowed[kind]; !ok {
			s.reject(w, ev.ID, row.ID, kind, kind, fmt.Sprintf("kind %q is not handled here: EFFECTS_KINDS allows %s",
				kind, s.allowedList))
			return
		}
	}
	if badTime != nil {
		s.reject(w, ev.ID, row.ID, kind, kind, badTime.Error())
		return
	}
	if y := createdAt.Year(); y < 0 || y > 9999 {
		// JSON's times (RFC 3339) have four-digit years: a message with
		// this one could not be decoded by any consumer.
		s.reject(w, ev.ID, row.ID, kind, kind, "created_at "+createdAt.Format(time.RFC3339Nano)+
			" cannot be carried by an effect message (years 0 to 9999 only)")
		return
	}
	payload := []byte(row.Payload)
	if len(payload) == 0 || string(payload) == "null" {
		payload = emptyObject // a handler always gets JSON
	}
	if len(payload) > s.cfg.MaxPayloadBytes {
		s.reject(w, ev.ID, row.ID, kind, kind, fmt.Sprintf("payload is %d bytes, the limit is %d (EFFECTS_MAX_PAYLOAD_BYTES)",
			len(payload), s.cfg.MaxPayloadBytes))
		return
	}

	runAt, scheduled, err := row.runAt(createdAt)
	if err != nil {
		s.replyError(w, http.StatusBadRequest, err.Error())
		return
	}
	if scheduled && (ev.Event.Op == opInsert || runAt.IsZero() || runAt.After(s.now())) {
		// The completer's scheduler publishes the row when it is due. A
		// MANUAL re-run of a row still waiting keeps its time; one that
		// is due runs now, like any MANUAL re-run.
		s.metrics.ingest(kind, outcomeScheduled)
		s.reply(w, http.StatusOK, appendScheduledReply(make([]byte, 0, 160), row.ID, ev.ID, runAt))
		return
	}
	if !scheduled {
		runAt = time.Time{} // a run_at not after created_at means now: not carried
	}

	// While the connection is down a publish would wait in the reconnect
	// buffer until the timeout; Hasura learns sooner that it must retry.
	if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
		s.unavailable(w, publishErrorError, errNotConnected)
		return
	}

	sv := ev.Event.SessionVariables
	data := appendEffect(make([]byte, 0, effectSize(row.ID, kind, payload, sv)), row.ID, kind, payload, createdAt, sv, runAt)
	msg := &nats.Msg{
		Subject: effects.Subject(kind),
		Data:    data,
		// Redeliveries of one Hasura event share its id, so JetStream
		// stores the effect once; a MANUAL re-run has a new id and runs.
		Header: nats.Header{jetstream.MsgIDHeader: []string{ev.ID}},
	}
	span := startPublish(ev.Event.TraceContext.parent, msg, row.ID, kind)
	defer span.End()
	// A message over the server's max_payload can never be stored. Checked
	// here rather than left to the client: the client refuses it too, but
	// only after registering the async publish, whose timer then holds the
	// whole message until the async publish timeout (hundreds of such
	// requests held gigabytes).
	if size, limit := msgSize(msg), s.maxPayload(); limit > 0 && int64(size) > limit {
		s.reject(w, ev.ID, row.ID, kind, kind, fmt.Sprintf(
			"the effect message is %d bytes (payload %d, session_variables %d, the rest envelope and headers), "+
				"more than the NATS server accepts (max_payload %d)",
			size, len(payload), len(sv), limit))
		return
	}
	s.publish(w, ev.ID, row.ID, kind, msg)
}

// maxPayload is the largest message the connected server accepts, 0 when
// not known yet.
func (s *Server) maxPayload() int64 {
	if nc := s.js.Conn(); nc != nil {
		return nc.MaxPayload()
	}
	return 0
}

// msgSize is what the server counts against max_payload: the body and the
// headers as the client encodes them ("NATS/1.0\r\n", "Key: value\r\n" per
// value, a closing "\r\n").
func msgSize(m *nats.Msg) int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n") + len("\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(": ") + len(v) + len("\r\n")
			}
		}
	}
	return n
}

// publish sends msg without waiting on any other request and replies once
// JetStream acked it; a failed or late ack is a 503.
func (s *Server) publish(w http.ResponseWriter, eventID, effectID, kind string, msg *nats.Msg) {
	if s.pub == nil {
		s.unavailable(w, publishErrorError, errNotConnected)
		return
	}
	start := time.Now()
	// The wait does not follow the request's context: the outcome counted
	// and logged is what JetStream did, whether or not Hasura stayed to
	// hear it, and a stopping server lets it finish.
	ack, err := s.pub.publish(msg, s.cfg.PublishTimeout)
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		// Only a server configured below EFFECTS_MAX_PAYLOAD_BYTES gets
		// here; retrying would not change the answer.
		s.reject(w, eventID, effectID, kind, kind, fmt.Sprintf(
			"the effect message is %d bytes, more than the NATS server accepts (max_payload %d)",
			len(msg.Data), s.js.Conn().MaxPayload()))
	case errors.Is(err, errPublishTimeout):
		s.unavailable(w, publishErrorTimeout, err)
	case err != nil:
		s.unavailable(w, publishErrorError, err)
	default:
		s.metrics.publishSeconds.Observe(time.Since(start).Seconds())
		outcome := outcomePublished
		if ack.Duplicate {
			outcome = outcomeDuplicate
		}
		s.metrics.ingest(kind, outcome)
		s.reply(w, http.StatusOK, appendPublishedReply(make([]byte, 0, 160), effectID, eventID, ack.Duplicate, ack.Seq))
	}
}

// reject publishes the failed completion of a row that can never succeed and
// replies 200 once it is stored. Its subject is CompletedSubject(kind), which
// for a kind that is not valid is effects.InvalidKindSubject.
func (s *Server) reject(w http.ResponseWriter, eventID, effectID, kind, label, reason string) {
	if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
		s.unavailable(w, publishErrorError, errNotConnected)
		return
	}
	if len(kind) > maxStoredKindLength {
		kind = cutUTF8(kind, maxStoredKindLength)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	// The message id of the completion includes the event id, so a
	// redelivered event stores its failure once.
	err := s.client.Publish(ctx, effects.Ref{ID: effectID, Kind: kind, EventID: eventID}, effects.Completion{
		EffectID:    effectID,
		Kind:        kind,
		Status:      effects.StatusFailed,
		Error:       &reason,
		Attempts:    0,
		CompletedAt: s.now().UTC(),
	})
	if err != nil {
		reason := publishErrorError
		if errors.Is(err, context.DeadlineExceeded) {
			reason = publishErrorTimeout
			err = fmt.Errorf("no ack within %s (EFFECTS_PUBLISH_TIMEOUT)", s.cfg.PublishTimeout)
		}
		s.unavailable(w, reason, err)
		return
	}
	s.metrics.publishSeconds.Observe(time.Since(start).Seconds())
	s.metrics.ingest(label, outcomeRejected)
	s.logger.Debug("rejected an effect", "effect_id", effectID, "event_id", eventID, "reason", reason)
	s.reply(w, http.StatusOK, appendRejectedReply(make([]byte, 0, 128+len(reason)), effectID, eventID, reason))
}

// unavailable answers 503 with Retry-After, which Hasura honours even when
// its retries are spent, so the event is delivered once JetStream is back.
// It counts the publish that failed under reason.
func (s *Server) unavailable(w http.ResponseWriter, reason string, err error) {
	s.metrics.publishError(reason)
	now := time.Now().UnixNano()
	if last := s.lastUnavailableLog.Load(); now-last >= int64(10*time.Second) && s.lastUnavailableLog.CompareAndSwap(last, now) {
		s.logger.Warn("JetStream did not store an event; answering 503 (logged at most every 10s)", "error", err)
	}
	w.Header()["Retry-After"] = s.retryAfter
	s.replyError(w, http.StatusServiceUnavailable, "JetStream did not store the effect, retry later: "+err.Error())
}

func (s *Server) replyTooLarge(w http.ResponseWriter) {
	s.replyError(w, http.StatusRequestEntityTooLarge,
		fmt.Sprintf("the body is over the limit of %d bytes (EFFECTS_MAX_BODY_BYTES)", s.cfg.MaxBodyBytes))
}

func (s *Server) replyError(w http.ResponseWriter, code int, msg string) {
	if code != http.StatusServiceUnavailable {
		s.logger.Debug("refused a request", "code", code, "error", msg)
	}
	s.reply(w, code, appendErrorReply(make([]byte, 0, 16+len(msg)), msg))
}

func (s *Server) reply(w http.ResponseWriter, code int, body []byte) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(code)
	_, _ = w.Write(body) // a client that hung up is no one's problem but its own
	s.metrics.request(code)
}

// Request bodies are read into pooled buffers: most are a kilobyte or two,
// and the decoder copies what it keeps.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// maxPooledBody keeps the rare huge body from pinning its buffer in the pool.
const maxPooledBody = 1 << 20

func putBody(p *[]byte, b []byte) {
	if cap(b) > maxPooledBody {
		return
	}
	*p = b[:0]
	bodyPool.Put(p)
}

// readBody reads r to the end into buf, sized once from the Content-Length
// when there is one.
func readBody(r io.Reader, buf []byte, contentLength int64) ([]byte, error) {
	if contentLength > 0 && int64(cap(buf)) < contentLength+1 {
		buf = make([]byte, 0, contentLength+1) // +1: room for the read that sees EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
