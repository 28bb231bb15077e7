package envconfig

import (
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	r := FromMap(map[string]string{
		"S": " x ", "I": "42", "B": "yes", "D": "250ms", "L": "a, b,,c ", "EMPTY": "",
	})
	if r.String("S", "d") != "x" || r.String("EMPTY", "d") != "d" || r.String("UNSET", "d") != "d" {
		t.Fatal("String")
	}
	if r.Int("I", 0) != 42 || r.Int("UNSET", 7) != 7 {
		t.Fatal("Int")
	}
	if !r.Bool("B", false) || r.Bool("UNSET", false) {
		t.Fatal("Bool")
	}
	if r.Duration("D", 0) != 250*time.Millisecond || r.Duration("UNSET", time.Second) != time.Second {
		t.Fatal("Duration")
	}
	if got := r.List("L"); strings.Join(got, "|") != "a|b|c" {
		t.Fatalf("List %v", got)
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
}

func TestReaderNamesTheBadVariable(t *testing.T) {
	for name, read := range map[string]func(*Reader){
		"EFFECTS_CONCURRENCY": func(r *Reader) { r.Int("EFFECTS_CONCURRENCY", 1) },
		"EFFECTS_RETRY_BASE":  func(r *Reader) { r.Duration("EFFECTS_RETRY_BASE", 1) },
		"EFFECTS_INSECURE":    func(r *Reader) { r.Bool("EFFECTS_INSECURE", false) },
	} {
		r := FromMap(map[string]string{name: "banana"})
		read(r)
		if r.Err() == nil || !strings.Contains(r.Err().Error(), name) {
			t.Errorf("%s: %v", name, r.Err())
		}
	}
}

func TestSecretNeverInErrors(t *testing.T) {
	r := FromMap(map[string]string{"EFFECTS_WEBHOOK_SECRET": "hunter2"})
	if r.Secret("EFFECTS_WEBHOOK_SECRET") != "hunter2" || r.Err() != nil {
		t.Fatal("Secret")
	}
}
