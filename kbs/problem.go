package kbs

import (
	"encoding/json"
	"net/http"
)

// ProblemTypePrefix prefixes the RFC 7807 "type" of every error the server returns.
const ProblemTypePrefix = "https://github.com/krun-tee/krun-tee/kbs/errors/"

// Problem is an RFC 7807 problem-details body.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// Problem kinds. Details sent to clients are fixed strings: the real reason is
// logged and audited, never returned.
const (
	kindAttestationFailed = "AttestationFailed"
	kindUnauthorized      = "Unauthorized"
	kindBadRequest        = "BadRequest"
	kindTooLarge          = "PayloadTooLarge"
	kindNotFound          = "NotFound"
	kindMethod            = "MethodNotAllowed"
	kindInternal          = "InternalError"
)

func writeProblem(w http.ResponseWriter, status int, kind, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: ProblemTypePrefix + kind, Title: http.StatusText(status), Status: status, Detail: detail})
}
