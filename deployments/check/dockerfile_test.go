package check

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

type dockerStage struct {
	name  string
	from  string
	instr []*parser.Node
}

type dockerfile struct {
	args   map[string]string // ARG defaults before the first FROM
	stages []dockerStage
}

func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	res, err := parser.Parse(bytes.NewReader(readRepoFile(t, "Dockerfile")))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	df := dockerfile{args: map[string]string{}}
	for _, n := range res.AST.Children {
		n.Value = strings.ToLower(n.Value) // the instruction
		switch {
		case n.Value == "from":
			var words []string
			for x := n.Next; x != nil; x = x.Next {
				words = append(words, x.Value)
			}
			st := dockerStage{from: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "as") {
				st.name = words[2]
			}
			df.stages = append(df.stages, st)
		case len(df.stages) == 0 && n.Value == "arg":
			if k, v, ok := strings.Cut(n.Next.Value, "="); ok {
				df.args[k] = v
			}
		case len(df.stages) > 0:
			st := &df.stages[len(df.stages)-1]
			st.instr = append(st.instr, n)
		}
	}
	return df
}

type envMap map[string]string

func (e envMap) Get(k string) (string, bool) { v, ok := e[k]; return v, ok }
func (e envMap) Keys() []string              { return keys(e) }

// goBuild is the Dockerfile's go build: its environment (the stage's ENV),
// flags, output directory and targets.
type goBuild struct {
	env     envMap
	flags   []string
	out     string
	targets []string
}

func dockerGoBuild(t *testing.T, st dockerStage) (goBuild, bool) {
	t.Helper()
	gb := goBuild{env: envMap{}}
	lex := shell.NewLex('\\')
	found := false
	for _, n := range st.instr {
		switch n.Value {
		case "env":
			for x := n.Next; x != nil && x.Next != nil; x = x.Next.Next {
				gb.env[x.Value] = x.Next.Value
			}
		case "run":
			words, err := lex.ProcessWords(n.Next.Value, gb.env)
			if err != nil {
				t.Fatalf("Dockerfile line %d: %v", n.StartLine, err)
			}
			i := slices.Index(words, "build")
			if i < 1 || words[i-1] != "go" {
				continue
			}
			if found {
				t.Fatal("Dockerfile: more than one go build")
			}
			found = true
			args := words[i+1:]
			for j := 0; j < len(args); j++ {
				a := args[j]
				switch {
				case a == "&&" || a == ";":
					t.Fatalf("Dockerfile line %d: keep go build a RUN of its own", n.StartLine)
				case a == "-o":
					j++
					gb.out = args[j]
				case slices.Contains([]string{"-ldflags", "-gcflags", "-tags", "-mod", "-asmflags"}, a):
					gb.flags = append(gb.flags, a, args[j+1])
					j++
				case strings.HasPrefix(a, "-"):
					gb.flags = append(gb.flags, a)
				default:
					gb.targets = append(gb.targets, a)
				}
			}
		}
	}
	return gb, found
}

var (
	buildOnce sync.Once
	builtDir  string
	builtErr  string
)

// builtBinaries builds the binaries the way the Dockerfile does, once per
// test run, and returns the directory holding them.
func builtBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		df := parseDockerfile(t)
		var gb goBuild
		found := false
		for _, st := range df.stages {
			if b, ok := dockerGoBuild(t, st); ok {
				gb, found = b, true
			}
		}
		if !found {
			builtErr = "the Dockerfile has no go build"
			return
		}
		dir, err := os.MkdirTemp("", "effects-docker-build-")
		if err != nil {
			builtErr = err.Error()
			return
		}
		builtDir = dir
		args := append([]string{"build"}, gb.flags...)
		args = append(args, "-o", dir+string(filepath.Separator))
		args = append(args, gb.targets...)
		cmd := exec.Command("go", args...)
		cmd.Dir = RepoRoot
		cmd.Env = os.Environ()
		for k, v := range gb.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			builtErr = "go " + strings.Join(args, " ") + ": " + err.Error() + "\n" + string(out)
		}
	})
	if builtErr != "" {
		t.Fatal(builtErr)
	}
	return builtDir
}

// The Dockerfile builds every binary under cmd/, static and stripped, into
// the directory the final stage copies to its PATH, and runs as a non-root
// user.
func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t)
	if len(df.stages) < 2 {
		t.Fatal("the Dockerfile must be multi-stage (build, then a small final image)")
	}
	build := df.stages[0]
	gb, ok := dockerGoBuild(t, build)
	if !ok {
		t.Fatal("the first stage has no go build")
	}
	if gb.env["CGO_ENABLED"] != "0" {
		t.Error("the build stage must set CGO_ENABLED=0: the final image has no C library to link against")
	}
	if !slices.Equal(gb.targets, []string{"./cmd/..."}) {
		t.Errorf("go build targets %v, want ./cmd/... (every binary)", gb.targets)
	}
	// The Go of the build stage is the one go.mod asks for.
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+\.\d+)$`).FindSubmatch(readRepoFile(t, "go.mod"))
	if goVersion == nil {
		t.Fatal("go.mod has no go line with a full version")
	}
	lex := shell.NewLex('\\')
	from, _, err := lex.ProcessWord(build.from, envMap(df.args))
	if want := "golang:" + string(goVersion[1]) + "-alpine"; err != nil || from != want {
		t.Errorf("build stage FROM %s, want %s (go.mod's go line)", from, want)
	}
	if why := imagePinned(from); why != "" {
		t.Errorf("build stage: %s", why)
	}

	final := df.stages[len(df.stages)-1]
	if why := imagePinned(final.from); why != "" {
		t.Errorf("final stage: %s", why)
	}
	copied, user := false, ""
	for _, n := range final.instr {
		switch n.Value {
		case "copy":
			if slices.Contains(n.Flags, "--from="+build.name) && n.Next != nil && n.Next.Value == gb.out && n.Next.Next != nil && n.Next.Next.Value == "/usr/local/bin/" {
				copied = true
			}
		case "user":
			user = n.Next.Value
		}
	}
	if !copied {
		t.Errorf("final stage must COPY --from=%s %s /usr/local/bin/", build.name, gb.out)
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final stage USER %q: want a numeric non-root uid (runAsNonRoot can only check a number)", user)
	}

	dir := builtBinaries(t)
	bins, err := Binaries(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var built []string
	for _, e := range entries {
		built = append(built, e.Name())
	}
	if !slices.Equal(built, bins) {
		t.Errorf("the Dockerfile's go build made %v, want %v (cmd/)", built, bins)
	}
	for _, b := range built {
		f, err := elf.Open(filepath.Join(dir, b))
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", b)
			}
		}
		if f.Section(".symtab") != nil {
			t.Errorf("%s is not stripped (-ldflags=-s)", b)
		}
		f.Close()
	}
}
