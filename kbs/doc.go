// Package kbs is the guest side of krun-tee's key broker protocol: the
// Trustee KBS attestation protocol (RCAR, version 0.4.0) wire types and
// their parsers, the client the in-guest init uses to fetch its disk key, the
// TEE key that resources are wrapped to (JWK/JWE), RFC 7807 problem details
// and the vsock dialer.
//
// The init is part of the launch measurement, so this package links only what
// a guest needs; the server (handlers, stores, policy, admin authentication,
// tokens, sealing, metrics) lives in kbs/server, which the init must never
// import (init/deps_test.go enforces it).
//
// Protocol summary (see DESIGN 2.4/2.5):
//
//	POST /kbs/v0/auth      Request     -> Challenge + cookie kbs-session-id
//	POST /kbs/v0/attest    Attestation -> {"token": JWT}      (cookie)
//	GET  /kbs/v0/resource/<repo>/<type>/<tag> -> flattened JWE (cookie or Bearer token)
package kbs
