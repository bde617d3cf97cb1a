package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/kbs"
)

// maxAdminResponse bounds an admin answer (a workload list or an audit page).
const maxAdminResponse = 1 << 20

// AdminClient calls the KBS admin API with short-lived signed tokens.
type AdminClient struct {
	// URL is the KBS base URL.
	URL string
	// Signer mints the bearer tokens.
	Signer *AdminSigner
	// Subject names the operator in the audit log.
	Subject string
	// HTTP is the client to use; nil: a client with a 30 s timeout.
	HTTP *http.Client
	// Now overrides the clock used for token times (tests).
	Now func() time.Time
}

func (a *AdminClient) call(ctx context.Context, method, path string, body []byte, contentType string, out any) error {
	base, err := url.Parse(a.URL)
	if err != nil {
		return fmt.Errorf("kbs admin: url: %w", err)
	}
	if err := checkAdminURL(base); err != nil {
		return err
	}
	p, query, _ := strings.Cut(path, "?")
	u := base.JoinPath(p)
	u.RawQuery = query
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	// The token is bound to the unescaped path relative to the KBS root, the
	// form the server sees after any path-prefix-stripping proxy.
	plain, err := url.PathUnescape(p)
	if err != nil {
		return fmt.Errorf("kbs admin: path %q: %w", p, err)
	}
	tok, err := a.Signer.Token(a.Subject, RequestBinding(method, plain), body, now())
	if err != nil {
		return fmt.Errorf("kbs admin: token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("kbs admin: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	hc := a.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("kbs admin: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse))
	if err != nil {
		return fmt.Errorf("kbs admin: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		pe := &kbs.ProblemError{Op: "admin " + method + " " + path, Status: resp.StatusCode}
		_ = json.Unmarshal(data, &pe.Problem)
		return pe
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("kbs admin: %s %s: answer: %w", method, path, err)
		}
	}
	return nil
}

// checkAdminURL refuses admin URLs whose traffic others could read: admin
// tokens and secrets travel over https, or over plain http to loopback only.
func checkAdminURL(u *url.URL) error {
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		h := u.Hostname()
		if h == "localhost" {
			return nil
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("kbs admin: url %s: plain http is allowed only to loopback; use https", u.Redacted())
	}
	return fmt.Errorf("kbs admin: url %s: scheme %q, want https", u.Redacted(), u.Scheme)
}

// SetResource stores a secret under path ("repo/type/tag").
func (a *AdminClient) SetResource(ctx context.Context, path string, secret []byte) error {
	canon, err := kbs.ParseResourcePath(path)
	if err != nil {
		return err
	}
	return a.call(ctx, http.MethodPut, "/kbs/v0/resource/"+canon, secret, "application/octet-stream", nil)
}

// DeleteResource removes a secret.
func (a *AdminClient) DeleteResource(ctx context.Context, path string) error {
	canon, err := kbs.ParseResourcePath(path)
	if err != nil {
		return err
	}
	return a.call(ctx, http.MethodDelete, "/kbs/v0/resource/"+canon, nil, "", nil)
}

// Register creates or replaces a workload's reference values.
func (a *AdminClient) Register(ctx context.Context, w *Workload) (*Workload, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	var out Workload
	if err := a.call(ctx, http.MethodPut, "/kbs/v0/admin/workload/"+url.PathEscape(w.ID), body, "application/json", &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Unregister deletes a workload.
func (a *AdminClient) Unregister(ctx context.Context, id string) error {
	return a.call(ctx, http.MethodDelete, "/kbs/v0/admin/workload/"+url.PathEscape(id), nil, "", nil)
}

// Workloads lists the registered workloads.
func (a *AdminClient) Workloads(ctx context.Context) ([]*Workload, error) {
	var out struct {
		Workloads []*Workload `json:"workloads"`
	}
	err := a.call(ctx, http.MethodGet, "/kbs/v0/admin/workloads", nil, "", &out)
	return out.Workloads, err
}

// Resources lists the paths of stored resources (never their values).
func (a *AdminClient) Resources(ctx context.Context) ([]string, error) {
	var out struct {
		Resources []string `json:"resources"`
	}
	err := a.call(ctx, http.MethodGet, "/kbs/v0/admin/resources", nil, "", &out)
	return out.Resources, err
}

// Audit returns up to limit audit entries with ID > after.
func (a *AdminClient) Audit(ctx context.Context, after int64, limit int) ([]AuditEntry, error) {
	var out struct {
		Entries []AuditEntry `json:"entries"`
	}
	err := a.call(ctx, http.MethodGet, "/kbs/v0/admin/audit?after="+strconv.FormatInt(after, 10)+"&limit="+strconv.Itoa(limit), nil, "", &out)
	return out.Entries, err
}
