package sev

// DefaultPolicy is the SNP guest policy krun-tee launches with, and the one
// the emulated PSP reports when its caller leaves the policy zero: SMT
// allowed, the must-be-one bit 17 set, debug and migration agent off.
const DefaultPolicy = 0x30000
