package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/pkg/effects"
)

// maxRetryAll is how many failed effects one "Retry all failed" re-runs,
// oldest first; the page says when more are left.
const maxRetryAll = 1000

// actor is who acts, recorded on what they change (rerun_requested_by):
// the name given at login, or "console".
func actor(id identity) string {
	if id.name != "" {
		return id.name + " (console)"
	}
	return "console"
}

// effectID is the request's effect id, or "" after answering 400.
func effectID(w http.ResponseWriter, r *http.Request) string {
	eid := r.PathValue("id")
	if !effects.IsUUID(eid) {
		http.Error(w, fmt.Sprintf("%q is not an effect id (a UUID)", eid), http.StatusBadRequest)
		return ""
	}
	return eid
}

// retryOne re-runs one effect (the Retry button of a failed effect's page).
func (h *Handler) retryOne(w http.ResponseWriter, r *http.Request, id identity) {
	eid := effectID(w, r)
	if eid == "" {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	res := h.store.Rerun(ctx, h.js, h.nc.MaxPayload(), eid, operator.RerunOptions{By: actor(id)})
	h.kinds.forget()
	if res.Outcome == operator.Retried {
		h.setFlash(w, r, false, fmt.Sprintf("Re-run asked: published as %s. The status changes when it completes.", res.MsgID))
		h.logger.Info("console: re-run asked", "id", eid, "by", actor(id))
	} else {
		h.setFlash(w, r, true, "Not re-run: "+res.Error)
	}
	http.Redirect(w, r, h.cfg.Prefix+"/effects/"+eid, http.StatusSeeOther)
}

// retryFailed re-runs the failed effects of the list's kind filter (any
// kind when none), oldest first, at most maxRetryAll.
func (h *Handler) retryFailed(w http.ResponseWriter, r *http.Request, id identity) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	kind := r.PostForm.Get("kind")
	if kind != "" && effects.ValidateKind(kind) != nil {
		http.Error(w, fmt.Sprintf("kind: %v", effects.ValidateKind(kind)), http.StatusBadRequest)
		return
	}
	back := url.Values{"status": {string(effects.StatusFailed)}}
	if kind != "" {
		back.Set("kind", kind)
	}
	dest := h.cfg.Prefix + "/?" + back.Encode()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	ids, err := h.store.FailedIDs(ctx, kind, 0, maxRetryAll+1, true)
	if err != nil {
		h.setFlash(w, r, true, "Reading the failed effects failed: "+err.Error())
		http.Redirect(w, r, dest, http.StatusSeeOther)
		return
	}
	more := len(ids) > maxRetryAll
	if more {
		ids = ids[:maxRetryAll]
	}
	retried, skipped := 0, 0
	var firstErr string
	failed := 0
	keys := operator.RerunKeys{} // of several failed effects of one key, one is re-run
	for _, eid := range ids {
		res := h.store.Rerun(ctx, h.js, h.nc.MaxPayload(), eid, operator.RerunOptions{By: actor(id), Selected: true, Keys: keys})
		switch res.Outcome {
		case operator.Retried:
			retried++
		case operator.Skipped:
			skipped++
		default:
			failed++
			if firstErr == "" {
				firstErr = res.ID + ": " + res.Error
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	h.kinds.forget()
	what := "failed effects"
	if kind != "" {
		what = "failed effects of kind " + kind
	}
	msg := fmt.Sprintf("Re-ran %d %s.", retried, what)
	if len(ids) == 0 {
		msg = "No " + what + " to re-run."
	}
	if skipped > 0 {
		msg += fmt.Sprintf(" %d succeeded meanwhile and were left alone.", skipped)
	}
	if failed > 0 {
		msg += fmt.Sprintf(" %d could not be re-run (first: %s).", failed, firstErr)
	}
	if more {
		msg += fmt.Sprintf(" More than %d were failed: press again for the next ones once these have run.", maxRetryAll)
	}
	h.logger.Info("console: re-run of failed effects asked", "kind", kind, "retried", retried, "errors", failed, "by", actor(id))
	h.setFlash(w, r, failed > 0, msg)
	http.Redirect(w, r, dest, http.StatusSeeOther)
}

// cancelOne cancels a pending effect (the Cancel button of its page).
func (h *Handler) cancelOne(w http.ResponseWriter, r *http.Request, id identity) {
	eid := effectID(w, r)
	if eid == "" {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	rep, err := h.control.Cancel(ctx, []string{eid}, actor(id))
	h.kinds.forget()
	switch {
	case err != nil:
		h.setFlash(w, r, true, "Not cancelled: "+err.Error())
	case len(rep.Results) == 1 && rep.Results[0].Outcome == control.OutcomeCancelled:
		h.setFlash(w, r, !rep.Confirmed, "Cancelled. "+confirmation(rep))
		h.logger.Info("console: effect cancelled", "id", eid, "by", actor(id), "confirmed", rep.Confirmed)
	case len(rep.Results) == 1 && rep.Results[0].Outcome == control.OutcomeAlreadyCancelled:
		h.setFlash(w, r, false, "It was already cancelled.")
	case len(rep.Results) == 1:
		h.setFlash(w, r, true, "Not cancelled: "+rep.Results[0].Error)
	}
	http.Redirect(w, r, h.cfg.Prefix+"/effects/"+eid, http.StatusSeeOther)
}

// pauseKind and resumeKind are the Pause and Resume buttons of /kinds.
func (h *Handler) pauseKind(w http.ResponseWriter, r *http.Request, id identity) {
	h.pauseOrResume(w, r, id, true)
}

func (h *Handler) resumeKind(w http.ResponseWriter, r *http.Request, id identity) {
	h.pauseOrResume(w, r, id, false)
}

func (h *Handler) pauseOrResume(w http.ResponseWriter, r *http.Request, id identity, pause bool) {
	kind := r.PathValue("kind")
	if err := effects.ValidateKind(kind); err != nil {
		http.Error(w, fmt.Sprintf("kind: %v", err), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	do, verb := h.control.Resume, "Resumed"
	if pause {
		do, verb = h.control.Pause, "Paused"
	}
	rep, err := do(ctx, []string{kind}, actor(id))
	h.kinds.forget()
	if err != nil {
		h.setFlash(w, r, true, "Nothing changed: "+err.Error())
	} else {
		msg := verb + " " + kind + ". "
		switch rep.Results[0].Outcome {
		case control.OutcomeAlreadyPaused:
			msg = kind + " was already paused. "
		case control.OutcomeNotPaused:
			msg = kind + " was not paused. "
		case control.OutcomePaused:
			msg += "Its effects are accepted and stay pending until it is resumed; attempts already running finish. "
		case control.OutcomeResumed:
			msg += "Its pending effects run again. "
		}
		h.setFlash(w, r, !rep.Confirmed, msg+confirmation(rep))
		h.logger.Info("console: "+strings.ToLower(verb), "kind", kind, "by", actor(id), "confirmed", rep.Confirmed)
	}
	http.Redirect(w, r, h.cfg.Prefix+"/kinds", http.StatusSeeOther)
}

// confirmation says whether the dispatchers applied a control.
func confirmation(rep control.Report) string {
	switch {
	case rep.Confirmed && rep.Dispatchers == 1:
		return "The dispatcher confirmed it."
	case rep.Confirmed && rep.Dispatchers > 0:
		return fmt.Sprintf("All %d dispatchers confirmed it.", rep.Dispatchers)
	case rep.Confirmed:
		return "No dispatcher is running; any that starts applies it first."
	}
	msg := "Recorded, but not confirmed: " + rep.Error
	if len(rep.Waiting) > 0 {
		msg += " (waiting for " + strings.Join(rep.Waiting, ", ") + ")"
	}
	return msg
}
