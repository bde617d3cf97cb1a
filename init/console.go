package main

import "strings"

// kernelMessagesWanted reports whether the (measured) kernel command line
// asks for kernel messages on the console while the workload runs: the
// kernel's own `debug`, `ignore_loglevel` or an explicit `loglevel=`.
// Otherwise init lowers the console log level before the workload starts,
// so the console is the workload's: a kernel message printed by another
// vCPU can no longer land in the middle of the workload's output line.
func kernelMessagesWanted(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == "debug" || f == "ignore_loglevel" || strings.HasPrefix(f, "loglevel=") {
			return true
		}
	}
	return false
}

// consoleLogLevelQuiet is the console log level while the workload runs:
// only KERN_EMERG (a panic's last words) still reaches the console.
const consoleLogLevelQuiet = "1"

// consoleLogLevelErrors is the level on a dm-verity root: KERN_ERR and
// worse still reach the console, so a block that fails verification while
// the workload runs is named there.
const consoleLogLevelErrors = "4"
