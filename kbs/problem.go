package kbs

// ProblemTypePrefix prefixes the RFC 7807 "type" of every error the server returns.
const ProblemTypePrefix = "https://github.com/krun-tee/krun-tee/kbs/errors/"

// Problem is an RFC 7807 problem-details body.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}
