package devstack

import "testing"

func TestHasPassword(t *testing.T) {
	for url, want := range map[string]bool{
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable": false,
		"postgres://u:secret@host/db":                                 true,
		"host=h user=u password=secret dbname=db":                     true,
		"postgres://u@h/db?password=secret":                           true,
	} {
		if got := hasPassword(url); got != want {
			t.Errorf("%s: %v, want %v", url, got, want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote(`a'b&c`); got != `'a'\''b&c'` {
		t.Errorf("got %s", got)
	}
}
