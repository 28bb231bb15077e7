// Package envconfig reads service settings from environment variables. Every
// error names the variable that is wrong and what it should be.
package envconfig

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Reader reads settings and collects the first error, so a constructor can
// read every field and check once.
type Reader struct {
	lookup func(string) (string, bool)
	err    error
}

// New reads from the process environment.
func New() *Reader { return &Reader{lookup: os.LookupEnv} }

// FromMap reads from m (for tests).
func FromMap(m map[string]string) *Reader {
	return &Reader{lookup: func(k string) (string, bool) { v, ok := m[k]; return v, ok }}
}

// Err is the first error met.
func (r *Reader) Err() error { return r.err }

// Fail records an error about variable name holding value, unless one was
// recorded already; want says what it should be.
func (r *Reader) Fail(name, value, want string) { r.fail(name, value, want) }

func (r *Reader) fail(name, value, want string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s=%q: %s", name, value, want)
	}
}

func (r *Reader) get(name string) (string, bool) {
	v, ok := r.lookup(name)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

// String returns the variable, or def when unset or empty.
func (r *Reader) String(name, def string) string {
	if v, ok := r.get(name); ok {
		return v
	}
	return def
}

// Secret is String for a value that must never be printed: errors show
// only its name.
func (r *Reader) Secret(name string) string {
	v, _ := r.lookup(name)
	return v
}

// Int returns the variable as an integer.
func (r *Reader) Int(name string, def int) int {
	v, ok := r.get(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(name, v, "want an integer")
		return def
	}
	return n
}

// Bool accepts 1/0, true/false, yes/no.
func (r *Reader) Bool(name string, def bool) bool {
	v, ok := r.get(name)
	if !ok {
		return def
	}
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	}
	r.fail(name, v, "want 1 or 0 (true or false)")
	return def
}

// Duration returns the variable as a Go duration string ("250ms", "30s").
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v, ok := r.get(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.fail(name, v, "want a Go duration such as 250ms, 30s or 5m")
		return def
	}
	return d
}

// List splits a comma-separated variable, dropping empty items.
func (r *Reader) List(name string) []string {
	v, ok := r.get(name)
	if !ok {
		return nil
	}
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// PositiveDuration is [Reader.Duration] for a setting that must be above
// zero: an explicit 0 or a negative value is an error, never the default.
func (r *Reader) PositiveDuration(name string, def time.Duration) time.Duration {
	v, ok := r.get(name)
	d := r.Duration(name, def)
	if ok && d <= 0 && r.err == nil {
		r.fail(name, v, "want a positive duration; unset the variable for the default ("+def.String()+")")
		return def
	}
	return d
}

// IntRange is [Reader.Int] for a setting that must lie in [lo, hi].
func (r *Reader) IntRange(name string, def, lo, hi int) int {
	v, ok := r.get(name)
	n := r.Int(name, def)
	if ok && (n < lo || n > hi) && r.err == nil {
		r.fail(name, v, fmt.Sprintf("want %d to %d", lo, hi))
		return def
	}
	return n
}
