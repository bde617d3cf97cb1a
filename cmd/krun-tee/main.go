// Command krun-tee runs workloads in confidential microVMs whose root disk is a
// LUKS2 image unlocked only after a key broker has verified the guest's
// attestation report.
//
// Each top-level verb lives in its own file and registers itself with
// register() from an init function, so verbs can be added without touching
// this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one top-level verb of the CLI.
type command struct {
	name    string
	summary string // one line for the top-level help
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

// register adds a verb; it panics on duplicates because that is a programming
// error caught by any test that starts the binary.
func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("krun-tee: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// exitStatus is returned by a command that must end the process with a specific
// status (for example `run`, which exits with the workload's status) without
// printing an error.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError marks a command-line mistake; main prints it and exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// usagef builds a usageError.
func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// Exit statuses follow the usual Unix conventions.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel()})))
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintln(stdout, "krun-tee", version)
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "krun-tee: unknown command %q (see krun-tee --help)\n", args[0])
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, args[1:])
	return exitCodeFor(err, cmd.name, stderr)
}

// exitCodeFor maps a command's error to a process exit status, printing one
// line on stderr for real failures.
func exitCodeFor(err error, name string, stderr io.Writer) int {
	var status exitStatus
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &status):
		return int(status)
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "krun-tee %s: %v\n", name, err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "krun-tee %s: %v\n", name, err)
		return exitError
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: krun-tee <command> [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'krun-tee <command> --help' for a command's flags.")
	fmt.Fprintln(w, "Set KRUN_TEE_LOG=debug for verbose logs on stderr.")
}

// version is overridden at link time by the Makefile.
var version = "dev"

func logLevel() slog.Level {
	switch os.Getenv("KRUN_TEE_LOG") {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newFlagSet returns a FlagSet that reports errors instead of exiting, with a
// usage line naming the verb.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("krun-tee "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: krun-tee %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
