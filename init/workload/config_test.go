package workload

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in, err string
	}{
		{`{"Cmd":["/bin/echo","hi"],"Env":["A=1"],"WorkingDir":"/tmp","User":"1000:1000"}`, ""},
		{`{"Entrypoint":["/bin/sh","-c"],"Cmd":["exit 3"]}`, ""},
		{`{}`, "no command"},
		{`{"Cmd":[""]}`, "no command"},
		{`{"Cmd":["x"],"Env":["NOEQUALS"]}`, "not KEY=VALUE"},
		{`{"Cmd":["x"],"Env":["=v"]}`, "not KEY=VALUE"},
		{`{"Cmd":["x"],"WorkingDir":"rel"}`, "not absolute"},
		{`{"Cmd":["x"],"User":"root"}`, "uid must be numeric"},
		{`{"Cmd":["x"],"User":"1:g"}`, "gid must be numeric"},
		{`{"Cmd":["x"],"Bogus":1}`, "unknown field"},
		{`{"Cmd":["x"]} {}`, "trailing data"},
		{`[`, "config"},
		{`{"Cmd":["x"],"Env":["` + strings.Repeat("a", maxSize) + `=1"]}`, "more than"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.in))
		if c.err == "" && err != nil {
			t.Errorf("%.40s: unexpected %v", c.in, err)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%.40s: got %v, want %q", c.in, err, c.err)
		}
	}
}

func TestArgvAndUser(t *testing.T) {
	c, err := Parse([]byte(`{"Entrypoint":["/bin/sh","-c"],"Cmd":["exit 3"],"User":"7"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Argv(), " "); got != "/bin/sh -c exit 3" {
		t.Fatalf("argv %q", got)
	}
	if u, g, _ := c.UIDGID(); u != 7 || g != 7 {
		t.Fatalf("uid %d gid %d", u, g)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := Parse(out); err != nil || back.Argv()[2] != "exit 3" {
		t.Fatalf("round trip %v %v", back, err)
	}
}
