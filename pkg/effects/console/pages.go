package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/pkg/effects"
)

// pages are the parsed templates: a page each, every one with the layout.
type pages struct {
	byName map[string]*template.Template
	// assetVersion changes with the static files, so that a browser does
	// not keep an old script.
	assetVersion string
}

func parsePages(prefix string) (*pages, error) {
	funcs := template.FuncMap{
		"when":     whenText,
		"pgtime":   func(t operator.PGTime) string { return t.Format("2006-01-02 15:04:05Z07:00") },
		"oneline":  oneLine,
		"f1":       func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
		"statuses": func() []effects.Status { return operator.Statuses },
		"plus":     func(a, b float64) float64 { return a + b },
		"half":     func(a float64) float64 { return a / 2 },
	}
	p := &pages{byName: map[string]*template.Template{}}
	h := sha256.New()
	err := fs.WalkDir(assets, "static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(path)
		h.Write(b)
		return err
	})
	if err != nil {
		return nil, err
	}
	p.assetVersion = hex.EncodeToString(h.Sum(nil))[:12]
	for _, name := range []string{"list", "effect", "kinds", "login", "error"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/chart.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		p.byName[name] = t
	}
	return p, nil
}

// view is what every page's template gets.
type view struct {
	Title   string
	Nav     string // the current section: "effects" or "kinds"
	Prefix  string
	Static  string // the static files' path prefix
	Version string
	// CanAct shows the buttons that change state; ReadOnly says why not.
	CanAct, ReadOnly bool
	// LoggedIn shows the logout button; Name is who logged in.
	LoggedIn bool
	Name     string
	Flash    *flash
	// RefreshMS is the live refresh's interval.
	RefreshMS int64
	Page      any
}

type flash struct {
	Error bool
	Text  string
}

func (h *Handler) view(w http.ResponseWriter, r *http.Request, id identity, title, nav string, page any) *view {
	return &view{
		Title: title, Nav: nav, Prefix: h.cfg.Prefix, Static: h.cfg.Prefix + "/static", Version: h.pages.assetVersion,
		CanAct: id.role >= roleOperator, ReadOnly: id.role == roleReadOnly,
		LoggedIn: id.session, Name: id.name,
		Flash:     h.takeFlash(w, r),
		RefreshMS: h.cfg.Refresh.Milliseconds(),
		Page:      page,
	}
}

// render writes the page name with v, or only its fragment (the part the
// live refresh replaces) when the request asks for ?fragment=1.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, name, fragment string, v *view) {
	t := h.pages.byName[name]
	tmpl := "layout"
	if fragment != "" && r.URL.Query().Get("fragment") != "" {
		tmpl = fragment
	}
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, tmpl, v); err != nil {
		h.logger.Error("console: rendering a page failed", "page", name, "error", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

func (h *Handler) errorPage(w http.ResponseWriter, r *http.Request, id identity, code int, msg string) {
	h.render(w, r, code, "error", "", h.view(w, r, id, http.StatusText(code), "", msg))
}

// --- / -------------------------------------------------------------------

const (
	defaultListLimit = 50
	maxListLimit     = 500
)

type listPage struct {
	Status, Kind string
	Limit        int
	Rows         []operator.Row
	Err          string
	// Query is the filter as a query string, for the refresh's URL.
	Query string
	// RetryAll offers "Retry all failed" for the filter; Failed is how
	// many failed rows the filter holds (-1: not counted).
	RetryAll bool
	Failed   int64
	Kinds    []string
	// Paused: the filter's kind is paused.
	Paused bool
}

func (h *Handler) listPage(w http.ResponseWriter, r *http.Request, id identity) {
	q := r.URL.Query()
	lp := &listPage{Status: q.Get("status"), Kind: q.Get("kind"), Limit: defaultListLimit, Failed: -1}
	code := http.StatusOK
	bad := func(msg string) {
		lp.Err, code = msg, http.StatusBadRequest
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			bad(fmt.Sprintf("limit %q: want 1 to %d", s, maxListLimit))
		} else {
			lp.Limit = n
		}
	}
	switch {
	case lp.Status != "" && !operator.ValidStatus(lp.Status):
		bad(fmt.Sprintf("status %q: want %s", lp.Status, operator.StatusList()))
	case lp.Kind != "" && effects.ValidateKind(lp.Kind) != nil:
		bad(fmt.Sprintf("kind: %v", effects.ValidateKind(lp.Kind)))
	}
	vals := url.Values{}
	for k, v := range map[string]string{"status": lp.Status, "kind": lp.Kind} {
		if v != "" {
			vals.Set(k, v)
		}
	}
	if lp.Limit != defaultListLimit {
		vals.Set("limit", strconv.Itoa(lp.Limit))
	}
	lp.Query = vals.Encode()
	if lp.Err == "" {
		rows, err := h.store.List(r.Context(), operator.Filter{Status: lp.Status, Kind: lp.Kind, Limit: lp.Limit})
		if err != nil {
			lp.Err, code = "Reading the table failed: "+err.Error(), http.StatusServiceUnavailable
		}
		lp.Rows = rows
		lp.RetryAll = lp.Status == "" || lp.Status == string(effects.StatusFailed)
	}
	if kd, err := h.kinds.get(r.Context()); err == nil {
		for _, k := range kd.Kinds {
			lp.Kinds = append(lp.Kinds, k.Kind)
			if lp.Kind == "" || k.Kind == lp.Kind {
				lp.Failed = max(lp.Failed, 0) + k.Failed
			}
		}
		if lp.Failed < 0 {
			lp.Failed = 0
		}
		lp.Paused = lp.Kind != "" && kd.paused(lp.Kind)
	}
	title := "Effects"
	if lp.Status != "" || lp.Kind != "" {
		title = strings.TrimSpace("Effects " + lp.Status + " " + lp.Kind)
	}
	h.render(w, r, code, "list", "rows", h.view(w, r, id, title, "effects", lp))
}

// --- /effects/{id} ------------------------------------------------------

type effectPage struct {
	Row        *operator.Row
	Payload    string
	Completion string
	// Location is where a pending effect is in JetStream; LocateErr why
	// it could not be read.
	Location  *operator.Location
	LocateErr string
	CanRetry  bool
	CanCancel bool
	// KindPaused: the effect's kind is paused (why a pending effect waits).
	KindPaused bool
	// TableSource is, for a pending effect of a table a table source
	// publishes, whether its cursor passed the row (operator.SourcePublished
	// or operator.SourceWaiting); "" otherwise.
	TableSource string
}

func (h *Handler) effectPage(w http.ResponseWriter, r *http.Request, id identity) {
	eid := r.PathValue("id")
	if !effects.IsUUID(eid) {
		h.errorPage(w, r, id, http.StatusNotFound, fmt.Sprintf("%q is not an effect id (a UUID).", eid))
		return
	}
	row, err := h.store.Get(r.Context(), eid)
	if err != nil {
		h.errorPage(w, r, id, http.StatusServiceUnavailable, "Reading the table failed: "+err.Error())
		return
	}
	if row == nil {
		h.errorPage(w, r, id, http.StatusNotFound, fmt.Sprintf("No effect %s in %s.", eid, h.store.Table))
		return
	}
	ep := &effectPage{Row: row, Payload: prettyJSON(row.Payload), Completion: prettyJSON(row.Completion),
		CanRetry: row.Status == string(effects.StatusFailed), CanCancel: row.Status == string(effects.StatusPending)}
	if kd, err := h.kinds.get(r.Context()); err == nil {
		ep.KindPaused = kd.paused(row.Kind)
	}
	if row.Status == string(effects.StatusPending) {
		ep.TableSource, _ = h.store.TableSourceState(r.Context(), eid) // the page does without it
	}
	// Where it is in JetStream, for a pending effect, on the page itself
	// only: the scan reads up to operator.MaxScan messages, too much for
	// every refresh.
	if row.Status == string(effects.StatusPending) && r.URL.Query().Get("fragment") == "" {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		ep.Location, err = operator.Locate(ctx, h.js, *row)
		cancel()
		if err != nil {
			ep.LocateErr = err.Error()
		}
	}
	h.render(w, r, http.StatusOK, "effect", "summary", h.view(w, r, id, "Effect "+row.ID, "effects", ep))
}

// --- /kinds -------------------------------------------------------------

type kindsPage struct {
	*kindsData
	Err string
}

func (h *Handler) kindsPage(w http.ResponseWriter, r *http.Request, id identity) {
	kd, err := h.kinds.get(r.Context())
	kp := &kindsPage{kindsData: kd}
	code := http.StatusOK
	if err != nil {
		kp.kindsData, kp.Err, code = &kindsData{}, "Reading the table failed: "+err.Error(), http.StatusServiceUnavailable
	}
	h.render(w, r, code, "kinds", "kinds", h.view(w, r, id, "Kinds", "kinds", kp))
}

// --- helpers ------------------------------------------------------------

// whenText writes a time in UTC to the second; "-" for none.
func whenText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z07:00")
}

// oneLine is s on one line, cut to n runes; "" for none.
func oneLine(s *string, n int) string {
	if s == nil {
		return ""
	}
	v := strings.Join(strings.Fields(*s), " ")
	if r := []rune(v); len(r) > n {
		v = string(r[:n-1]) + "…"
	}
	return v
}

// prettyJSON indents a JSON value for reading; "" for none.
func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var b bytes.Buffer
	if json.Indent(&b, raw, "", "  ") != nil {
		return string(raw)
	}
	return b.String()
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
