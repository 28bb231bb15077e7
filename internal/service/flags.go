package service

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// Version is the module version the binary was built from ("(devel)" for a
// build from a checkout), with the VCS revision when the build recorded it.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return v + " " + bi.GoVersion
}

// HandleArgs answers --help and --version (and -h, help, version) by
// printing to stdout and exiting 0; any other argument is an error (exit
// 2), since a service is configured by environment variables only. No
// argument returns. Every service binary calls it first, through [Main].
func HandleArgs(name string, args []string) {
	if code, done := HandleArgsTo(name, args, os.Stdout, os.Stderr); done {
		os.Exit(code)
	}
}

// HandleArgsTo is [HandleArgs] writing to stdout and stderr; it returns the exit
// code and whether to exit.
func HandleArgsTo(name string, args []string, stdout, stderr io.Writer) (int, bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(stdout, "usage: %s [--help | --version]\n\n"+
			"The effects %s service. It takes no arguments: it is configured by environment\n"+
			"variables (NATS_URL, EFFECTS_*; see the README) and runs until SIGTERM or SIGINT.\n", name, name)
		return 0, true
	case "-version", "--version", "version":
		fmt.Fprintf(stdout, "%s %s\n", name, Version())
		return 0, true
	}
	fmt.Fprintf(stderr, "%s: unknown argument %q (try --help)\n", name, args[0])
	return 2, true
}
