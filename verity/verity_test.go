package verity

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// memDev is an in-memory device that grows on write.
type memDev struct{ b []byte }

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// testData is n blocks of reproducible content, some of them zero.
func testData(n uint64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n*BlockSize)
	for i := uint64(0); i < n; i++ {
		if i%5 == 3 {
			continue
		}
		for j := i * BlockSize; j < (i+1)*BlockSize; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[j+uint64(k)] = byte(v >> (8 * k))
			}
		}
	}
	return b
}

func testSalt() []byte {
	s := make([]byte, 32)
	for i := range s {
		s[i] = byte(0xa0 + i)
	}
	return s
}

var testUUID = [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 1, 2, 3, 4, 5, 6, 7}

// formatImage builds data || superblock || tree in one device, as mkimage lays
// out the decrypted payload.
func formatImage(t testing.TB, data []byte) (*memDev, *Params) {
	t.Helper()
	n := uint64(len(data) / BlockSize)
	dev := &memDev{b: bytes.Clone(data)}
	p, err := Format(bytes.NewReader(data), n, dev, n*BlockSize, FormatOptions{Salt: testSalt(), UUID: testUUID})
	if err != nil {
		t.Fatal(err)
	}
	if want := n*BlockSize + HashAreaSize(n); uint64(len(dev.b)) != want || p.End() != want {
		t.Fatalf("%d blocks: image is %d bytes, End %d, want %d", n, len(dev.b), p.End(), want)
	}
	return dev, p
}

func TestGeometry(t *testing.T) {
	for _, c := range []struct {
		n      uint64
		levels int
		blocks uint64
	}{
		{1, 0, 0}, {2, 1, 1}, {128, 1, 1}, {129, 2, 3}, {300, 2, 4},
		{128 * 128, 2, 129}, {128*128 + 1, 3, 1 + 2 + 129},
	} {
		g := newGeometry(c.n)
		if g.levels != c.levels || g.blocks != c.blocks {
			t.Errorf("%d data blocks: %d levels, %d blocks; want %d, %d", c.n, g.levels, g.blocks, c.levels, c.blocks)
		}
		if c.levels > 0 && (g.size[c.levels-1] != 1 || g.start[c.levels-1] != 0) {
			t.Errorf("%d data blocks: top level %d blocks at %d", c.n, g.size[c.levels-1], g.start[c.levels-1])
		}
	}
	if g := newGeometry(MaxDataBlocks); g.levels != 6 {
		t.Errorf("max: %d levels", g.levels)
	}
}

func TestSingleBlockRootIsItsDigest(t *testing.T) {
	data := testData(1, 9)
	_, p := formatImage(t, data)
	d := saltedDigest(testSalt(), data)
	if !bytes.Equal(p.RootHash, d[:]) {
		t.Fatal("root of a one-block tree is not the block's salted digest")
	}
}

func TestTwoLevelRootByHand(t *testing.T) {
	// 129 blocks: level 0 has two blocks, level 1 one, computed here
	// independently of the builder.
	data := testData(129, 3)
	salt := testSalt()
	var l0 [2][BlockSize]byte
	for i := range 129 {
		d := saltedDigest(salt, data[i*BlockSize:(i+1)*BlockSize])
		copy(l0[i/128][(i%128)*32:], d[:])
	}
	var l1 [BlockSize]byte
	for i := range 2 {
		d := saltedDigest(salt, l0[i][:])
		copy(l1[i*32:], d[:])
	}
	root := saltedDigest(salt, l1[:])
	dev, p := formatImage(t, data)
	if !bytes.Equal(p.RootHash, root[:]) {
		t.Fatal("root hash differs from the hand-computed one")
	}
	tree := dev.b[130*BlockSize:]
	if !bytes.Equal(tree[:BlockSize], l1[:]) || !bytes.Equal(tree[BlockSize:2*BlockSize], l0[0][:]) || !bytes.Equal(tree[2*BlockSize:], l0[1][:]) {
		t.Fatal("tree blocks are not top level first")
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	for _, n := range []uint64{1, 2, 129, 300} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			data := testData(n, n)
			dev, p := formatImage(t, data)
			v, err := NewVerifier(dev, p)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.VerifyAll(bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			// A flipped bit in any data block.
			last := n - 1
			for _, i := range []uint64{0, last} {
				bad := bytes.Clone(data[i*BlockSize : (i+1)*BlockSize])
				bad[77] ^= 1
				if err := v.VerifyBlock(i, bad); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("block %d flipped: %v", i, err)
				}
			}
			// Another block's content in the right place.
			if n > 1 {
				if err := v.VerifyBlock(0, data[BlockSize:2*BlockSize]); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("swapped block: %v", err)
				}
			}
			// A flipped byte anywhere in the tree, padding included, fails
			// some block's check (a fresh verifier: nothing cached).
			g := newGeometry(n)
			for hb := uint64(0); hb < g.blocks; hb++ {
				for _, off := range []uint64{0, BlockSize - 1} {
					bad := &memDev{b: bytes.Clone(dev.b)}
					bad.b[(p.HashStartBlock()+hb)*BlockSize+off] ^= 0x80
					v2, _ := NewVerifier(bad, p)
					if err := v2.VerifyAll(bytes.NewReader(data)); !errors.Is(err, ErrCorrupt) {
						t.Fatalf("hash block %d byte %d flipped: %v", hb, off, err)
					}
				}
			}
			// Another root.
			q := *p
			q.RootHash = bytes.Clone(p.RootHash)
			q.RootHash[0] ^= 1
			v3, _ := NewVerifier(dev, &q)
			if err := v3.VerifyBlock(0, data[:BlockSize]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("wrong root: %v", err)
			}
			if err := v.VerifyBlock(n, data[:BlockSize]); err == nil || errors.Is(err, ErrCorrupt) {
				t.Fatalf("block past the end: %v", err)
			}
		})
	}
}

func TestFormatErrors(t *testing.T) {
	dev := &memDev{}
	if _, err := Format(bytes.NewReader(make([]byte, 3*BlockSize-1)), 3, dev, 3*BlockSize, FormatOptions{}); err == nil || !strings.Contains(err.Error(), "data ends in block 2") {
		t.Fatalf("short data: %v", err)
	}
	if _, err := Format(bytes.NewReader(nil), 3, dev, 2*BlockSize, FormatOptions{}); err == nil || !strings.Contains(err.Error(), "inside") {
		t.Fatalf("overlap: %v", err)
	}
	if _, err := Format(bytes.NewReader(nil), 1, dev, BlockSize, FormatOptions{Salt: []byte{1}}); err == nil || !strings.Contains(err.Error(), "salt") {
		t.Fatalf("short salt: %v", err)
	}
	if _, err := Format(bytes.NewReader(nil), 0, dev, 0, FormatOptions{}); err == nil {
		t.Fatal("zero blocks accepted")
	}
	// The default salt is random and 32 bytes, the UUID random.
	data := testData(2, 1)
	a, b := &memDev{}, &memDev{}
	pa, err := Format(bytes.NewReader(data), 2, a, 2*BlockSize, FormatOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := Format(bytes.NewReader(data), 2, b, 2*BlockSize, FormatOptions{})
	if len(pa.Salt) != DefaultSalt || bytes.Equal(pa.Salt, pb.Salt) || bytes.Equal(pa.RootHash, pb.RootHash) {
		t.Fatal("default salt is not fresh")
	}
	sa, err := ReadSuperblock(a, 2*BlockSize)
	if err != nil || sa.UUID == [16]byte{} || sa.UUID[6]>>4 != 4 {
		t.Fatalf("superblock %+v %v", sa, err)
	}
}

func TestParamsString(t *testing.T) {
	_, p := formatImage(t, testData(3, 2))
	s := p.String()
	want := hex.EncodeToString(p.RootHash) + ":" + hex.EncodeToString(testSalt()) + ":3:12288"
	if s != want {
		t.Fatalf("String %s, want %s", s, want)
	}
	q, err := ParseParams(s)
	if err != nil || !q.Equal(p) {
		t.Fatalf("round trip %+v %v", q, err)
	}
	if p.HashStartBlock() != 4 || p.DataSize() != 12288 {
		t.Fatalf("hash start %d data size %d", p.HashStartBlock(), p.DataSize())
	}
	root, salt := hex.EncodeToString(p.RootHash), hex.EncodeToString(testSalt())
	for in, want := range map[string]string{
		"":                               "not <root>",
		root + ":" + salt + ":3":         "not <root>",
		root + ":" + salt + ":3:12288:1": "not <root>",
		strings.ToUpper(root) + ":" + salt + ":3:12288":      "lowercase",
		root[2:] + ":" + salt + ":3:12288":                   "root hash is 31 bytes",
		root + ":" + salt[:30] + ":3:12288":                  "salt is 15 bytes",
		root + ":" + salt + "0:3:12288":                      "not hex",
		root + ":" + salt + ":03:12288":                      "canonical",
		root + ":" + salt + ":+3:12288":                      "canonical",
		root + ":" + salt + ":0:12288":                       "out of range",
		root + ":" + salt + ":3:12287":                       "multiple",
		root + ":" + salt + ":3:8192":                        "inside",
		root + ":" + salt + ":3:99999999999999999999":        "out of range",
		root + ":" + salt + ":3:" + strings.Repeat("9", 600): "too long",
	} {
		if _, err := ParseParams(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func TestParamsJSON(t *testing.T) {
	_, p := formatImage(t, testData(3, 2))
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"root_hash":"` + hex.EncodeToString(p.RootHash) + `","salt":"` + hex.EncodeToString(testSalt()) + `","data_blocks":3,"hash_offset":12288}`
	if string(b) != want {
		t.Fatalf("JSON %s", b)
	}
	var q Params
	if err := json.Unmarshal(b, &q); err != nil || !q.Equal(p) {
		t.Fatalf("round trip %+v %v", q, err)
	}
	for _, bad := range []string{
		strings.Replace(want, `"data_blocks":3`, `"data_blocks":0`, 1),
		strings.Replace(want, `"data_blocks":3`, `"data_blocks":-3`, 1),
		strings.Replace(want, `"salt":"a0`, `"salt":"A0`, 1),
		strings.Replace(want, `}`, `,"extra":1}`, 1),
		`{"root_hash":"00"}`,
		`[]`,
	} {
		if err := json.Unmarshal([]byte(bad), &q); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if _, err := json.Marshal(&Params{}); err == nil {
		t.Error("marshalled invalid params")
	}
}

func TestSuperblock(t *testing.T) {
	dev, p := formatImage(t, testData(300, 4))
	sb, err := ReadSuperblock(dev, int64(p.HashOffset))
	if err != nil {
		t.Fatal(err)
	}
	if sb.DataBlocks != 300 || !bytes.Equal(sb.Salt, testSalt()) || sb.UUID != testUUID {
		t.Fatalf("superblock %+v", sb)
	}
	if err := sb.Check(p); err != nil {
		t.Fatal(err)
	}
	other := *sb
	other.DataBlocks = 299
	if err := other.Check(p); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("mismatched blocks: %v", err)
	}
	other = *sb
	other.Salt = []byte("x")
	if err := other.Check(p); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("mismatched salt: %v", err)
	}
	raw := dev.b[p.HashOffset : p.HashOffset+SuperblockSize]
	for name, mut := range map[string]func(b []byte){
		"signature": func(b []byte) { b[0] = 'V' },
		"version":   func(b []byte) { b[8] = 2 },
		"hash type": func(b []byte) { b[12] = 0 },
		"algorithm": func(b []byte) { copy(b[32:], "sha1\x00\x00") },
		"alg tail":  func(b []byte) { b[40] = 'x' },
		"data bs":   func(b []byte) { b[65] = 2 },
		"hash bs":   func(b []byte) { b[69] = 2 },
		"blocks":    func(b []byte) { clear(b[72:80]) },
		"salt size": func(b []byte) { b[80], b[81] = 0x01, 0x01 },
	} {
		b := bytes.Clone(raw)
		mut(b)
		if _, err := ParseSuperblock(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseSuperblock(raw[:511]); err == nil {
		t.Error("short superblock accepted")
	}
}

func FuzzParseSuperblock(f *testing.F) {
	sb, _ := (&Superblock{UUID: testUUID, DataBlocks: 300, Salt: testSalt()}).MarshalBinary()
	f.Add(sb)
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSuperblock(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to the same meaningful fields.
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed %+v does not encode: %v", s, err)
		}
		again, err := ParseSuperblock(enc)
		if err != nil || again.DataBlocks != s.DataBlocks || !bytes.Equal(again.Salt, s.Salt) || again.UUID != s.UUID {
			t.Fatalf("re-parse %+v %v", again, err)
		}
	})
}

func FuzzParseParams(f *testing.F) {
	_, p := formatImage(f, testData(3, 2))
	f.Add(p.String())
	f.Add("00:00:1:4096")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseParams(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("%q parsed but formats as %q", s, p.String())
		}
		if p.End() < p.HashOffset || p.HashStartBlock()*BlockSize <= p.HashOffset {
			t.Fatalf("geometry of %q overflows", s)
		}
	})
}

// The interoperability tests below run veritysetup (Debian cryptsetup-bin)
// on regular files; it needs no device-mapper for format and verify.

func veritysetup(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Skip("veritysetup not installed (apt-get install cryptsetup-bin)")
	}
	return path
}

func uuidString(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func TestInteropVeritysetupFormatMatches(t *testing.T) {
	vs := veritysetup(t)
	dir := t.TempDir()
	for _, n := range []uint64{1, 2, 128, 129, 300, 128*128 + 3} {
		data := testData(n, n+100)
		ours, p := formatImage(t, data)
		theirs := filepath.Join(dir, fmt.Sprintf("img%d", n))
		if err := os.WriteFile(theirs, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(vs, "format", theirs, theirs, "--hash-offset", fmt.Sprint(n*BlockSize),
			"--data-blocks", fmt.Sprint(n), "--salt", hex.EncodeToString(testSalt()), "--uuid", uuidString(testUUID),
			"--hash", "sha256", "--data-block-size", "4096", "--hash-block-size", "4096", "--format", "1").CombinedOutput()
		if err != nil {
			t.Fatalf("%d blocks: veritysetup format: %v\n%s", n, err, out)
		}
		if !strings.Contains(string(out), hex.EncodeToString(p.RootHash)) {
			t.Fatalf("%d blocks: veritysetup's root hash differs from ours %x:\n%s", n, p.RootHash, out)
		}
		got, err := os.ReadFile(theirs)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ours.b) {
			t.Fatalf("%d blocks: veritysetup wrote %d bytes, we %d; they differ", n, len(got), len(ours.b))
		}
	}
}

func TestInteropVeritysetupVerifiesOurs(t *testing.T) {
	vs := veritysetup(t)
	dir := t.TempDir()
	const n = 1000
	data := testData(n, 77)
	dev, p := formatImage(t, data)
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, dev.b, 0o600); err != nil {
		t.Fatal(err)
	}
	verify := func(extra ...string) error {
		args := append([]string{"verify", img, img, hex.EncodeToString(p.RootHash)}, extra...)
		out, err := exec.Command(vs, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	withSB := []string{"--hash-offset", fmt.Sprint(p.HashOffset)}
	// Without the superblock, every parameter given on the command line, as
	// the guest does from the measured launch configuration.
	noSB := []string{"--no-superblock", "--hash-offset", fmt.Sprint(p.HashStartBlock() * BlockSize),
		"--data-blocks", fmt.Sprint(n), "--salt", hex.EncodeToString(p.Salt), "--hash", "sha256",
		"--data-block-size", "4096", "--hash-block-size", "4096", "--format", "1"}
	for _, args := range [][]string{withSB, noSB} {
		if err := verify(args...); err != nil {
			t.Fatalf("veritysetup verify %v: %v", args, err)
		}
	}
	// And it refuses a flipped byte in the data, so the check above is real.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{data[500*BlockSize+9] ^ 4}, 500*BlockSize+9); err != nil {
		t.Fatal(err)
	}
	if err := verify(withSB...); err == nil {
		t.Fatal("veritysetup verify accepted a corrupted image")
	}
	// Our verifier agrees, reading the same file.
	v, err := NewVerifier(f, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.VerifyAll(io.NewSectionReader(f, 0, int64(p.DataSize()))); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "data block 500") {
		t.Fatalf("our verifier: %v", err)
	}
}

func BenchmarkFormat(b *testing.B) {
	const n = 4096 // 16 MiB
	data := testData(n, 5)
	dev := &memDev{b: make([]byte, n*BlockSize+HashAreaSize(n))}
	b.SetBytes(n * BlockSize)
	for b.Loop() {
		if _, err := Format(bytes.NewReader(data), n, dev, n*BlockSize, FormatOptions{Salt: testSalt(), UUID: testUUID}); err != nil {
			b.Fatal(err)
		}
	}
}
