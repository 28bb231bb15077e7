package schema_test

import (
	"regexp"
	"testing"

	"github.com/effects-run/effects/internal/schema"
)

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// FuzzParseTable checks EFFECTS_TABLE, which is put into SQL: no panic; an
// accepted name is one or two plain identifiers within the length limits,
// quoted as such (so nothing of it can escape its quotes), and reads back
// the same from its String. The seed corpus (f.Add and
// testdata/fuzz/FuzzParseTable/) runs in every `go test`; `make fuzz` fuzzes
// it.
func FuzzParseTable(f *testing.F) {
	for _, s := range []string{"effects", "public.effects", "a.b.c", "", ".", "a.", ".a", `e"; DROP TABLE x; --`,
		"1abc", "_a1", "Effects", "é", "a b", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tb, err := schema.ParseTable(s)
		if err != nil {
			return
		}
		if !identRE.MatchString(tb.Name) || len(tb.Name) > schema.MaxTableNameLen ||
			(tb.Schema != "" && (!identRE.MatchString(tb.Schema) || len(tb.Schema) > 63)) {
			t.Fatalf("ParseTable(%q) accepted %+v", s, tb)
		}
		want := `"` + tb.Name + `"`
		if tb.Schema != "" {
			want = `"` + tb.Schema + `".` + want
		}
		if tb.Quoted() != want {
			t.Fatalf("%q quoted as %s, want %s", s, tb.Quoted(), want)
		}
		back, err := schema.ParseTable(tb.String())
		if err != nil || back != tb || tb.String() != s {
			t.Fatalf("%q: %+v prints as %q, which reads back as %+v, %v", s, tb, tb.String(), back, err)
		}
	})
}
