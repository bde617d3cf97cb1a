package luks

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
)

const testSize = 2 << 20

// newTestVolume formats an in-memory device with the default layout.
func newTestVolume(t testing.TB, pass []byte) (*memDevice, *Volume, []byte) {
	t.Helper()
	dev := &memDevice{b: make([]byte, testSize)}
	v, vk, err := Format(dev, testSize, pass, FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return dev, v, vk
}

// copyJSON returns the metadata of the header copy at off as a generic map.
func copyJSON(t *testing.T, dev *memDevice, off int) map[string]any {
	t.Helper()
	area := dev.b[off+binHeaderSize : off+DefaultHeaderSize]
	var m map[string]any
	if err := json.Unmarshal(area[:bytes.IndexByte(area, 0)], &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// rewriteCopies re-encodes both header copies with metadata changed by edit
// and a valid checksum, as a hostile but careful writer would.
func rewriteCopies(t *testing.T, dev *memDevice, edit func(m map[string]any)) {
	t.Helper()
	for _, off := range []int{0, DefaultHeaderSize} {
		m := copyJSON(t, dev, off)
		edit(m)
		text, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		h, err := parseBinaryHeader(dev.b[off : off+binHeaderSize])
		if err != nil {
			t.Fatal(err)
		}
		area, err := encodeHeaderArea(h, dev.b[off+offSalt:off+offSalt+lenSalt], text)
		if err != nil {
			t.Fatal(err)
		}
		copy(dev.b[off:], area)
	}
}

func obj(m map[string]any, path ...string) map[string]any {
	for _, p := range path {
		m = m[p].(map[string]any)
	}
	return m
}

func TestOpenAndUnlockRoundTrip(t *testing.T) {
	pass := []byte("correct horse")
	dev, _, vk := newTestVolume(t, pass)
	v, err := Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	if v.PrimaryErr != nil || v.SecondaryErr != nil {
		t.Fatalf("copy errors: %v / %v", v.PrimaryErr, v.SecondaryErr)
	}
	if v.SeqID() != 1 || v.HeaderSize() != DefaultHeaderSize || v.ChecksumAlgorithm() != "sha256" || len(v.UUID()) != 36 {
		t.Fatalf("header fields: seqid %d size %d alg %q uuid %q", v.SeqID(), v.HeaderSize(), v.ChecksumAlgorithm(), v.UUID())
	}
	got, slot, err := v.Unlock(dev, pass)
	if err != nil || slot != 0 || !bytes.Equal(got, vk) {
		t.Fatalf("Unlock = %x, %d, %v; want %x", got, slot, err, vk)
	}
	if _, _, err := v.Unlock(dev, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	off, n, err := v.PayloadRange()
	if err != nil || off != DefaultDataOffset || n != testSize-DefaultDataOffset {
		t.Fatalf("PayloadRange = %d, %d, %v", off, n, err)
	}
}

func TestOpenBadInput(t *testing.T) {
	pass := []byte("pw")
	cases := []struct {
		name    string
		size    int64 // 0 = testSize
		damage  func(t *testing.T, dev *memDevice)
		wantErr string
		is      error
	}{
		{name: "truncated below two headers", size: 20000, wantErr: "too small", is: ErrNotLUKS},
		{name: "truncated inside keyslots area", size: 200000, wantErr: "past the end"},
		{name: "zeros", damage: func(t *testing.T, d *memDevice) { clear(d.b[:1<<20]) }, is: ErrNotLUKS},
		{name: "both checksums flipped", damage: func(t *testing.T, d *memDevice) {
			d.b[offChecksum] ^= 1
			d.b[DefaultHeaderSize+offChecksum] ^= 1
		}, wantErr: "checksum mismatch"},
		{name: "unknown mandatory requirement", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) {
				obj(m, "config")["requirements"] = map[string]any{"mandatory": []any{"future-feature"}}
			})
		}, is: ErrUnsupportedRequirement, wantErr: "future-feature"},
		{name: "json_size wrong", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "config")["json_size"] = "4294967296" })
		}, wantErr: "json_size"},
		{name: "json_size a number", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "config")["json_size"] = 12288 })
		}, wantErr: "decimal string"},
		{name: "keyslots_size huge", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "config")["keyslots_size"] = "18446744073709547520" })
		}, wantErr: "keyslots area"},
		{name: "keyslot area outside", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "keyslots", "0", "area")["offset"] = "18446744073709551000" })
		}, wantErr: "outside the keyslots area"},
		{name: "keyslot area too small", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "keyslots", "0", "area")["size"] = "4096" })
		}, wantErr: "smaller than"},
		{name: "key_size huge", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "keyslots", "0")["key_size"] = 1 << 30 })
		}, wantErr: "key_size"},
		{name: "stripes", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "keyslots", "0", "af")["stripes"] = 1 << 30 })
		}, wantErr: "stripes"},
		{name: "argon2 memory absurd", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) {
				obj(m, "keyslots", "0")["kdf"] = map[string]any{"type": "argon2id", "time": 4, "memory": 1 << 40, "cpus": 1, "salt": "AAAA"}
			})
		}, wantErr: "memory"},
		{name: "pbkdf2 iterations absurd", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "keyslots", "0", "kdf")["iterations"] = 1 << 40 })
		}, wantErr: "iterations"},
		{name: "digest iterations absurd", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "digests", "0")["iterations"] = 1 << 40 })
		}, wantErr: "iterations"},
		{name: "segment offset past end", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "segments", "0")["offset"] = "1099511627776" })
		}, wantErr: "past the end"},
		{name: "segment size past end", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "segments", "0")["size"] = "1099511627776" })
		}, wantErr: "past the end"},
		{name: "segment cipher", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "segments", "0")["encryption"] = "cipher_null-ecb" })
		}, wantErr: "not supported"},
		{name: "digest names missing keyslot", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { obj(m, "digests", "0")["keyslots"] = []any{"0", "7"} })
		}, wantErr: "does not exist"},
		{name: "keyslot id", damage: func(t *testing.T, d *memDevice) {
			rewriteCopies(t, d, func(m map[string]any) { k := obj(m, "keyslots"); k["99"] = k["0"]; delete(k, "0") })
		}, wantErr: "id \"99\""},
		{name: "hdr_size not a power of two", damage: func(t *testing.T, d *memDevice) {
			for _, off := range []int{0, DefaultHeaderSize} {
				binary.BigEndian.PutUint64(d.b[off+offHdrSize:], 3<<20)
			}
		}, wantErr: "power of two"},
		{name: "hdr_size larger than the device", size: 300000, damage: func(t *testing.T, d *memDevice) {
			binary.BigEndian.PutUint64(d.b[offHdrSize:], 4<<20)
			binary.BigEndian.PutUint64(d.b[DefaultHeaderSize+offHdrSize:], 4<<20)
		}, wantErr: "unusable"},
		{name: "version 1", damage: func(t *testing.T, d *memDevice) {
			binary.BigEndian.PutUint16(d.b[offVersion:], 1)
			binary.BigEndian.PutUint16(d.b[DefaultHeaderSize+offVersion:], 1)
		}, wantErr: "version 1"},
		{name: "json not terminated", damage: func(t *testing.T, d *memDevice) {
			for _, off := range []int{0, DefaultHeaderSize} {
				for i := off + binHeaderSize; i < off+DefaultHeaderSize; i++ {
					if d.b[i] == 0 {
						d.b[i] = ' '
					}
				}
				h, _ := parseBinaryHeader(d.b[off:])
				copy(d.b[off+offChecksum:], headerChecksum(mustHash(h.checksumAlg), d.b[off:off+DefaultHeaderSize]))
			}
		}, wantErr: "NUL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev, _, _ := newTestVolume(t, pass)
			if tc.damage != nil {
				tc.damage(t, dev)
			}
			size := tc.size
			if size == 0 {
				size = testSize
			}
			_, err := Open(dev, size)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestOpenFallsBackToOtherCopy(t *testing.T) {
	pass := []byte("pw")
	for _, tc := range []struct {
		name      string
		flipAt    int
		primaryOK bool
	}{
		{"primary checksum byte", offChecksum + 5, false},
		{"primary json byte", binHeaderSize + 3, false},
		{"primary magic", 0, false},
		{"secondary checksum byte", DefaultHeaderSize + offChecksum + 5, true},
		{"secondary magic", DefaultHeaderSize, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, _, vk := newTestVolume(t, pass)
			dev.b[tc.flipAt] ^= 0x40
			v, err := Open(dev, testSize)
			if err != nil {
				t.Fatal(err)
			}
			if (v.PrimaryErr == nil) != tc.primaryOK || (v.SecondaryErr == nil) == tc.primaryOK {
				t.Fatalf("PrimaryErr %v, SecondaryErr %v", v.PrimaryErr, v.SecondaryErr)
			}
			got, _, err := v.Unlock(dev, pass)
			if err != nil || !bytes.Equal(got, vk) {
				t.Fatalf("Unlock: %v", err)
			}
		})
	}
}

func TestOpenPicksHigherSeqID(t *testing.T) {
	dev, v, _ := newTestVolume(t, []byte("pw"))
	// Simulate a crash after writing the secondary only: the secondary has a
	// new token and seqid 2, the primary is still at seqid 1.
	saved := bytes.Clone(dev.b[:DefaultHeaderSize])
	if err := v.SetLaunchConfig(dev, &launchconfig.Config{WorkloadID: "x", TEE: tee.None, VCPUs: 1, MemoryMiB: 64}); err != nil {
		t.Fatal(err)
	}
	copy(dev.b, saved)
	v2, err := Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	if v2.SeqID() != 2 || v2.LaunchConfigTokenID() != 0 {
		t.Fatalf("seqid %d token %d: the newer secondary was not chosen", v2.SeqID(), v2.LaunchConfigTokenID())
	}
}

func TestKeyslotPriority(t *testing.T) {
	pass := []byte("pw")
	dev, v, vk := newTestVolume(t, pass)
	for i := 0; i < 2; i++ {
		if _, err := v.AddKeyslot(dev, vk, pass, PBKDF2()); err != nil {
			t.Fatal(err)
		}
	}
	rewriteCopies(t, dev, func(m map[string]any) {
		obj(m, "keyslots", "0")["priority"] = 0
		obj(m, "keyslots", "2")["priority"] = 2
	})
	v, err := Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	if ids := v.KeyslotIDs(); len(ids) != 2 || ids[0] != 2 || ids[1] != 1 {
		t.Fatalf("KeyslotIDs = %v, want [2 1]", ids)
	}
	_, slot, err := v.Unlock(dev, pass)
	if err != nil || slot != 2 {
		t.Fatalf("Unlock used slot %d (%v), want the high-priority 2", slot, err)
	}
	// Slot 0 is ignored by Unlock but opens when named.
	if k, err := v.UnlockKeyslot(dev, 0, pass); err != nil || !bytes.Equal(k, vk) {
		t.Fatalf("UnlockKeyslot(0): %v", err)
	}
	rewriteCopies(t, dev, func(m map[string]any) {
		for _, k := range []string{"0", "1", "2"} {
			obj(m, "keyslots", k)["priority"] = 0
		}
	})
	v, _ = Open(dev, testSize)
	if _, _, err := v.Unlock(dev, pass); err == nil || errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("all slots ignored: err = %v, want a no-usable-keyslot error", err)
	}
}

func TestKeyslotAddRemove(t *testing.T) {
	pass := []byte("pw")
	dev, v, vk := newTestVolume(t, pass)
	if _, err := v.AddKeyslot(dev, bytes.Repeat([]byte{1}, 64), []byte("x"), PBKDF2()); err == nil {
		t.Fatal("AddKeyslot accepted a volume key that fails the digest")
	}
	id1, err := v.AddKeyslot(dev, vk, []byte("second"), Argon2id())
	if err != nil {
		t.Fatal(err)
	}
	id2, err := v.AddKeyslot(dev, vk, []byte("third"), PBKDF2())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddKeyslot(dev, vk, []byte("fourth"), PBKDF2()); err == nil || !strings.Contains(err.Error(), "no free") {
		t.Fatalf("fourth keyslot in a 1 MiB header: err = %v, want no free span", err)
	}
	if err := v.RemoveKeyslot(dev, 0); err != nil {
		t.Fatal(err)
	}
	v, err = Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Unlock(dev, pass); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("removed keyslot still opens: %v", err)
	}
	for id, p := range map[int]string{id1: "second", id2: "third"} {
		if _, slot, err := v.Unlock(dev, []byte(p)); err != nil || slot != id {
			t.Fatalf("Unlock(%q) = slot %d, %v", p, slot, err)
		}
	}
	// The freed area is reused.
	id3, err := v.AddKeyslot(dev, vk, []byte("fifth"), PBKDF2())
	if err != nil || id3 != 0 {
		t.Fatalf("AddKeyslot after remove = %d, %v", id3, err)
	}
	if err := v.RemoveKeyslot(dev, 9); err == nil {
		t.Fatal("removed a keyslot that does not exist")
	}
	v.RemoveKeyslot(dev, id1)
	v.RemoveKeyslot(dev, id2)
	if err := v.RemoveKeyslot(dev, id3); err == nil || !strings.Contains(err.Error(), "last keyslot") {
		t.Fatalf("removing the last keyslot: %v", err)
	}
}

func TestTokensPreserved(t *testing.T) {
	pass := []byte("pw")
	dev, v, vk := newTestVolume(t, pass)
	unknown := json.RawMessage(`{"type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAEC","tpm2-pcrs":[7],"x":{"y":null}}`)
	if err := v.SetToken(dev, 5, unknown); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"keyslots":[]}`, `{"type":"a"}`, `[1]`, `{"type":"a","keyslots":["9"]}`} {
		if err := v.SetToken(dev, 6, json.RawMessage(bad)); err == nil {
			t.Errorf("SetToken accepted %s", bad)
		}
	}
	id, err := v.AddKeyslot(dev, vk, []byte("two"), PBKDF2())
	if err != nil {
		t.Fatal(err)
	}
	lc := &launchconfig.Config{WorkloadID: "app", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 256}
	if err := v.SetLaunchConfig(dev, lc); err != nil {
		t.Fatal(err)
	}
	v2, err := Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := v2.Tokens()[5]; !jsonEqual(t, got, unknown) {
		t.Fatalf("token 5 = %s, want %s", got, unknown)
	}
	// Removing keyslot 0 drops it from the token's list and keeps the rest.
	if err := v2.RemoveKeyslot(dev, 0); err != nil {
		t.Fatal(err)
	}
	want := `{"type":"systemd-tpm2","keyslots":[],"tpm2-blob":"AAEC","tpm2-pcrs":[7],"x":{"y":null}}`
	if got := v2.Tokens()[5]; !jsonEqual(t, got, []byte(want)) {
		t.Fatalf("token 5 after removing keyslot 0 = %s", got)
	}
	if _, slot, err := v2.Unlock(dev, []byte("two")); err != nil || slot != id {
		t.Fatal(err)
	}
	if err := v2.RemoveToken(dev, 5); err != nil {
		t.Fatal(err)
	}
	if _, ok := v2.Tokens()[5]; ok {
		t.Fatal("token 5 still present")
	}
	got, err := v2.ReadLaunchConfig()
	if err != nil || *got != *lc {
		t.Fatalf("ReadLaunchConfig = %+v, %v", got, err)
	}
}

// TestLaunchConfigValidated: the token refuses what the launch-configuration
// validator refuses (its own table is in package launchconfig), both when
// writing and when reading a header someone else wrote.
func TestLaunchConfigValidated(t *testing.T) {
	dev, v, _ := newTestVolume(t, []byte("pass"))
	for name, c := range map[string]launchconfig.Config{
		"255 vcpus": {WorkloadID: "w", TEE: tee.SNP, VCPUs: 255, MemoryMiB: 512},
		"8 MiB":     {WorkloadID: "w", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 8},
		"team:web":  {WorkloadID: "team:web", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 512},
		"tee":       {WorkloadID: "w", TEE: "sev", VCPUs: 1, MemoryMiB: 512},
	} {
		if err := v.SetLaunchConfig(dev, &c); err == nil || !strings.Contains(err.Error(), "krun-tee token") {
			t.Errorf("%s: SetLaunchConfig = %v, want a refusal", name, err)
		}
		raw, _ := json.Marshal(launchToken{Type: LaunchConfigTokenType, Keyslots: []string{}, Config: c})
		if _, err := ParseLaunchConfigToken(raw); err == nil {
			t.Errorf("%s: ParseLaunchConfigToken accepted %s", name, raw)
		}
	}
	if _, err := ParseLaunchConfigToken([]byte(`{"type":"other","keyslots":[]}`)); err == nil {
		t.Error("parsed a token of another type")
	}
}

// TestLaunchConfigTokenImageDigest: the optional image digest survives a
// round trip, and a token written before the field existed still parses.
func TestLaunchConfigTokenImageDigest(t *testing.T) {
	old := []byte(`{"type":"krun-tee","keyslots":[],"workload_id":"app","tee":"snp","vcpus":1,"memory_mib":256}`)
	c, err := ParseLaunchConfigToken(old)
	if err != nil || c.ImageDigest != "" || c.WorkloadID != "app" {
		t.Fatalf("old token: %+v, %v", c, err)
	}
	digest := "sha256:" + strings.Repeat("1a", 32)
	raw := []byte(`{"type":"krun-tee","keyslots":[],"workload_id":"app","tee":"snp","vcpus":1,"memory_mib":256,"image_digest":"` + digest + `"}`)
	if c, err = ParseLaunchConfigToken(raw); err != nil || c.ImageDigest != digest {
		t.Fatalf("token with digest: %+v, %v", c, err)
	}
	bad := bytes.Replace(raw, []byte("sha256:"), []byte("md5:"), 1)
	if _, err := ParseLaunchConfigToken(bad); err == nil {
		t.Fatal("accepted a malformed image digest")
	}
}

func TestAFSplitMerge(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	for _, h := range []string{"sha1", "sha256", "sha512"} {
		random := bytes.Repeat([]byte{0x5a, 0x13, 0x77}, (afStripes-1)*len(key)/3+1)
		s := afSplit(mustHash(h), key, random, afStripes)
		if got := afMerge(mustHash(h), s, len(key), afStripes); !bytes.Equal(got, key) {
			t.Fatalf("%s: merge(split(k)) = %x", h, got)
		}
		s[100] ^= 1
		if got := afMerge(mustHash(h), s, len(key), afStripes); bytes.Equal(got, key) {
			t.Fatalf("%s: a damaged stripe still merged to the key", h)
		}
	}
}

func TestDiffuseKnownAnswer(t *testing.T) {
	// 40 bytes with sha256: chunk 0 = H(00000000 || b[0:32]), chunk 1 =
	// H(00000001 || b[32:40]) truncated to 8 bytes.
	b := bytes.Repeat([]byte{0xaa}, 40)
	diffuse(mustHash("sha256"), b)
	h := mustHash("sha256")()
	h.Write([]byte{0, 0, 0, 0})
	h.Write(bytes.Repeat([]byte{0xaa}, 32))
	want0 := h.Sum(nil)
	h.Reset()
	h.Write([]byte{0, 0, 0, 1})
	h.Write(bytes.Repeat([]byte{0xaa}, 8))
	want1 := h.Sum(nil)[:8]
	if !bytes.Equal(b[:32], want0) || !bytes.Equal(b[32:], want1) {
		t.Fatalf("diffuse = %x", b)
	}
}

func TestFormatRejectsBadOptions(t *testing.T) {
	dev := &memDevice{}
	for name, tc := range map[string]struct {
		size int64
		o    FormatOptions
	}{
		"too small":      {300000, FormatOptions{}},
		"sector size":    {testSize, FormatOptions{SectorSize: 520}},
		"data offset":    {testSize, FormatOptions{DataOffset: 4096}},
		"kdf":            {testSize, FormatOptions{KDF: KDFParams{Type: "scrypt"}}},
		"pbkdf2 iter":    {testSize, FormatOptions{KDF: KDFParams{Type: "pbkdf2", Iterations: 0}}},
		"argon2 memory":  {testSize, FormatOptions{KDF: KDFParams{Type: "argon2id", Time: 1, Threads: 1, MemoryKiB: 8 << 30}}},
		"volume key len": {testSize, FormatOptions{VolumeKey: make([]byte, 48)}},
		"label too long": {testSize, FormatOptions{Label: strings.Repeat("l", 48)}},
	} {
		if _, _, err := Format(dev, tc.size, []byte("p"), tc.o); err == nil {
			t.Errorf("%s: Format succeeded", name)
		}
	}
}

func TestMaxKDFMemory(t *testing.T) {
	pass := []byte("pw")
	dev := &memDevice{b: make([]byte, testSize)}
	v, vk, err := Format(dev, testSize, pass, FormatOptions{KDF: Argon2id()})
	if err != nil {
		t.Fatal(err)
	}
	v.MaxKDFMemoryKiB = 8 << 10 // below the preset's 16 MiB
	_, _, err = v.Unlock(dev, pass)
	if !errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), "needs 16384 KiB") {
		t.Fatalf("Unlock over the memory limit: %v", err)
	}
	if _, err := v.UnlockKeyslot(dev, 0, pass); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("UnlockKeyslot over the memory limit: %v", err)
	}
	// A cheap pbkdf2 keyslot next to it still opens.
	if _, err := v.AddKeyslot(dev, vk, pass, PBKDF2()); err != nil {
		t.Fatal(err)
	}
	if _, slot, err := v.Unlock(dev, pass); err != nil || slot != 1 {
		t.Fatalf("Unlock = slot %d, %v", slot, err)
	}
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/img"
	dev, _, vk := newTestVolume(t, []byte("pw"))
	if err := os.WriteFile(p, dev.b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, v, err := OpenFile(p, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if k, _, err := v.Unlock(f, []byte("pw")); err != nil || !bytes.Equal(k, vk) {
		t.Fatalf("Unlock: %v", err)
	}
	if _, _, err := OpenFile(dir, os.O_RDONLY); err == nil {
		t.Fatal("opened a directory")
	}
	if _, _, err := OpenFile(dir+"/none", os.O_RDONLY); err == nil {
		t.Fatal("opened a missing file")
	}
}
