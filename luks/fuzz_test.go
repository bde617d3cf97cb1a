package luks

import (
	"encoding/binary"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
)

// sparseDevice serves data followed by zeros up to size, so a fuzz input
// holding only the header copies can claim a larger device.
type sparseDevice struct {
	data []byte
	size int64
}

func (s sparseDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-off))
	clear(p[:n])
	if off < int64(len(s.data)) {
		copy(p[:n], s.data[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fuzzSeeds returns the two header copies of a formatted volume, with and
// without a launch-config token, plus some damaged variants.
func fuzzSeeds(f *testing.F) [][]byte {
	dev, v, _ := newTestVolume(f, []byte("fuzz"))
	plain := append([]byte(nil), dev.b[:2*DefaultHeaderSize]...)
	v.SetLaunchConfig(dev, &launchconfig.Config{WorkloadID: "w", KBSURL: "https://k:1", TEE: tee.EmulatedTDX, VCPUs: 1, MemoryMiB: 64})
	withToken := append([]byte(nil), dev.b[:2*DefaultHeaderSize]...)
	damaged := append([]byte(nil), withToken...)
	damaged[offChecksum] ^= 1
	short := withToken[:5000]
	hugeHdr := append([]byte(nil), withToken...)
	binary.BigEndian.PutUint64(hugeHdr[offHdrSize:], 1<<62)
	return [][]byte{plain, withToken, damaged, short, hugeHdr, []byte("LUKS\xba\xbe\x00\x02")}
}

func FuzzParseHeader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, int64(testSize))
		f.Add(s, int64(len(s)))
	}
	f.Fuzz(func(t *testing.T, data []byte, size int64) {
		if size < 0 || size > 1<<40 {
			size = int64(len(data))
		}
		v, err := Open(sparseDevice{data, size}, size)
		if err != nil {
			return
		}
		// Everything reachable from a successfully opened header must work
		// without panicking.
		v.KeyslotIDs()
		v.Tokens()
		v.ReadLaunchConfig()
		if off, n, err := v.PayloadRange(); err == nil && (off < 0 || n < 0 || off+n > size) {
			t.Fatalf("payload range [%d, +%d) outside the %d-byte device", off, n, size)
		}
		// Unlock only cheap keyslots: bounded but large KDF costs would
		// stall the fuzzer, not reveal bugs.
		for _, id := range v.KeyslotIDs() {
			k := v.Metadata().Keyslots[strconv.Itoa(id)].KDF
			if (k.Type == "pbkdf2" && k.Iterations <= 2000) || (k.Type != "pbkdf2" && k.Memory <= 64 && k.Time <= 2) {
				dg := v.digestFor(strconv.Itoa(id))
				if dg != nil && dg.Iterations <= 2000 {
					v.UnlockKeyslot(sparseDevice{data, size}, id, []byte("fuzz"))
				}
			}
		}
	})
}

func FuzzParseMetadata(f *testing.F) {
	for _, s := range fuzzSeeds(f)[:2] {
		f.Add(s[binHeaderSize:DefaultHeaderSize])
	}
	f.Add([]byte(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"12288","keyslots_size":"0"}}`))
	f.Fuzz(func(t *testing.T, jsonArea []byte) {
		area := make([]byte, DefaultHeaderSize)
		copy(area[binHeaderSize:], jsonArea)
		parseMetadata(area, DefaultHeaderSize, testSize)
	})
}

func FuzzParseLaunchConfigToken(f *testing.F) {
	f.Add([]byte(`{"type":"krun-tee","keyslots":[],"workload_id":"a","tee":"snp","vcpus":1,"memory_mib":64}`))
	f.Add([]byte(`{"type":"krun-tee","keyslots":[],"workload_id":"a","kbs_url":"https://h:1","kbs_ca_fingerprint":"00","tee":"none","resource_path":"a/b/c","vcpus":-1,"memory_mib":1e99}`))
	f.Add([]byte(`{"type":"krun-tee","keyslots":[],"workload_id":"a","tee":"snp","vcpus":1,"memory_mib":64,"verity":{"root_hash":"` +
		strings.Repeat("ee", 32) + `","salt":"` + strings.Repeat("5a", 32) + `","data_blocks":8,"hash_offset":32768}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := ParseLaunchConfigToken(raw)
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("parsed config fails Validate: %v", err)
			}
		}
	})
}
