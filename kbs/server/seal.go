package server

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/krun-tee/krun-tee/internal/boundedfile"
)

// KEKSize is the size of the key-encryption key (AES-256).
const KEKSize = 32

// Sealed value layout: version byte, 12-byte nonce, AES-GCM ciphertext+tag.
const (
	sealVersion   = 1
	sealNonceOff  = 1
	sealNonceSize = 12
	sealCTOff     = sealNonceOff + sealNonceSize
)

// Sealer encrypts secrets at rest with AES-256-GCM; the additional data binds
// each ciphertext to its bucket and key so values cannot be swapped in the store.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer builds a Sealer from a 32-byte key-encryption key.
func NewSealer(kek []byte) (*Sealer, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("kbs: kek: %d bytes, want %d", len(kek), KEKSize)
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("kbs: kek: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("kbs: kek: %w", err)
	}
	return &Sealer{aead: g}, nil
}

// ParseKEK accepts 32 raw bytes or 64 hex characters (surrounding whitespace ignored).
func ParseKEK(data []byte) ([]byte, error) {
	if len(data) == KEKSize {
		return append([]byte(nil), data...), nil
	}
	t := bytes.TrimSpace(data)
	if len(t) == 2*KEKSize {
		k := make([]byte, KEKSize)
		if _, err := hex.Decode(k, t); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("kbs: kek: want %d raw bytes or %d hex characters", KEKSize, 2*KEKSize)
}

// LoadKEK reads the key-encryption key from a file or, if file is empty, from
// the environment variable env (hex).
func LoadKEK(file, env string) ([]byte, error) {
	if file != "" {
		data, err := boundedfile.Read(file, maxSmallFile)
		if err != nil {
			return nil, fmt.Errorf("kbs: kek file: %w", err)
		}
		return ParseKEK(data)
	}
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok {
			return nil, fmt.Errorf("kbs: kek: environment variable %s not set", env)
		}
		return ParseKEK([]byte(v))
	}
	return nil, errors.New("kbs: kek: neither kek_file nor kek_env configured")
}

func sealAAD(bucket, key string) []byte { return []byte("krun-tee-kbs/" + bucket + "/" + key) }

// Seal encrypts plaintext for storage under bucket/key.
func (s *Sealer) Seal(bucket, key string, plaintext []byte) ([]byte, error) {
	out := make([]byte, sealCTOff, sealCTOff+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[sealNonceOff:sealCTOff]); err != nil {
		return nil, err
	}
	return s.aead.Seal(out, out[sealNonceOff:sealCTOff], plaintext, sealAAD(bucket, key)), nil
}

// Open decrypts a value stored under bucket/key.
func (s *Sealer) Open(bucket, key string, sealed []byte) ([]byte, error) {
	if len(sealed) < sealCTOff+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("kbs: sealed %s/%s: bad format", bucket, key)
	}
	pt, err := s.aead.Open(nil, sealed[sealNonceOff:sealCTOff], sealed[sealCTOff:], sealAAD(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("kbs: sealed %s/%s: %w (wrong key-encryption key?)", bucket, key, err)
	}
	return pt, nil
}
