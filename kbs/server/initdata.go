package server

import (
	"bufio"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"

	"github.com/krun-tee/krun-tee/kbs"
)

// maxInitData bounds the init-data TOML body.
const maxInitData = 256 << 10

// initDataDigest hashes the raw init-data TOML body with the algorithm its
// top-level `algorithm` key names (Trustee: sha256, sha384 or sha512; default
// sha384 when absent).
func initDataDigest(body string) ([]byte, error) {
	if len(body) > maxInitData {
		return nil, fmt.Errorf("init-data: %d bytes, more than %d", len(body), maxInitData)
	}
	alg := "sha384"
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 4096), maxInitData)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			break // only top-level keys
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != "algorithm" {
			continue
		}
		alg = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	var h hash.Hash
	switch alg {
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		return nil, fmt.Errorf("init-data: algorithm %q not supported", truncate(alg, 16))
	}
	h.Write([]byte(body))
	return h.Sum(nil), nil
}

// checkInitData verifies that the TEE bound the init-data: its digest,
// zero-padded or truncated to the field size, must equal SNP HOST_DATA (32
// bytes) or TDX MRCONFIGID (48 bytes).
func checkInitData(c *Claims, d *kbs.InitData) error {
	digest, err := initDataDigest(d.Body)
	if err != nil {
		return err
	}
	size := snpHostDataLen
	if c.TEE == kbs.TEETDX {
		size = tdxConfigIDLen
	}
	want := make([]byte, size)
	copy(want, digest)
	got, err := hex.DecodeString(c.HostData)
	if err != nil || len(got) != size {
		return errors.New("init-data: evidence carries no host data to compare")
	}
	if hex.EncodeToString(got) != hex.EncodeToString(want) {
		return errors.New("init-data: digest does not match HOST_DATA/MRCONFIGID")
	}
	return nil
}
