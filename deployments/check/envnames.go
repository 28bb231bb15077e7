package check

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// RepoRoot is the root of the repository (the main module), relative to
// this package's directory, where tests run.
const RepoRoot = "../.."

// MainModule is the import path of the main module.
const MainModule = "github.com/effects-run/effects"

// envName is what an environment variable read by the services looks like.
var envName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// Binaries lists the commands under cmd/ (ingest, dispatcher, completer,
// and whatever is added).
func Binaries(root string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

type goPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
}

// EnvNames returns, for each binary under cmd/, the environment variables
// its code reads, found in the main module's packages the binary is built
// from: the first argument of every call to a reader, and every `env:"NAME"`
// struct tag. A reader is os.Getenv, os.LookupEnv, or an exported function
// or method whose first parameter is a string in a package that looks the
// environment up itself (internal/envconfig today: String, Int, Duration,
// ...). The argument may be a string literal or a constant of any of those
// packages. Names are found in the code, so a setting someone adds, or a
// reader moved to another package, is known at once.
func EnvNames(root string) (map[string]map[string]bool, error) {
	bins, err := Binaries(root)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]bool{}
	for _, bin := range bins {
		pkgs, err := listDeps(root, "./cmd/"+bin)
		if err != nil {
			return nil, err
		}
		names, err := namesRead(pkgs)
		if err != nil {
			return nil, fmt.Errorf("cmd/%s: %w", bin, err)
		}
		out[bin] = names
	}
	return out, nil
}

// listDeps is the main module's packages that pkg is built from.
func listDeps(root, pkg string) (map[string]goPackage, error) {
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{.ImportPath}}	{{.Dir}}	{{join .GoFiles " "}}{{end}}`, pkg)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s: %v: %s", pkg, err, stderr.String())
	}
	pkgs := map[string]goPackage{}
	for _, line := range strings.Split(strings.TrimSpace(string(outb)), "\n") {
		if line == "" {
			continue
		}
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 {
			return nil, fmt.Errorf("go list: unexpected line %q", line)
		}
		pkgs[f[0]] = goPackage{ImportPath: f[0], Dir: f[1], GoFiles: strings.Fields(f[2])}
	}
	return pkgs, nil
}

// fileImports maps a file's local import names to import paths.
func fileImports(f *ast.File) map[string]string {
	imports := map[string]string{}
	for _, im := range f.Imports {
		p, _ := strconv.Unquote(im.Path.Value)
		local := p[strings.LastIndex(p, "/")+1:]
		if im.Name != nil {
			local = im.Name.Name
		}
		imports[local] = p
	}
	return imports
}

// looksUpEnv reports whether a file refers to os.Getenv or os.LookupEnv
// (called or passed on, as envconfig.New passes os.LookupEnv).
func looksUpEnv(f *ast.File) bool {
	var osName string
	for local, path := range fileImports(f) {
		if path == "os" {
			osName = local
		}
	}
	if osName == "" {
		return false
	}
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if x, ok := sel.X.(*ast.Ident); ok && x.Name == osName && (sel.Sel.Name == "Getenv" || sel.Sel.Name == "LookupEnv") {
				found = true
			}
		}
		return !found
	})
	return found
}

// readerFuncs is the names of the exported functions and methods whose
// first parameter is a string, in the packages that look the environment
// up, and of the parameters there shaped like os.Getenv or os.LookupEnv
// (func(string) string, func(string) (string, bool)), through which a
// caller hands the environment in (`run(ctx, os.Getenv)`).
func readerFuncs(parsed map[string][]*ast.File) map[string]bool {
	out := map[string]bool{"Getenv": true, "LookupEnv": true}
	for _, files := range parsed {
		if !slices.ContainsFunc(files, looksUpEnv) {
			continue
		}
		for _, f := range files {
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok || !fd.Name.IsExported() || fd.Type.Params == nil || len(fd.Type.Params.List) == 0 {
					continue
				}
				if isIdent(fd.Type.Params.List[0].Type, "string") {
					out[fd.Name.Name] = true
				}
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if ft, ok := n.(*ast.FuncType); ok && ft.Params != nil {
					for _, p := range ft.Params.List {
						if isEnvLookup(p.Type) {
							for _, name := range p.Names {
								out[name.Name] = true
							}
						}
					}
				}
				return true
			})
		}
	}
	return out
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// isEnvLookup reports whether e is the type of os.Getenv or os.LookupEnv.
func isEnvLookup(e ast.Expr) bool {
	ft, ok := e.(*ast.FuncType)
	if !ok || ft.Params == nil || len(ft.Params.List) != 1 || len(ft.Params.List[0].Names) > 1 ||
		!isIdent(ft.Params.List[0].Type, "string") || ft.Results == nil {
		return false
	}
	var results []ast.Expr
	for _, r := range ft.Results.List {
		for range max(1, len(r.Names)) {
			results = append(results, r.Type)
		}
	}
	switch len(results) {
	case 1:
		return isIdent(results[0], "string")
	case 2:
		return isIdent(results[0], "string") && isIdent(results[1], "bool")
	}
	return false
}

func namesRead(pkgs map[string]goPackage) (map[string]bool, error) {
	fset := token.NewFileSet()
	parsed := map[string][]*ast.File{}
	for path, p := range pkgs {
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				return nil, err
			}
			parsed[path] = append(parsed[path], f)
		}
	}
	readers := readerFuncs(parsed)
	consts := map[string]map[string]string{} // import path -> const name -> value
	for path, files := range parsed {
		consts[path] = stringConsts(files)
	}
	names := map[string]bool{}
	for path, files := range parsed {
		for _, f := range files {
			imports := fileImports(f)
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.CallExpr:
					var fn string
					switch f := n.Fun.(type) {
					case *ast.SelectorExpr: // r.String(...), os.Getenv(...)
						fn = f.Sel.Name
					case *ast.Ident: // a reader called in its own package
						fn = f.Name
					}
					if len(n.Args) == 0 || !readers[fn] {
						return true
					}
					if v, ok := constString(n.Args[0], consts[path], consts, imports); ok && envName.MatchString(v) {
						names[v] = true
					}
				case *ast.Field:
					if n.Tag != nil {
						tag, _ := strconv.Unquote(n.Tag.Value)
						if v, ok := reflect.StructTag(tag).Lookup("env"); ok {
							if name, _, _ := strings.Cut(v, ","); envName.MatchString(name) {
								names[name] = true
							}
						}
					}
				}
				return true
			})
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("found no environment variable read: the settings are read in a way check.EnvNames does not know; teach it")
	}
	return names, nil
}

// stringConsts is the package-level string constants of a package.
func stringConsts(files []*ast.File) map[string]string {
	out := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							if v, err := strconv.Unquote(lit.Value); err == nil {
								out[id.Name] = v
							}
						}
					}
				}
			}
		}
	}
	return out
}

func constString(e ast.Expr, local map[string]string, all map[string]map[string]string, imports map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		v, err := strconv.Unquote(e.Value)
		return v, err == nil
	case *ast.Ident:
		v, ok := local[e.Name]
		return v, ok
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		v, ok := all[imports[x.Name]][e.Sel.Name]
		return v, ok
	}
	return "", false
}

// Sorted returns the keys of a set in order, for messages.
func Sorted(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
