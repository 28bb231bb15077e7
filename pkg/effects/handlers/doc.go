// Package handlers holds the built-in effect handlers that every dispatcher
// offers, for handler authors who build their own dispatcher binary and want
// the built-ins next to their own kinds.
//
//   - "echo" ([Echo]) completes with the effect's payload, byte for byte. It
//     is what smoke tests, benchmarks and the end-to-end test use: it
//     exercises the whole pipeline and does nothing else.
//   - "http_request" ([NewHTTPRequest]) sends one HTTP request described by
//     the payload and completes with the response's status and body.
//   - "email" ([NewEmail]) sends one email through an SMTP server; only when
//     EFFECTS_SMTP_URL is set.
//   - "blob_put" ([NewBlobPut]) writes one object to S3 or an S3-compatible
//     server; only when EFFECTS_S3_BUCKETS is set.
//
// A custom dispatcher registers them with [Register] beside its own handlers:
//
//	reg := effects.NewRegistry()
//	cfg, err := handlers.ConfigFromEnv(nil) // nil: the process environment
//	if err != nil {
//		return err
//	}
//	if err := handlers.Register(reg, cfg); err != nil {
//		return err
//	}
//	reg.Handle("publish_rateset", publishRateset)
//
// # http_request payload and completion
//
// Payload (JSON object; a field given as null counts as absent):
//
//	{"url": "https://api.example.com/v1/things",  // required; http or https
//	 "method": "PUT",                             // optional, default "POST"
//	 "headers": {"Authorization": "Bearer ..."},  // optional, string → string
//	 "body": {"any": ["JSON", "value"]},          // optional; sent as JSON
//	 "timeout_ms": 5000}                          // optional, default EFFECTS_HTTP_TIMEOUT
//
// The body, when present, is sent as its JSON text with
// "Content-Type: application/json" unless headers name another content type;
// without a body nothing is sent. Every request carries "X-Effect-Id: <row id>"
// (unless headers set it) so that the receiver can recognise a retry of the
// same effect: delivery is at least once.
//
// Completion of a 2xx response:
//
//	{"status": 200, "body": <the response body as JSON if it is valid JSON, else as a string>}
//
// with "truncated": true added when the body was longer than
// EFFECTS_HTTP_MAX_RESPONSE_BYTES (or broke off while being read) and only its
// beginning, as a string, is kept. The request has already had its effect, so a
// long response does not turn a success into a failure.
//
// Outcomes: 2xx succeeds. 408, 429, 5xx, a timeout and a network error are
// retried, after the response's Retry-After (seconds or an HTTP date) when it
// has one. Any other status, a 3xx that was not followed included, fails
// permanently, and so does a payload that is not valid or a host that is not
// allowed. Error texts name the method, the URL without its query and user
// information, the status and the first 200 bytes of the response body; never
// the request headers, which may hold credentials.
//
// # Signed requests (Standard Webhooks)
//
// With EFFECTS_HTTP_SIGNING_SECRET (HTTPConfig.SigningSecrets) every request
// carries the headers of the Standard Webhooks specification
// (https://www.standardwebhooks.com), so that the receiver can verify it
// with one of the specification's libraries:
//
//	webhook-id: <the effect's id: the same on every attempt and re-run>
//	webhook-timestamp: <Unix seconds of this attempt>
//	webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// The body signed is the body sent, byte for byte (empty without one); a
// redirect is signed again over what it sends (a 303 drops the body). The
// setting holds one or more secrets, "whsec_<base64 of 24 to 64 random
// bytes>", separated by commas or spaces; each signs, and the header holds
// one "v1,..." per secret, space-separated, so that a key is rotated without
// downtime: add the new secret, move the receivers to it, remove the old
// one. While signing, a payload may not set these headers itself. Without
// the setting no such header is sent.
//
// # Why http_request has an allow-list
//
// Anything that can insert a row into the effects table can ask for an effect:
// a backend, a SQL script, or a browser client through a Hasura mutation. The
// dispatcher runs inside the network, next to databases, admin endpoints and
// cloud metadata services that the outside world cannot reach. Without a limit
// http_request would let any client that can insert a row make the dispatcher
// call those internal services on its behalf (server-side request forgery). So
// http_request reaches only the hosts listed in EFFECTS_HTTP_ALLOW, and an
// empty list allows none: an operator opts in to every destination.
//
// Redirects are followed at most five times, and every redirect target must
// pass the same allow-list; otherwise an allowed host could redirect the
// dispatcher into an internal service. The allow-list is checked against the
// host name in the URL, not the address it resolves to: a host whose DNS
// answer an attacker controls (DNS rebinding) can still point at an internal
// address, so list only hosts whose DNS you trust.
//
// # email payload and completion
//
//	{"to": ["Ann <ann@example.com>"], "cc": [...], "bcc": [...],  // at least one recipient
//	 "from": "billing@example.com",   // optional; must be EFFECTS_EMAIL_FROM or in EFFECTS_EMAIL_FROM_ALLOW
//	 "reply_to": "support@example.com", "subject": "...",
//	 "text": "...", "html": "...",    // at least one
//	 "headers": {"X-Campaign": "december"}}
//
// Completion: {"message_id": "<effect id>@<sender's domain>", "accepted":
// [every envelope recipient]}. The Message-ID is the same on every attempt
// and re-run of an effect, so a repeat is recognisable. A 5xx reply (a
// refused recipient, failed authentication) fails at once; a 4xx reply, a
// connection or TLS failure is retried. A CR or LF in any field, a recipient
// domain outside EFFECTS_EMAIL_TO_ALLOW (when set) or a sender not allowed
// fails at once, before any connection.
//
// # blob_put payload and completion
//
//	{"bucket": "reports",              // required; must be in EFFECTS_S3_BUCKETS
//	 "key": "2025/03/rates.json",      // required; no "..", ".", "//", leading "/", "\" or control characters
//	 "body": {"any": "JSON"},          // stored as its JSON text; or
//	 "body_base64": "iVBORw0KGgo=",    // bytes
//	 "content_type": "application/json", "metadata": {"source": "rates-job"}}
//
// Completion: {"bucket", "key", "etag", "size", "version_id"} (version_id
// null unless the bucket is versioned). A re-run overwrites the same key with
// the same bytes. Throttling (503 SlowDown, 429), 408, 5xx and network
// errors are retried; other 4xx fail at once, and so does a body over
// EFFECTS_S3_MAX_BYTES.
package handlers
