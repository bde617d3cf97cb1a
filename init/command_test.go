package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/krun-tee/krun-tee/init/workload"
)

// newTree makes a directory with bin/tool (executable), bin/data (not
// executable), bin/sub (a directory) and other/tool2 (executable).
func newTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"bin/tool", 0o755}, {"bin/data", 0o644}, {"other/tool2", 0o700}, {"other/data", 0o755}} {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "bin/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildExecSpec(t *testing.T) {
	dir := newTree(t)
	path := "PATH=" + dir + "/bin:" + dir + "/other"
	tests := []struct {
		name       string
		cfg        workload.Config
		want       *execSpec
		wantStatus int
	}{
		{
			name: "command found on PATH, entrypoint first",
			cfg:  workload.Config{Entrypoint: []string{"tool"}, Cmd: []string{"-x", "y"}, Env: []string{path, "A=1"}, WorkingDir: dir},
			want: &execSpec{Path: dir + "/bin/tool", Argv: []string{"tool", "-x", "y"}, Env: []string{path, "A=1"}, Dir: dir},
		},
		{
			name: "later PATH entry, uid and gid",
			cfg:  workload.Config{Cmd: []string{"tool2"}, Env: []string{path}, User: "1000:100"},
			want: &execSpec{Path: dir + "/other/tool2", Argv: []string{"tool2"}, Env: []string{path}, Dir: "/", UID: 1000, GID: 100},
		},
		{
			name: "non-executable earlier match is skipped",
			cfg:  workload.Config{Cmd: []string{"data"}, Env: []string{path}},
			want: &execSpec{Path: dir + "/other/data", Argv: []string{"data"}, Env: []string{path}, Dir: "/"},
		},
		{
			name: "absolute path, default PATH added to env",
			cfg:  workload.Config{Cmd: []string{dir + "/bin/tool"}, User: "5"},
			want: &execSpec{Path: dir + "/bin/tool", Argv: []string{dir + "/bin/tool"}, Env: []string{"PATH=" + defaultPath}, Dir: "/", UID: 5, GID: 5},
		},
		{
			name: "relative path resolves against the working directory",
			cfg:  workload.Config{Cmd: []string{"./bin/tool"}, WorkingDir: dir},
			want: &execSpec{Path: dir + "/bin/tool", Argv: []string{"./bin/tool"}, Env: []string{"PATH=" + defaultPath}, Dir: dir},
		},
		{name: "not found", cfg: workload.Config{Cmd: []string{"nosuch"}, Env: []string{path}}, wantStatus: statusNotFound},
		{name: "absolute not found", cfg: workload.Config{Cmd: []string{dir + "/nosuch"}}, wantStatus: statusNotFound},
		{name: "path through a file", cfg: workload.Config{Cmd: []string{dir + "/bin/tool/x"}}, wantStatus: statusNotFound},
		{name: "only non-executable", cfg: workload.Config{Cmd: []string{"data"}, Env: []string{"PATH=" + dir + "/bin"}}, wantStatus: statusNotExecutable},
		{name: "a directory", cfg: workload.Config{Cmd: []string{dir + "/bin/sub"}}, wantStatus: statusNotExecutable},
		{name: "missing working directory", cfg: workload.Config{Cmd: []string{"tool"}, Env: []string{path}, WorkingDir: dir + "/nosuch"}, wantStatus: statusExec},
		{name: "working directory is a file", cfg: workload.Config{Cmd: []string{"tool"}, Env: []string{path}, WorkingDir: dir + "/bin/tool"}, wantStatus: statusExec},
		{name: "no command", cfg: workload.Config{}, wantStatus: statusConfig},
		{name: "bad user", cfg: workload.Config{Cmd: []string{"tool"}, User: "root"}, wantStatus: statusConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := buildExecSpec(&tt.cfg, os.Stat)
			if tt.wantStatus != 0 {
				if err == nil {
					t.Fatalf("got %+v, want an error with status %d", got, tt.wantStatus)
				}
				if s := statusOf(err); s != tt.wantStatus {
					t.Fatalf("status = %d (%v), want %d", s, err, tt.wantStatus)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLookupEnvLastWins(t *testing.T) {
	v, ok := lookupEnv([]string{"PATH=/a", "X=1", "PATH=/b"}, "PATH")
	if !ok || v != "/b" {
		t.Errorf("lookupEnv = %q, %v; want /b, true", v, ok)
	}
	if _, ok := lookupEnv([]string{"PATHX=/a"}, "PATH"); ok {
		t.Error("lookupEnv matched a key prefix")
	}
}
