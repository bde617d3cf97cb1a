package server

import (
	"encoding/json"
	"net/http"

	"github.com/krun-tee/krun-tee/kbs"
)

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
	_ = json.NewEncoder(w).Encode(kbs.Problem{Type: kbs.ProblemTypePrefix + kind, Title: http.StatusText(status), Status: status, Detail: detail})
}
