package server

import (
	"strings"
	"testing"
)

func TestWorkloadValidate(t *testing.T) {
	m := strings.Repeat("AB", 48)
	good := func() *Workload {
		return &Workload{ID: "wl-1", TEE: "snp", Measurements: []string{m}, Resources: []string{"/r/t/x/"}}
	}
	w := good()
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	if w.Measurements[0] != strings.ToLower(m) || w.Resources[0] != "r/t/x" {
		t.Fatalf("not canonicalised: %+v", w)
	}
	bad := map[string]func(*Workload){
		"id":            func(w *Workload) { w.ID = "-x" },
		"colon id":      func(w *Workload) { w.ID = "team:web" }, // mkimage refuses it, so the KBS does too
		"tee":           func(w *Workload) { w.TEE = "sample" },
		"no meas":       func(w *Workload) { w.Measurements = nil },
		"short meas":    func(w *Workload) { w.Measurements = []string{"abcd"} },
		"rtmr on snp":   func(w *Workload) { w.RTMRs = [][]string{{"", "", "", ""}} },
		"tcb len":       func(w *Workload) { w.MinTCB = []int{1, 2} },
		"tcb range":     func(w *Workload) { w.MinTCB = []int{1, 2, 3, 300} },
		"host data":     func(w *Workload) { w.HostData = "00" },
		"no resources":  func(w *Workload) { w.Resources = nil },
		"bad resource":  func(w *Workload) { w.Resources = []string{"a/b"} },
		"dotdot":        func(w *Workload) { w.Resources = []string{"../b/c"} },
		"tdx rtmr size": func(w *Workload) { w.TEE = "tdx"; w.RTMRs = [][]string{{"00", "", "", ""}} },
	}
	for name, mut := range bad {
		w := good()
		mut(w)
		if err := w.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWorkloadMatch(t *testing.T) {
	m1, m2 := strings.Repeat("11", 48), strings.Repeat("22", 48)
	hd := strings.Repeat("33", 32)
	w := &Workload{ID: "w", TEE: "snp", Measurements: []string{m1, m2}, MinTCB: []int{3, 0, 8, 100}, HostData: hd,
		Resources: []string{"a/b/c"}, AllowEmulated: true}
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	ok := func() *Claims {
		return &Claims{TEE: "snp", Measurement: strings.ToUpper(m2), HostData: hd, TCB: []int{3, 1, 8, 200}, Emulated: true}
	}
	if err := w.Match(ok()); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*Claims){
		"tee":         func(c *Claims) { c.TEE = "tdx" },
		"debug":       func(c *Claims) { c.Debug = true },
		"measurement": func(c *Claims) { c.Measurement = strings.Repeat("44", 48) },
		"host data":   func(c *Claims) { c.HostData = strings.Repeat("00", 32) },
		"tcb low":     func(c *Claims) { c.TCB = []int{3, 1, 7, 200} },
		"tcb short":   func(c *Claims) { c.TCB = []int{3} },
	}
	for name, mut := range cases {
		c := ok()
		mut(c)
		if err := w.Match(c); err == nil {
			t.Errorf("%s: matched", name)
		}
	}
	w.AllowEmulated = false
	if err := w.Match(ok()); err == nil || !strings.Contains(err.Error(), "emulated") {
		t.Fatalf("emulated claims matched a hardware-only workload: %v", err)
	}
	if err := w.Match(nil); err == nil {
		t.Fatal("nil claims matched")
	}
}

func TestParseTCB(t *testing.T) {
	if v, err := ParseTCB("3, 0,14,209"); err != nil || len(v) != 4 || v[3] != 209 {
		t.Fatalf("%v %v", v, err)
	}
	for _, s := range []string{"1,x", "256", "3abc", "1,,2", strings.Repeat("1,", 17) + "1"} {
		if _, err := ParseTCB(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}
