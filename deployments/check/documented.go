package check

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// SettingsRead is every environment variable the main module's code reads
// (its non-test Go files, found as [EnvNames] finds a binary's): the
// services, the effects CLI and everything else, test support included.
func SettingsRead(root string) (map[string]bool, error) {
	pkgs, err := listDeps(root, "./...")
	if err != nil {
		return nil, err
	}
	return namesRead(pkgs)
}

// settingsRow is a markdown table row: its first cell, and the rest.
var settingsRow = regexp.MustCompile(`^\s*\|([^|]*)\|`)

// backticked is a name in backticks.
var backticked = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")

// DocumentedSettings is the environment variables that have a row in a
// table of README.md or of a markdown page under docs/: a name in backticks
// in a row's first cell (`| `NAME` | default | meaning |`), mapped to the
// file (relative to root). A name only mentioned in prose, or elsewhere in
// a row, does not count: a setting is documented by its row, with its
// default and meaning.
func DocumentedSettings(root string) (map[string]string, error) {
	files := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	out := map[string]string{}
	for _, rel := range files {
		f, err := os.Open(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20) // performance history rows are long
		for sc.Scan() {
			m := settingsRow.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			for _, name := range backticked.FindAllStringSubmatch(m[1], -1) {
				if _, ok := out[name[1]]; !ok {
					out[name[1]] = rel
				}
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
	}
	return out, nil
}

// UndocumentedSettings is the variables the code under root reads
// ([SettingsRead]) that have no row in its docs ([DocumentedSettings]),
// leaving out exempt (name: why it is no setting of the product). An exempt
// name the code no longer reads is an error, so the list stays true.
func UndocumentedSettings(root string, exempt map[string]string) ([]string, error) {
	read, err := SettingsRead(root)
	if err != nil {
		return nil, err
	}
	documented, err := DocumentedSettings(root)
	if err != nil {
		return nil, err
	}
	for name := range exempt {
		if !read[name] {
			return nil, fmt.Errorf("%s is exempt from documentation but no code reads it any more: remove it from the list", name)
		}
	}
	var out []string
	for _, name := range Sorted(read) {
		if _, ok := exempt[name]; !ok && documented[name] == "" {
			out = append(out, name)
		}
	}
	return out, nil
}
