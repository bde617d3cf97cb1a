package server

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
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
// It also authenticates records that are stored in the clear (sessions,
// workloads) with HMAC-SHA256 under a key derived from the KEK, so that a
// database writer without the KEK cannot forge or alter them.
type Sealer struct {
	aead    cipher.AEAD
	macKey  []byte
	chalKey []byte
}

// Authenticated record layout: version byte, HMAC-SHA256 tag, value.
const (
	recordVersion = 0xa1
	recordTagLen  = sha256.Size
	recordHdrLen  = 1 + recordTagLen
	recordMACInfo = "krun-tee-kbs record mac v1"
	challengeInfo = "krun-tee-kbs challenge mac v1"
)

// ErrUnauthenticated marks a stored record whose MAC does not verify: it was
// written without the KEK (a database writer) or under another bucket/key.
var ErrUnauthenticated = errors.New("kbs: record not authenticated by this KBS (written without the key-encryption key?)")

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
	mk, err := hkdf.Key(sha256.New, kek, nil, recordMACInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("kbs: kek: %w", err)
	}
	ck, err := hkdf.Key(sha256.New, kek, nil, challengeInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("kbs: kek: %w", err)
	}
	return &Sealer{aead: g, macKey: mk, chalKey: ck}, nil
}

// challengeTag is the MAC of a stateless challenge (see Server.challenge)
// under a key derived from the KEK, so every replica can check it.
func (s *Sealer) challengeTag(data []byte) []byte {
	m := hmac.New(sha256.New, s.chalKey)
	m.Write(data)
	return m.Sum(nil)
}

// recordTag is the MAC of value stored under bucket/key; the lengths make
// the encoding unambiguous.
func (s *Sealer) recordTag(bucket, key string, value []byte) []byte {
	m := hmac.New(sha256.New, s.macKey)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(bucket)))
	m.Write(n[:])
	m.Write([]byte(bucket))
	binary.BigEndian.PutUint64(n[:], uint64(len(key)))
	m.Write(n[:])
	m.Write([]byte(key))
	m.Write(value)
	return m.Sum(nil)
}

// Authenticate returns value as stored under bucket/key: prefixed with a
// version byte and its MAC.
func (s *Sealer) Authenticate(bucket, key string, value []byte) []byte {
	out := make([]byte, 0, recordHdrLen+len(value))
	out = append(out, recordVersion)
	out = append(out, s.recordTag(bucket, key, value)...)
	return append(out, value...)
}

// Verify checks a record read from bucket/key and returns its value; a
// record not written by Authenticate with this KEK under this very
// bucket/key fails with ErrUnauthenticated.
func (s *Sealer) Verify(bucket, key string, stored []byte) ([]byte, error) {
	if len(stored) < recordHdrLen || stored[0] != recordVersion {
		return nil, fmt.Errorf("%w: %s/%s: no record MAC", ErrUnauthenticated, bucket, truncate(key, 64))
	}
	value := stored[recordHdrLen:]
	if !hmac.Equal(stored[1:recordHdrLen], s.recordTag(bucket, key, value)) {
		return nil, fmt.Errorf("%w: %s/%s: MAC mismatch", ErrUnauthenticated, bucket, truncate(key, 64))
	}
	return value, nil
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
