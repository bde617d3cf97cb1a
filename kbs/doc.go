// Package kbs is krun-tee's key broker: a server speaking the Trustee KBS
// attestation protocol (RCAR, version 0.4.0), the client the in-guest init uses
// to fetch its disk key, the storage behind the server (bbolt or PostgreSQL),
// admin authentication and the resource policy that decides which verified
// attestation may receive which secret.
//
// Protocol summary (see DESIGN 2.4/2.5):
//
//	POST /kbs/v0/auth      Request     -> Challenge + cookie kbs-session-id
//	POST /kbs/v0/attest    Attestation -> {"token": JWT}      (cookie)
//	GET  /kbs/v0/resource/<repo>/<type>/<tag> -> flattened JWE (cookie or Bearer token)
//
// A resource is released only when a fresh attestation, verified against the
// trusted roots, satisfies the reference values of a workload that lists that
// resource. Every refusal looks the same to the caller (401) whatever the
// reason; the reason goes to the audit log.
package kbs
