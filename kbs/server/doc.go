// Package server is krun-tee's key broker server: the Trustee KBS protocol
// handlers (wire types from package kbs), the storage behind them (bbolt or
// PostgreSQL, sealed with a key-encryption key), admin authentication and the
// admin client, attestation tokens, metrics, the attestation verifier and the
// resource policy that decides which verified attestation may receive which
// secret. It runs on the host or in a cluster, never in the guest.
//
// A resource is released only when a fresh attestation, verified against the
// trusted roots, satisfies the reference values of a workload that lists that
// resource. Every refusal looks the same to the caller (401) whatever the
// reason; the reason goes to the audit log.
package server
