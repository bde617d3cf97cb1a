// Package confidential is the in-guest init's confidential stage (DESIGN
// 2.3): when the kernel command line carries krun.* launch parameters, init
// attests to the KBS named there, receives the disk passphrase wrapped to an
// ephemeral guest-only key, unlocks the LUKS2 root in Go, maps it with
// dm-crypt and mounts it; init then switches into it as on the plain path.
//
// Every step that can fail returns an *Error carrying the step name printed
// on the console and the distinct exit status from package guestabi,
// so the host can say why a guest did not boot.
//
// The stage is written against small interfaces (KeyFetcher, Mapper, a
// mount function) so it runs in tests without being PID 1 or having a
// kernel: the system-facing pieces (vsock, /dev/mapper/control, mount(2))
// are passed in by init.
//
// Decisions:
//   - krun.tee=none is refused: without evidence no KBS that follows DESIGN
//     2.4 releases a key, and an unattested guest that still asked for one
//     would only hide a misconfiguration. Unpinned development mode
//     (krun.kbs_unpinned=1) relaxes the KBS identity check, never attestation.
//   - A wall clock before MinPlausibleTime fails the boot before any network
//     traffic: TLS certificate validity would be judged against a wrong time
//     (under KVM the guest reads the host's time through kvmclock).
//   - The passphrase and the volume key are zeroed as soon as they are no
//     longer needed (after Unlock, after the dm table is loaded with
//     DM_SECURE_DATA_FLAG), on success and on every failure path.
package confidential
