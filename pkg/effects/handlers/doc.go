// Package handlers holds the built-in effect handlers that every dispatcher
// offers, for handler authors who build their own dispatcher binary and want
// the built-ins next to their own kinds.
//
//   - "echo" ([Echo]) completes with the effect's payload, byte for byte. It
//     is what smoke tests, benchmarks and the end-to-end test use: it
//     exercises the whole pipeline and does nothing else.
//   - "http_request" ([NewHTTPRequest]) sends one HTTP request described by
//     the payload and completes with the response's status and body.
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
package handlers
