package main

import "testing"

func TestKernelMessagesWanted(t *testing.T) {
	for cmdline, want := range map[string]bool{
		"console=ttyS0 quiet":                 false,
		"console=ttyS0 quiet debug":           true,
		"ignore_loglevel console=ttyS0":       true,
		"quiet loglevel=7":                    true,
		"krun.debug=1 xloglevel=7 debugfs=on": false,
		"":                                    false,
	} {
		if got := kernelMessagesWanted(cmdline); got != want {
			t.Errorf("kernelMessagesWanted(%q) = %v, want %v", cmdline, got, want)
		}
	}
}
