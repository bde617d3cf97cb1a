package main

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/krun-tee/krun-tee/init/workload"
	"golang.org/x/sys/unix"
)

// defaultPath is used to find the command, and added to its environment,
// when the workload config sets no PATH (as OCI runtimes conventionally do).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execSpec is everything needed to start the workload.
type execSpec struct {
	Path string   // resolved executable
	Argv []string // argv, argv[0] as configured
	Env  []string
	Dir  string
	UID  uint32
	GID  uint32
}

// statFunc is os.Stat, replaceable in tests.
type statFunc func(name string) (fs.FileInfo, error)

// buildExecSpec turns the workload config into an execSpec, resolving the
// command through PATH. The error's status (via statusOf) is 127 when the
// command does not exist and 126 when it exists but cannot be executed.
func buildExecSpec(c *workload.Config, stat statFunc) (*execSpec, error) {
	argv := c.Argv()
	if len(argv) == 0 || argv[0] == "" {
		return nil, fail("config", statusConfig, fmt.Errorf("no command"))
	}
	uid, gid, err := c.UIDGID()
	if err != nil {
		return nil, fail("config", statusConfig, err)
	}
	env := append([]string(nil), c.Env...)
	pathVar, ok := lookupEnv(env, "PATH")
	if !ok {
		pathVar = defaultPath
		env = append(env, "PATH="+defaultPath)
	}
	dir := c.WorkingDir
	if dir == "" {
		dir = "/"
	}
	// Checked here because exec reports a missing working directory as
	// ENOENT, which would otherwise read as "command not found" (127).
	if fi, err := stat(dir); err != nil || !fi.IsDir() {
		if err == nil {
			err = unix.ENOTDIR
		}
		return nil, fail("exec", statusExec, fmt.Errorf("working directory %s: %w", dir, err))
	}
	exe, err := lookPath(argv[0], pathVar, dir, stat)
	if err != nil {
		return nil, fail("exec", execErrorStatus(err), fmt.Errorf("%s: %w", argv[0], err))
	}
	return &execSpec{Path: exe, Argv: argv, Env: env, Dir: dir, UID: uid, GID: gid}, nil
}

// lookupEnv returns the value of the last KEY= entry, as getenv does with
// duplicates in a hand-built environment.
func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// lookPath finds cmd like execvp: a name containing a slash is used as is
// (relative to dir), otherwise each PATH entry is tried in order. It returns
// ENOENT when nothing matches and EACCES when only non-executable candidates
// exist, so the caller can tell 127 from 126.
func lookPath(cmd, pathVar, dir string, stat statFunc) (string, error) {
	if strings.Contains(cmd, "/") {
		p := cmd
		if !path.IsAbs(p) {
			p = path.Join(dir, p)
		}
		return p, checkExecutable(p, stat)
	}
	sawNonExec := false
	for _, d := range strings.Split(pathVar, ":") {
		if d == "" {
			d = "."
		}
		if !path.IsAbs(d) {
			d = path.Join(dir, d)
		}
		p := path.Join(d, cmd)
		switch err := checkExecutable(p, stat); {
		case err == nil:
			return p, nil
		case err == unix.EACCES:
			sawNonExec = true
		}
	}
	if sawNonExec {
		return "", unix.EACCES
	}
	return "", unix.ENOENT
}

// checkExecutable reports whether p is a regular file with an execute bit.
// The kernel makes the final decision at exec time; this only classifies the
// common failures early and with a clear message.
func checkExecutable(p string, stat statFunc) error {
	fi, err := stat(p)
	if err != nil {
		if os.IsNotExist(err) {
			return unix.ENOENT
		}
		if os.IsPermission(err) {
			return unix.EACCES
		}
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return unix.EACCES
	}
	return nil
}
