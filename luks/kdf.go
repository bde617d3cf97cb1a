package luks

import (
	"crypto/aes"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/xts"
)

// hashByName returns the hash LUKS2 metadata names ("sha256" ...).
func hashByName(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("hash %q is not supported (sha1, sha256, sha512)", name)
}

// derive runs a keyslot KDF. The parameters were bounded by validate, so
// the cost is bounded too.
func (k *KDF) derive(passphrase []byte, keyLen int) ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	switch k.Type {
	case "pbkdf2":
		newHash, _ := hashByName(k.Hash)
		return pbkdf2Key(newHash, passphrase, k.Salt, k.Iterations, keyLen)
	case "argon2i":
		return argon2.Key(passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(keyLen)), nil
	case "argon2id":
		return argon2.IDKey(passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(keyLen)), nil
	}
	return nil, fmt.Errorf("kdf type %q is not supported", k.Type)
}

// pbkdf2Key is PBKDF2 with a byte-slice password (LUKS passphrases and
// volume keys are arbitrary bytes).
func pbkdf2Key(newHash func() hash.Hash, password, salt []byte, iter, keyLen int) ([]byte, error) {
	return pbkdf2.Key(newHash, string(password), salt, iter, keyLen)
}

// newXTS builds an AES-XTS cipher from a 32- or 64-byte key.
func newXTS(key []byte) (*xts.Cipher, error) {
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("aes-xts key of %d bytes (want 32 or 64)", len(key))
	}
	return xts.NewCipher(aes.NewCipher, key)
}

// diffuse replaces buf, chunk by chunk of the hash size, with
// H(be32(chunk index) || chunk), truncating the last partial chunk: the
// diffusion step of the luks1 anti-forensic splitter.
func diffuse(newHash func() hash.Hash, buf []byte) {
	h := newHash()
	size := h.Size()
	var iv [4]byte
	var sum []byte
	for i, off := 0, 0; off < len(buf); i, off = i+1, off+size {
		end := min(off+size, len(buf))
		h.Reset()
		binary.BigEndian.PutUint32(iv[:], uint32(i))
		h.Write(iv[:])
		h.Write(buf[off:end])
		sum = h.Sum(sum[:0])
		copy(buf[off:end], sum)
	}
	wipe(sum)
}

// afMerge recovers a key of keySize bytes from its stripes
// (stripes*keySize bytes).
func afMerge(newHash func() hash.Hash, stripes []byte, keySize, n int) []byte {
	d := make([]byte, keySize)
	for i := 0; i < n-1; i++ {
		xorInto(d, stripes[i*keySize:(i+1)*keySize])
		diffuse(newHash, d)
	}
	xorInto(d, stripes[(n-1)*keySize:n*keySize])
	return d
}

// afSplit spreads key over n stripes; random supplies stripes 0..n-2
// ((n-1)*len(key) bytes).
func afSplit(newHash func() hash.Hash, key, random []byte, n int) []byte {
	keySize := len(key)
	out := make([]byte, n*keySize)
	copy(out, random[:(n-1)*keySize])
	d := make([]byte, keySize)
	for i := 0; i < n-1; i++ {
		xorInto(d, out[i*keySize:(i+1)*keySize])
		diffuse(newHash, d)
	}
	last := out[(n-1)*keySize:]
	for i := range last {
		last[i] = d[i] ^ key[i]
	}
	wipe(d)
	return out
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// wipe zeroes key material once it is no longer needed. It is best effort:
// the Go runtime may have copied the bytes (stack growth, GC), but it keeps
// the common copies from lingering.
func wipe(b []byte) {
	clear(b)
}
