package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"github.com/krun-tee/krun-tee/internal/pemfile"
)

// Config is the server configuration file (JSON). Example:
//
//	{
//	  "listen": "0.0.0.0:8443",
//	  "admin_listen": "127.0.0.1:8444",           // optional: admin API and /metrics only here, not on listen
//	  "tls_cert": "/etc/krun-tee-kbs/tls.crt",   // chain incl. the CA guests pin
//	  "tls_key": "/etc/krun-tee-kbs/tls.key",
//	  "store": {"type": "bolt", "path": "/var/lib/krun-tee-kbs/kbs.db"},
//	  //   or {"type": "postgres", "dsn_env": "KBS_PG_DSN"} / {"type":"postgres","dsn":"postgres://..."}
//	  "kek_file": "/etc/krun-tee-kbs/kek",        // 32 bytes raw or 64 hex chars
//	  //   or "kek_env": "KRUN_TEE_KBS_KEK"
//	  "admin_public_key": "/etc/krun-tee-kbs/admin.pub",  // omit: admin API refused
//	  "token_key_file": "",                       // optional PKCS#8 PEM; default: shared key in the store
//	  "emulated_roots": [],                       // emulated root dirs to trust (CI/dev only)
//	  "trusted_roots": [],                        // root fingerprints to trust (default: all of the above)
//	  "collateral": {"fetch": true, "check_revocations": true},  // needed for hardware evidence
//	  //   TDX offline: {"tdx_pcs_bundle": "/etc/krun-tee-kbs/pcs.json", "check_revocations": true}
//	  "session_lifetime": "5m",
//	  "audit_retention": "2160h",                  // audit entries older than this are deleted (default 90 days)
//	  "max_body_bytes": 1048576
//	}
type Config struct {
	Listen         string      `json:"listen"`
	AdminListen    string      `json:"admin_listen,omitempty"`
	TLSCert        string      `json:"tls_cert,omitempty"`
	TLSKey         string      `json:"tls_key,omitempty"`
	Store          StoreConfig `json:"store"`
	KEKFile        string      `json:"kek_file,omitempty"`
	KEKEnv         string      `json:"kek_env,omitempty"`
	AdminPublicKey string      `json:"admin_public_key,omitempty"`
	TokenKeyFile   string      `json:"token_key_file,omitempty"`
	EmulatedRoots  []string    `json:"emulated_roots,omitempty"`
	// TrustedRoots restricts the roots (AMD ARKs, Intel roots, emulated
	// roots) to those with these fingerprints (hex SHA-256 of the DER).
	TrustedRoots    []string         `json:"trusted_roots,omitempty"`
	Collateral      CollateralConfig `json:"collateral,omitzero"`
	SessionLifetime Duration         `json:"session_lifetime,omitempty"`
	AuditRetention  Duration         `json:"audit_retention,omitempty"`
	MaxBodyBytes    int64            `json:"max_body_bytes,omitempty"`
}

// StoreConfig selects the storage backend.
type StoreConfig struct {
	Type   string `json:"type"` // "bolt" or "postgres"
	Path   string `json:"path,omitempty"`
	DSN    string `json:"dsn,omitempty"`
	DSNEnv string `json:"dsn_env,omitempty"`
}

// CollateralConfig says how the verifier gets collateral for hardware
// evidence (certificates, CRLs, TDX TCB info and QE identity). Without
// fetching and revocation checks, hardware evidence is refused; emulated
// roots carry their own collateral.
type CollateralConfig struct {
	// Fetch downloads missing collateral from AMD KDS and Intel PCS,
	// caching answers for TTL.
	Fetch bool `json:"fetch,omitempty"`
	// CheckRevocations checks the certificate revocation lists.
	CheckRevocations bool `json:"check_revocations,omitempty"`
	// TDXPCSBundle is a file of stored Intel PCS answers (TCB info, QE
	// identity, CRLs by URL; the pcs.json format) that Intel roots use
	// offline, before fetching.
	TDXPCSBundle string `json:"tdx_pcs_bundle,omitempty"`
	// Timeout bounds each download (default 20 s); TTL is how long an
	// answer is reused (default 1 h).
	Timeout Duration `json:"timeout,omitempty"`
	TTL     Duration `json:"ttl,omitempty"`
}

// Duration is a time.Duration written as a Go duration string in JSON.
type Duration time.Duration

// UnmarshalJSON parses "5m", "30s", ...
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"5m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// LoadConfig reads and validates a configuration file; unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := boundedfile.Read(path, maxSmallFile)
	if err != nil {
		return nil, fmt.Errorf("kbs: config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("kbs: config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("kbs: config %s: %w", path, err)
	}
	return &c, nil
}

// Validate checks the configuration for mistakes that would otherwise show
// up only at the first request.
func (c *Config) Validate() error {
	if c.Listen == "" {
		return errors.New("listen is required")
	}
	if c.AdminListen != "" && c.AdminListen == c.Listen {
		return errors.New("admin_listen must differ from listen")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert and tls_key go together")
	}
	switch c.Store.Type {
	case "bolt":
		if c.Store.Path == "" {
			return errors.New("store.path is required for bolt")
		}
	case "postgres":
		if c.Store.DSN == "" && c.Store.DSNEnv == "" {
			return errors.New("store.dsn or store.dsn_env is required for postgres")
		}
	default:
		return fmt.Errorf("store.type %q: want bolt or postgres", c.Store.Type)
	}
	if c.KEKFile == "" && c.KEKEnv == "" {
		return errors.New("kek_file or kek_env is required (secrets are encrypted at rest)")
	}
	if c.AuditRetention < 0 || (c.AuditRetention > 0 && time.Duration(c.AuditRetention) < time.Hour) {
		return errors.New("audit_retention: want at least 1h (0: the default, 90 days)")
	}
	if c.Collateral.CheckRevocations && !c.Collateral.Fetch && c.Collateral.TDXPCSBundle == "" {
		return errors.New("collateral.check_revocations needs collateral.fetch or collateral.tdx_pcs_bundle (CRLs come from one of them)")
	}
	if c.Collateral.Timeout < 0 || c.Collateral.TTL < 0 {
		return errors.New("collateral: timeout and ttl must not be negative")
	}
	if c.MaxBodyBytes < 0 || c.MaxBodyBytes > 16<<20 {
		return errors.New("max_body_bytes: want 0..16777216")
	}
	return nil
}

// OpenStore opens the configured backend.
func (c *Config) OpenStore(ctx context.Context) (Store, error) {
	if c.Store.Type == "bolt" {
		return OpenBoltStore(c.Store.Path)
	}
	dsn := c.Store.DSN
	if c.Store.DSNEnv != "" {
		v, ok := os.LookupEnv(c.Store.DSNEnv)
		if !ok {
			return nil, fmt.Errorf("kbs: store: environment variable %s not set", c.Store.DSNEnv)
		}
		dsn = v
	}
	return OpenPostgresStore(ctx, dsn)
}

// Roots returns AMD's and Intel's roots plus the configured emulated roots.
func (c *Config) Roots(log *slog.Logger) (*attest.Roots, error) {
	roots := attest.DefaultRoots()
	for _, dir := range c.EmulatedRoots {
		emu, err := attest.LoadEmulatedRoots(dir)
		if err != nil {
			return nil, fmt.Errorf("kbs: emulated root %s: %w", dir, err)
		}
		log.Warn("KBS TRUSTS AN EMULATED ROOT: evidence from a software TEE will verify; never do this in production", "dir", dir)
		roots = roots.With(emu)
	}
	if c.Collateral.TDXPCSBundle != "" {
		pcs, err := attest.LoadPCSBundle(c.Collateral.TDXPCSBundle)
		if err != nil {
			return nil, fmt.Errorf("kbs: collateral: %w", err)
		}
		roots = roots.WithPCSBundle(pcs)
	}
	if len(c.TrustedRoots) > 0 {
		only, err := roots.Only(c.TrustedRoots...)
		if err != nil {
			return nil, fmt.Errorf("kbs: trusted_roots: %w", err)
		}
		roots = only
	}
	return roots, nil
}

// Run starts a server from cfg and serves until ctx ends, then shuts down
// gracefully. ready, if not nil, receives the bound address once listening.
func Run(ctx context.Context, cfg *Config, log *slog.Logger, ready func(addr net.Addr)) error {
	if log == nil {
		log = slog.Default()
	}
	opts, err := cfg.serverOptions(log)
	if err != nil {
		return err
	}
	store, err := cfg.OpenStore(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	opts.Store = store
	srv, err := NewServer(ctx, opts)
	if err != nil {
		return err
	}
	handler := srv.Handler()
	if cfg.AdminListen != "" {
		handler = srv.PublicHandler()
	}
	ln, hs, err := cfg.listen(cfg.Listen, handler, log)
	if err != nil {
		return err
	}
	servers := []*http.Server{hs}
	errc := make(chan error, 2)
	if cfg.AdminListen != "" {
		aln, ahs, err := cfg.listen(cfg.AdminListen, srv.AdminHandler(), log)
		if err != nil {
			ln.Close()
			return err
		}
		log.Info("kbs admin API and metrics listening", "addr", aln.Addr().String())
		servers = append(servers, ahs)
		go func() { errc <- ahs.Serve(aln) }()
	}
	log.Info("kbs listening", "addr", ln.Addr().String(), "tls", cfg.TLSCert != "", "store", cfg.Store.Type,
		"admin", opts.Admin != nil, "emulated_roots", len(cfg.EmulatedRoots))
	if ready != nil {
		ready(ln.Addr())
	}
	retention := time.Duration(cfg.AuditRetention)
	if retention == 0 {
		retention = DefaultAuditRetention
	}
	go sweepLoop(ctx, srv, log, retention)
	go func() { errc <- hs.Serve(ln) }()
	var serveErr error
	select {
	case err := <-errc:
		serveErr = fmt.Errorf("kbs: serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("kbs shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range servers {
		if err := h.Shutdown(sctx); err != nil && serveErr == nil {
			serveErr = fmt.Errorf("kbs: shutdown: %w", err)
		}
	}
	return serveErr
}

// serverOptions loads what the configuration names (the key-encryption key,
// trusted roots, admin public key, token key) into server options without a
// store.
func (c *Config) serverOptions(log *slog.Logger) (ServerOptions, error) {
	kek, err := LoadKEK(c.KEKFile, c.KEKEnv)
	if err != nil {
		return ServerOptions{}, err
	}
	sealer, err := NewSealer(kek)
	clear(kek)
	if err != nil {
		return ServerOptions{}, err
	}
	roots, err := c.Roots(log)
	if err != nil {
		return ServerOptions{}, err
	}
	av := &AttestVerifier{Roots: roots, CheckRevocations: c.Collateral.CheckRevocations}
	if c.Collateral.Fetch {
		av.Fetcher = attest.NewFetcher(time.Duration(c.Collateral.Timeout))
		av.Fetcher.TTL = time.Duration(c.Collateral.TTL)
	} else {
		log.Warn("kbs: collateral fetching off; hardware evidence will be refused (only emulated roots carry their own collateral)")
	}
	o := ServerOptions{Sealer: sealer, Verifier: av,
		SessionLifetime: time.Duration(c.SessionLifetime), MaxBody: c.MaxBodyBytes, Logger: log}
	if c.AdminPublicKey != "" {
		if o.Admin, err = LoadAdminPublicKey(c.AdminPublicKey); err != nil {
			return ServerOptions{}, err
		}
	} else {
		log.Warn("kbs: no admin_public_key configured; every admin call will be refused")
	}
	if c.TokenKeyFile != "" {
		if o.TokenKey, err = pemfile.Read(c.TokenKeyFile, "PRIVATE KEY"); err != nil {
			return ServerOptions{}, fmt.Errorf("kbs: token key: %w", err)
		}
	}
	return o, nil
}

// listen opens a listener on addr (TLS when a certificate is configured)
// and the HTTP server for handler, with timeouts that bound slow clients.
func (c *Config) listen(addr string, handler http.Handler, log *slog.Logger) (net.Listener, *http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("kbs: listen: %w", err)
	}
	hs := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if c.TLSCert == "" {
		log.Warn("kbs: serving plain HTTP; use only on loopback or behind a vsock proxy with TLS inside", "listen", ln.Addr().String())
		return ln, hs, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("kbs: tls: %w", err)
	}
	hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	return tls.NewListener(ln, hs.TLSConfig), hs, nil
}

// DefaultAuditRetention is how long audit entries are kept by default.
const DefaultAuditRetention = 90 * 24 * time.Hour

// sweepLoop expires sessions and used admin token ids and prunes the audit
// log past its retention, every minute.
func sweepLoop(ctx context.Context, s *Server, log *slog.Logger, retention time.Duration) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.SweepSessions(ctx); err != nil {
				log.Warn("kbs session sweep failed", "err", err)
			} else if n > 0 {
				log.Debug("kbs swept sessions", "count", n)
			}
			if _, err := s.sweepAdminTokenIDs(ctx); err != nil {
				log.Warn("kbs admin token id sweep failed", "err", err)
			}
			if n, err := s.store.PruneAudit(ctx, s.now().Add(-retention)); err != nil {
				log.Warn("kbs audit prune failed", "err", err)
			} else if n > 0 {
				log.Info("kbs pruned audit entries past retention", "count", n, "retention", retention.String())
			}
		}
	}
}
