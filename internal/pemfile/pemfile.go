// Package pemfile decodes PEM certificates and PKCS#8 private keys strictly:
// a file that should hold one block must hold exactly one block of the
// expected type and nothing after it, so a file with a stray second key or a
// truncated chain is refused instead of silently half-used. It is the one PEM
// reader of krun-tee.
package pemfile

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
)

// MaxFileSize bounds a PEM file read from disk (a certificate chain is a few KiB).
const MaxFileSize = 1 << 20

// Decode returns the DER of the one PEM block in data, which must be of type
// blockType. No block, a block of another type, a second block or trailing
// non-space bytes are errors.
func Decode(data []byte, blockType string) ([]byte, error) {
	ders, err := DecodeAll(data, blockType)
	if err != nil {
		return nil, err
	}
	if len(ders) != 1 {
		return nil, fmt.Errorf("%d PEM %s blocks, want exactly one", len(ders), blockType)
	}
	return ders[0], nil
}

// DecodeAll returns the DER of every PEM block in data: one or more blocks,
// all of type blockType, with nothing but space after the last.
func DecodeAll(data []byte, blockType string) ([][]byte, error) {
	var ders [][]byte
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != blockType {
			return nil, fmt.Errorf("PEM block %d is %q, want %q", len(ders)+1, b.Type, blockType)
		}
		ders = append(ders, b.Bytes)
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("no PEM %s block", blockType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%d bytes that are not a PEM block after the last %s", len(bytes.TrimSpace(rest)), blockType)
	}
	return ders, nil
}

// Read returns the DER of the one PEM block of type blockType in the file at path.
func Read(path, blockType string) ([]byte, error) {
	data, err := boundedfile.Read(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	der, err := Decode(data, blockType)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return der, nil
}

// ReadCertificate parses the file at path, which must hold exactly one PEM CERTIFICATE.
func ReadCertificate(path string) (*x509.Certificate, error) {
	der, err := Read(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadCertificateChain parses the file at path, which must hold one or more
// PEM CERTIFICATE blocks (leaf first, as a TLS server presents them).
func ReadCertificateChain(path string) ([]*x509.Certificate, error) {
	data, err := boundedfile.Read(path, MaxFileSize)
	if err != nil {
		return nil, err
	}
	ders, err := DecodeAll(data, "CERTIFICATE")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	chain := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, i+1, err)
		}
	}
	return chain, nil
}

// ReadPrivateKey parses the file at path, which must hold exactly one PEM
// "PRIVATE KEY" (PKCS#8) block with a signing key.
func ReadPrivateKey(path string) (crypto.Signer, error) {
	der, err := Read(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New(path + ": private key cannot sign")
	}
	return s, nil
}
