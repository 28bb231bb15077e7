package console

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
)

type loginPage struct {
	Next  string
	Error string
}

// loginPage serves the login form (without tokens there is nothing to log
// in to: the console's root instead).
func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	if h.auth.open {
		http.Redirect(w, r, h.cfg.Prefix+"/", http.StatusSeeOther)
		return
	}
	next := h.safeNext(r.URL.Query().Get("next"))
	h.render(w, r, http.StatusOK, "login", "", h.view(w, r, identity{}, "Log in", "", &loginPage{Next: next}))
}

// login checks the token typed in and sets the session cookie: HttpOnly
// (no script reads it), SameSite=Strict (no other site's page sends it),
// Secure when the request came over TLS, for the console's path only.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	if h.auth.open {
		http.Redirect(w, r, h.cfg.Prefix+"/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	next := h.safeNext(r.PostForm.Get("next"))
	rl := h.auth.tokenRole(strings.TrimSpace(r.PostForm.Get("token")))
	if rl == roleNone {
		h.render(w, r, http.StatusUnauthorized, "login", "", h.view(w, r, identity{}, "Log in", "",
			&loginPage{Next: next, Error: "That token is not valid."}))
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: h.auth.session(rl, cleanName(r.PostForm.Get("name"))),
		Path: h.cookiePath(), MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: h.auth.secureCookie(r),
	})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, _ identity) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: h.cookiePath(), MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: h.auth.secureCookie(r)})
	http.Redirect(w, r, h.cfg.Prefix+"/login", http.StatusSeeOther)
}

func (h *Handler) cookiePath() string { return h.cfg.Prefix + "/" }

// safeNext is where to go after logging in: a path of the console's own,
// never another site ("//evil.example" or "https://...").
func (h *Handler) safeNext(next string) string {
	home := h.cfg.Prefix + "/"
	if !strings.HasPrefix(next, home) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return home
	}
	return next
}

// flashKey signs the messages an action leaves for the page it redirects
// to; it lives as long as the process (a message lives a minute).
var flashKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}()

// setFlash leaves a message for the next page (Post/Redirect/Get: the
// action's answer is a redirect, and reloading the page does not repeat
// the action).
func (h *Handler) setFlash(w http.ResponseWriter, r *http.Request, isErr bool, text string) {
	kind := "ok"
	if isErr {
		kind = "error"
	}
	payload := kind + "." + base64.RawURLEncoding.EncodeToString([]byte(text))
	http.SetCookie(w, &http.Cookie{
		Name: flashCookie, Value: payload + "." + base64.RawURLEncoding.EncodeToString(mac(flashKey, payload)),
		Path: h.cookiePath(), MaxAge: 60, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: h.auth.secureCookie(r),
	})
}

// takeFlash returns the message an action left, and clears it.
func (h *Handler) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashCookie)
	if err != nil || r.URL.Query().Get("fragment") != "" {
		return nil
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: "", Path: h.cookiePath(), MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: h.auth.secureCookie(r)})
	payload, sig, ok := cutLast(c.Value, ".")
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if !ok || err != nil || !hmac.Equal(got, mac(flashKey, payload)) {
		return nil
	}
	kind, enc, _ := strings.Cut(payload, ".")
	text, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil
	}
	return &flash{Error: kind == "error", Text: string(text)}
}
