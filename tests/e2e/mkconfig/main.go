// Command mkconfig writes a /.krun_config.json for the harness's test disk
// images through package init/workload, so the file always matches what the
// init parses.
//
//	mkconfig -o DIR/.krun_config.json [-env K=V]... [-workdir /] [-user uid[:gid]] -- cmd args...
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/krun-tee/krun-tee/init/workload"
)

type list []string

func (l *list) String() string     { return fmt.Sprint(*l) }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	out := flag.String("o", "", "output file (required)")
	workdir := flag.String("workdir", "", "working directory")
	user := flag.String("user", "", "uid or uid:gid")
	var env list
	flag.Var(&env, "env", "environment entry KEY=VALUE (repeatable)")
	flag.Parse()
	cfg := &workload.Config{Cmd: flag.Args(), Env: env, WorkingDir: *workdir, User: *user}
	if *out == "" {
		fmt.Fprintln(os.Stderr, "mkconfig: -o is required")
		os.Exit(2)
	}
	data, err := cfg.Marshal()
	if err == nil {
		// Round-trip through the parser the init uses.
		_, err = workload.Parse(data)
	}
	if err == nil {
		err = os.WriteFile(*out, append(data, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkconfig:", err)
		os.Exit(1)
	}
}
