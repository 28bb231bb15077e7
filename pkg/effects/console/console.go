// Package console is the operators' web console of the effects pipeline:
// an [http.Handler] that `effects ui` serves and that a team can mount in a
// server of its own, as River UI is mounted.
//
// Pages: / (the newest effects, filtered by ?status= and ?kind=), /effects/ID
// (one effect: its row and where it is in JetStream), /kinds (per kind:
// counts, backlog, paused or not, and completions over the last hour as a
// chart). Actions, each a POST behind a confirmation: Retry (a failed
// effect, or every failed effect of the filter), Cancel (a pending effect),
// Pause and Resume (a kind), the last three through internal/control, as
// `effects cancel`, `effects pause` and `effects resume` do.
//
// Security: with a token (Config.Token) every request needs
// "Authorization: Bearer <token>" or the session cookie a login with the
// token gives; Config.ReadOnlyToken sees everything and may change nothing.
// Without tokens (Config.AllowUnauthenticated) every request may act, and
// only requests addressed to a loopback name are answered. State changes are
// POSTs only, refused when cross-origin (net/http.CrossOriginProtection),
// and the session cookie is SameSite=Strict and HttpOnly. Pages are
// html/template with a Content-Security-Policy that allows no inline script.
//
//	h, err := console.New(console.Config{DB: pool, NATS: nc, Token: token, Prefix: "/effects"})
//	...
//	defer h.Close()
//	mux.Handle("/effects/", h)
package console

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Config configures the console. DB and NATS are required.
type Config struct {
	// DB is the database holding the effects table.
	DB *pgxpool.Pool
	// Table is the effects table's name, optionally schema-qualified
	// (EFFECTS_TABLE). Default "effects".
	Table string
	// NATS is the connection the console reads JetStream with and
	// publishes re-runs on. The console does not close it.
	NATS *nats.Conn

	// Token lets a request see and act (EFFECTS_UI_TOKEN); at least
	// MinTokenLength characters.
	Token string
	// ReadOnlyToken lets a request see only (EFFECTS_UI_READONLY_TOKEN); it
	// needs Token, and must differ from it.
	ReadOnlyToken string
	// AllowUnauthenticated serves without tokens: every request may act.
	// Requests addressed to anything but a loopback name (localhost,
	// 127.0.0.1, [::1]) are then refused. New refuses to run without
	// tokens unless this is set.
	AllowUnauthenticated bool

	// Prefix is the path the handler is mounted at, without a trailing
	// slash ("/effects"); default "" (the root). The handler serves only
	// paths under it and writes its links with it.
	Prefix string
	// Refresh is how often the pages refresh their list and charts.
	// Default 5s; at least 1s.
	Refresh time.Duration
	// TrustedOrigins are origins (scheme://host[:port]) allowed to send
	// state-changing requests besides the console's own, for a console
	// behind a proxy that rewrites the Host header. Default none.
	TrustedOrigins []string
	// Streams are the stream settings (EFFECTS_STREAM_MAX_AGE,
	// EFFECTS_STREAM_REPLICAS), used only when a pause or cancel finds the
	// control bucket missing and creates it again. Default: the defaults.
	Streams effects.StreamOptions
	// RetainSucceeded and RetainFailed are the retention in force
	// (EFFECTS_RETAIN_SUCCEEDED, EFFECTS_RETAIN_FAILED), used only to
	// explain why a row is gone. Default 0 (rows are kept).
	RetainSucceeded, RetainFailed time.Duration
	// Logger receives the console's warnings. Default: slog.Default().
	Logger *slog.Logger
}

// DefaultRefresh is the refresh interval a zero Config.Refresh stands for.
const DefaultRefresh = 5 * time.Second

// Handler is the console. Close it when done: it stops reading completions
// for the charts.
type Handler struct {
	cfg      Config
	store    operator.Store
	nc       *nats.Conn
	js       jetstream.JetStream
	auth     *auth
	activity *activity
	control  *control.Controller
	kinds    *cached[*kindsData]
	logger   *slog.Logger
	pages    *pages
	handler  http.Handler
}

//go:embed templates static
var assets embed.FS

// New returns the console for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Table == "" {
		cfg.Table = schema.DefaultTable
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Prefix = strings.TrimRight(cfg.Prefix, "/")
	table, err := schema.ParseTable(cfg.Table)
	switch {
	case cfg.DB == nil:
		return nil, errors.New("console: Config.DB is nil")
	case cfg.NATS == nil:
		return nil, errors.New("console: Config.NATS is nil")
	case err != nil:
		return nil, fmt.Errorf("console: Config.Table %q: %w", cfg.Table, err)
	case cfg.Prefix != "" && (!strings.HasPrefix(cfg.Prefix, "/") || strings.ContainsAny(cfg.Prefix, "?#\"'<> ")):
		return nil, fmt.Errorf("console: Config.Prefix %q: want a path such as /effects", cfg.Prefix)
	case cfg.Refresh < time.Second:
		return nil, fmt.Errorf("console: Config.Refresh %s: want 1s or more", cfg.Refresh)
	case cfg.RetainSucceeded < 0 || cfg.RetainFailed < 0:
		return nil, errors.New("console: Config.RetainSucceeded and RetainFailed: want 0 or more")
	}
	if err := checkTokens(cfg.Token, cfg.ReadOnlyToken, cfg.AllowUnauthenticated); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	js, err := jetstream.New(cfg.NATS)
	if err != nil {
		return nil, fmt.Errorf("console: jetstream: %w", err)
	}
	pg, err := parsePages(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		cfg:      cfg,
		store:    operator.Store{DB: cfg.DB, Table: table, Retention: retention.Policy{Succeeded: cfg.RetainSucceeded, Failed: cfg.RetainFailed}},
		nc:       cfg.NATS,
		js:       js,
		auth:     newAuth(cfg.Token, cfg.ReadOnlyToken),
		activity: newActivity(js, cfg.Logger),
		control:  control.New(cfg.DB, js, table, control.Options{Streams: cfg.Streams, Logger: cfg.Logger}),
		logger:   cfg.Logger,
		pages:    pg,
	}
	h.kinds = newCached(cfg.Refresh/2, h.loadKinds)
	cop := http.NewCrossOriginProtection()
	for _, o := range cfg.TrustedOrigins {
		if err := cop.AddTrustedOrigin(o); err != nil {
			return nil, fmt.Errorf("console: Config.TrustedOrigins: %w", err)
		}
	}
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "cross-origin request refused: the console takes state changes only from its own pages", http.StatusForbidden)
	}))
	h.handler = h.secure(cop.Handler(h.routes()))
	return h, nil
}

// checkTokens validates the token settings (the names are the environment
// variables `effects ui` reads them from).
func checkTokens(token, readOnly string, allowUnauthenticated bool) error {
	switch {
	case token == "" && readOnly != "":
		return errors.New("EFFECTS_UI_READONLY_TOKEN is set without EFFECTS_UI_TOKEN: set both, or neither")
	case token == "" && !allowUnauthenticated:
		return errors.New("no EFFECTS_UI_TOKEN: set one, or allow unauthenticated access (loopback only)")
	case token != "" && len(token) < MinTokenLength:
		return fmt.Errorf("EFFECTS_UI_TOKEN is %d characters: want at least %d (e.g. openssl rand -hex 32)", len(token), MinTokenLength)
	case readOnly != "" && len(readOnly) < MinTokenLength:
		return fmt.Errorf("EFFECTS_UI_READONLY_TOKEN is %d characters: want at least %d (e.g. openssl rand -hex 32)", len(readOnly), MinTokenLength)
	case readOnly != "" && readOnly == token:
		return errors.New("EFFECTS_UI_READONLY_TOKEN equals EFFECTS_UI_TOKEN: a read-only token must differ")
	}
	return nil
}

// CheckTokens reports whether the console would accept these token
// settings, with an error naming the variable that is wrong: for a command
// that checks its settings before connecting to anything.
func CheckTokens(token, readOnlyToken string, allowUnauthenticated bool) error {
	return checkTokens(token, readOnlyToken, allowUnauthenticated)
}

// ServeHTTP serves the console.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.handler.ServeHTTP(w, r) }

// Close stops the console's background reading. Requests served after it
// still work, without charts.
func (h *Handler) Close() { h.activity.close() }

// secure sets the headers every response carries: a policy that allows no
// inline script or style and no framing, no caching of pages (they hold
// data), no MIME sniffing, no referrer leaving the console.
func (h *Handler) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
			"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, h.cfg.Prefix+"/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// routes maps the console's paths. Every route but the static files and
// the login page goes through h.authorize.
func (h *Handler) routes() http.Handler {
	p := h.cfg.Prefix
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET "+p+"/static/", http.StripPrefix(p+"/static/", http.FileServerFS(static)))
	// Browsers ask for /favicon.ico on pages without an icon link (the
	// plain-text refusals).
	mux.HandleFunc("GET "+p+"/favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/svg+xml")
		http.ServeFileFS(w, r, static, "favicon.svg")
	})
	mux.HandleFunc("GET "+p+"/login", h.loginPage)
	mux.HandleFunc("POST "+p+"/login", h.login)
	mux.Handle("POST "+p+"/logout", h.authorize(roleReadOnly, h.logout))

	mux.Handle("GET "+p+"/{$}", h.authorize(roleReadOnly, h.listPage))
	mux.Handle("GET "+p+"/effects/{id}", h.authorize(roleReadOnly, h.effectPage))
	mux.Handle("GET "+p+"/kinds", h.authorize(roleReadOnly, h.kindsPage))

	mux.Handle("POST "+p+"/effects/{id}/retry", h.authorize(roleOperator, h.retryOne))
	mux.Handle("POST "+p+"/retry-failed", h.authorize(roleOperator, h.retryFailed))
	mux.Handle("POST "+p+"/effects/{id}/cancel", h.authorize(roleOperator, h.cancelOne))
	mux.Handle("POST "+p+"/kinds/{kind}/pause", h.authorize(roleOperator, h.pauseKind))
	mux.Handle("POST "+p+"/kinds/{kind}/resume", h.authorize(roleOperator, h.resumeKind))

	mux.Handle(p+"/", h.authorize(roleReadOnly, func(w http.ResponseWriter, r *http.Request, _ identity) {
		h.errorPage(w, r, identity{}, http.StatusNotFound, "No such page.")
	}))
	if p != "" {
		mux.Handle("GET "+p, http.RedirectHandler(p+"/", http.StatusSeeOther))
	}
	return mux
}

// authorize runs next for a request whose identity has at least need;
// without tokens only for a request addressed to a loopback name. A
// browser without a session is sent to the login page; anything else gets
// 401, or 403 when it lacks the role.
func (h *Handler) authorize(need role, next func(http.ResponseWriter, *http.Request, identity)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.auth.open && !loopbackHost(r) {
			http.Error(w, "this console has no token and answers only on localhost, 127.0.0.1 or [::1] "+
				"(set EFFECTS_UI_TOKEN to serve it under another name)", http.StatusForbidden)
			return
		}
		id, err := h.auth.identify(r)
		switch {
		case err != nil || (id.role == roleNone && !wantsPage(r)):
			w.Header().Set("WWW-Authenticate", `Bearer realm="effects console"`)
			http.Error(w, "unauthorized: send Authorization: Bearer <EFFECTS_UI_TOKEN>, or log in at "+h.cfg.Prefix+"/login", http.StatusUnauthorized)
			return
		case id.role == roleNone:
			http.Redirect(w, r, h.cfg.Prefix+"/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		case id.role < need:
			h.errorPage(w, r, id, http.StatusForbidden, "Read-only access: this token may look but not change anything.")
			return
		}
		next(w, r, id)
	})
}

// wantsPage reports whether r is a browser's navigation to a page (sent to
// the login page when not logged in), as opposed to the pages' own
// refreshes and other clients (told 401).
func wantsPage(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Query().Get("fragment") == "" &&
		strings.Contains(r.Header.Get("Accept"), "text/html")
}
