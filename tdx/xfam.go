package tdx

// DefaultXFAM enables x87, SSE, AVX, AVX-512 and PKRU state, a common TD
// configuration: the XFAM krun-tee launches TDs with (and the emulated TDX
// module reports when its caller leaves XFAM zero).
const DefaultXFAM = 0x00000000000000e7
