package luks

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

func testVerity(t *testing.T, dataBlocks uint64) *verity.Params {
	t.Helper()
	return &verity.Params{RootHash: bytes.Repeat([]byte{0xee}, 32), Salt: bytes.Repeat([]byte{0x5a}, 32),
		DataBlocks: dataBlocks, HashOffset: dataBlocks * verity.BlockSize}
}

func TestLaunchConfigVerity(t *testing.T) {
	dev, v, _ := newTestVolume(t, []byte("pw"))
	// The 1 MiB payload holds 200 data blocks plus superblock and tree.
	lc := &launchconfig.Config{WorkloadID: "app", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 256, Verity: testVerity(t, 200)}
	if err := v.SetLaunchConfig(dev, lc); err != nil {
		t.Fatal(err)
	}
	raw := v.Tokens()[v.LaunchConfigTokenID()]
	want := `"verity":{"root_hash":"` + strings.Repeat("ee", 32) + `","salt":"` + strings.Repeat("5a", 32) + `","data_blocks":200,"hash_offset":819200}`
	if !strings.Contains(string(raw), want) {
		t.Fatalf("token %s", raw)
	}
	v2, err := Open(dev, testSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := v2.ReadLaunchConfig()
	if err != nil || got.Verity == nil || !got.Verity.Equal(lc.Verity) {
		t.Fatalf("ReadLaunchConfig = %+v, %v", got, err)
	}
	// A tree beyond the payload is refused when stored and when read.
	big := *lc
	big.Verity = testVerity(t, 255)
	if err := v.SetLaunchConfig(dev, &big); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("oversized tree stored: %v", err)
	}
	bigRaw, _ := json.Marshal(launchToken{Type: LaunchConfigTokenType, Keyslots: []string{}, Config: big})
	if err := v.SetToken(dev, v.LaunchConfigTokenID(), bigRaw); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadLaunchConfig(); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("oversized tree read: %v", err)
	}
	bad := *lc
	bad.Verity = &verity.Params{RootHash: []byte{1}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "root hash") {
		t.Fatalf("invalid verity validated: %v", err)
	}
}

func TestLaunchConfigTokenVerityJSON(t *testing.T) {
	// A token written before verity images existed still reads, without one.
	old := `{"type":"krun-tee","keyslots":[],"workload_id":"a","tee":"snp","vcpus":1,"memory_mib":64}`
	c, err := ParseLaunchConfigToken([]byte(old))
	if err != nil || c.Verity != nil {
		t.Fatalf("old token: %+v %v", c, err)
	}
	good := strings.TrimSuffix(old, "}") + `,"verity":{"root_hash":"` + strings.Repeat("ee", 32) + `","salt":"` + strings.Repeat("5a", 32) + `","data_blocks":8,"hash_offset":32768}}`
	if c, err := ParseLaunchConfigToken([]byte(good)); err != nil || c.Verity == nil || c.Verity.DataBlocks != 8 {
		t.Fatalf("verity token: %+v %v", c, err)
	}
	for _, bad := range []string{
		strings.Replace(good, `"data_blocks":8`, `"data_blocks":0`, 1),
		strings.Replace(good, `"hash_offset":32768`, `"hash_offset":4096`, 1),
		strings.Replace(good, `"salt":"5a`, `"salt":"5`, 1),
		strings.Replace(good, `"data_blocks":8`, `"data_blocks":"8"`, 1),
		strings.Replace(good, `"data_blocks":8`, `"data_blocks":8,"fec":1`, 1),
		strings.TrimSuffix(old, "}") + `,"verity":"x"}`,
	} {
		if _, err := ParseLaunchConfigToken([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
