package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/krun-tee/krun-tee/attest"
	"github.com/krun-tee/krun-tee/emulated/psp"
	"github.com/krun-tee/krun-tee/emulated/tdxmodule"
	"github.com/krun-tee/krun-tee/internal/pemfile"
)

func randRead(b []byte) (int, error) { return rand.Read(b) }

// ensureEmulatedRoot creates the emulated SNP (and TDX) roots in dir unless
// they exist, so `kbs serve --dev` and `run --tee emulated` can share them.
func ensureEmulatedRoot(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, attest.EmulatedSNPDir)); errors.Is(err, os.ErrNotExist) {
		if err := psp.GenerateRoot(dir); err != nil {
			return fmt.Errorf("kbs dev: %w", err)
		}
		slog.Warn("KBS DEV MODE: generated an emulated AMD root of trust", "dir", filepath.Join(dir, attest.EmulatedSNPDir))
	}
	if _, err := os.Stat(filepath.Join(dir, attest.EmulatedTDXDir)); errors.Is(err, os.ErrNotExist) {
		if err := tdxmodule.GenerateRoot(dir); err != nil {
			return fmt.Errorf("kbs dev: %w", err)
		}
		slog.Warn("KBS DEV MODE: generated an emulated Intel TDX root of trust", "dir", filepath.Join(dir, attest.EmulatedTDXDir))
	}
	return nil
}

// Files of the dev-mode TLS material in the state directory. ca.pem is what
// operators hand to `mkimage --kbs-ca` and `kbs admin --ca`; the CA key stays
// so the server certificate can be renewed without changing the pin.
const (
	devCAFile     = "ca.pem"
	devCAKeyFile  = "ca.key"
	devCertFile   = "tls.crt"
	devKeyFile    = "tls.key"
	devCALifetime = 10 * 365 * 24 * time.Hour
	// devCertLifetime is short enough that a leaked dev key expires, long
	// enough for any test or demo; an expired one is reissued at start.
	devCertLifetime = 90 * 24 * time.Hour
)

// devTLS is the dev KBS's TLS material on disk.
type devTLS struct {
	CAFile, CertFile, KeyFile string
	// Fingerprint is the lowercase hex SHA-256 of the CA certificate's DER,
	// the form of krun.kbs_ca and of the image's launch config.
	Fingerprint string
}

// ensureDevTLS returns the CA and server certificate in dir, creating what is
// missing: an ECDSA P-256 CA (kept across restarts, so images that pin it
// keep working) and a server certificate for 127.0.0.1, ::1, localhost and
// extraHost, reissued when absent, expiring within a day, or lacking
// extraHost.
func ensureDevTLS(dir, extraHost string, now time.Time) (*devTLS, error) {
	caCert, caKey, err := loadOrCreateDevCA(dir, now)
	if err != nil {
		return nil, fmt.Errorf("kbs dev: tls ca: %w", err)
	}
	t := &devTLS{CAFile: filepath.Join(dir, devCAFile), CertFile: filepath.Join(dir, devCertFile), KeyFile: filepath.Join(dir, devKeyFile)}
	sum := sha256.Sum256(caCert.Raw)
	t.Fingerprint = hex.EncodeToString(sum[:])
	if devCertUsable(t.CertFile, caCert, extraHost, now) {
		return t, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kbs dev: tls key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "krun-tee dev KBS", Organization: []string{"krun-tee development"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(devCertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if extraHost != "" && extraHost != "localhost" {
		if ip := net.ParseIP(extraHost); ip != nil {
			if !ip.Equal(net.IPv4(127, 0, 0, 1)) && !ip.Equal(net.IPv6loopback) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, extraHost)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("kbs dev: tls certificate: %w", err)
	}
	if err := writePrivateKeyPEM(t.KeyFile, key); err != nil {
		return nil, fmt.Errorf("kbs dev: %w", err)
	}
	// The chain the server presents: leaf then CA, so a client pinning the CA
	// finds it in the handshake.
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})...)
	if err := os.WriteFile(t.CertFile, chain, 0o644); err != nil {
		return nil, fmt.Errorf("kbs dev: %w", err)
	}
	return t, nil
}

func loadOrCreateDevCA(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, devCAFile), filepath.Join(dir, devCAKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	if certErr == nil && keyErr == nil {
		return loadDevCA(certPath, keyPath)
	}
	if certErr == nil || keyErr == nil {
		return nil, nil, fmt.Errorf("%s and %s must both exist or both be absent", certPath, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "krun-tee dev KBS CA", Organization: []string{"krun-tee development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writePrivateKeyPEM(keyPath, key); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func loadDevCA(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := pemfile.ReadCertificate(certPath)
	if err != nil {
		return nil, nil, err
	}
	k, err := pemfile.ReadPrivateKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s is not the ECDSA key of %s", keyPath, certPath)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	return cert, key, nil
}

// devCertUsable reports whether the server certificate at path was issued by
// ca, is valid for more than a day and covers extraHost.
func devCertUsable(path string, ca *x509.Certificate, extraHost string, now time.Time) bool {
	chain, err := pemfile.ReadCertificateChain(path)
	if err != nil {
		return false
	}
	cert := chain[0]
	if cert.CheckSignatureFrom(ca) != nil || now.Add(24*time.Hour).After(cert.NotAfter) {
		return false
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), devKeyFile)); err != nil {
		return false
	}
	return extraHost == "" || cert.VerifyHostname(extraHost) == nil
}

func writePrivateKeyPEM(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms; a fixed serial
		// would still make a valid (if less unique) certificate.
		return big.NewInt(1)
	}
	return n.Add(n, big.NewInt(1))
}
