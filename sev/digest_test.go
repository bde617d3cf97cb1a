package sev

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

type page struct {
	gpa  uint64
	typ  layout.PageType
	data []byte
}

func patternPage() []byte {
	p := make([]byte, layout.PageSize)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// TestLaunchDigestVectors checks DESIGN 3's vectors (computed with an
// independent implementation, sev-snp-measure's GCTX, zero start digest).
func TestLaunchDigestVectors(t *testing.T) {
	zero := make([]byte, layout.PageSize)
	cases := []struct {
		name  string
		pages []page
		want  string
	}{
		{"normal zero page at 0", []page{{0, layout.PageNormal, zero}},
			"9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb687267b97808b27f8f471d943bc6f53a20"},
		{"zero page at 0", []page{{0, layout.PageZero, nil}},
			"70c0ecaab9608f14ebf8ac6f0f07bcd8728f4e2ab30382b539b4de4de904ca9f8ebdf4b2cd3cd84dd996bd55dd794676"},
		{"vmsa of zeros", []page{{VMSAGPA, layout.PageVMSA, zero}},
			"f4577da9b848673216afc3909e5ea7aa80150dda441526874cd2b0282894709b46484c13a07221aefbedfff667199259"},
		{"secrets then cpuid", []page{{0x5000, layout.PageSecrets, nil}, {0x6000, layout.PageCPUID, nil}},
			"780a7dfe5847360de8bccf2e8cb904de865665dd829df0ba397cd7d76600a61141aa105ab0cb27941307105a431307ea"},
		{"pattern page at 0xffff0000", []page{{0xffff0000, layout.PageNormal, patternPage()}},
			"72ffc0bc628c53b13f6dee96f6c3b733f4ad196d4f97c3485e0851a0a1dc82678cba29be4adbda53bfe6922fb1a95f67"},
	}
	for _, c := range cases {
		var d Digest
		for _, p := range c.pages {
			if err := d.Update(p.gpa, p.typ, p.data); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
		}
		got := d.Sum()
		if hex.EncodeToString(got[:]) != c.want {
			t.Errorf("%s: got %x, want %s", c.name, got, c.want)
		}
	}
}

// TestPageInfoLayout builds PAGE_INFO by hand from the ABI table, as a
// second check of the field offsets.
func TestPageInfoLayout(t *testing.T) {
	var d Digest
	p := patternPage()
	if err := d.Update(0x1234000, layout.PageNormal, p); err != nil {
		t.Fatal(err)
	}
	var pi [0x70]byte
	c := sha512.Sum384(p)
	copy(pi[0x30:], c[:])
	binary.LittleEndian.PutUint16(pi[0x60:], 0x70)
	pi[0x62] = 1
	binary.LittleEndian.PutUint64(pi[0x68:], 0x1234000)
	if want := sha512.Sum384(pi[:]); d.Sum() != want {
		t.Fatalf("digest %x, want %x", d.Sum(), want)
	}
}

func TestDigestRejectsBadPages(t *testing.T) {
	var d Digest
	if err := d.Update(0, layout.PageNormal, make([]byte, 100)); err == nil {
		t.Error("short normal page accepted")
	}
	if err := d.Update(0, layout.PageType(9), nil); err == nil {
		t.Error("unknown page type accepted")
	}
	if _, err := LaunchDigest(&layout.Layout{}, 0); err == nil {
		t.Error("layout without vCPUs accepted")
	}
}

// TestLaunchDigestMatchesPages checks LaunchDigest equals folding the
// records Pages emits, and that order, GPA, type, contents, vCPU state and
// features all change the result.
func TestLaunchDigestMatchesPages(t *testing.T) {
	mk := func() *layout.Layout {
		l := &layout.Layout{MemorySize: 64 << 20}
		must(t, l.Add(layout.Region{Name: "a", GPA: 0x100000, Type: layout.PageNormal, Data: bytes.Repeat([]byte{1}, 5000)}))
		must(t, l.Add(layout.Region{Name: "z", GPA: 0x8000, Type: layout.PageZero, Size: 0x2000}))
		must(t, l.Add(layout.Region{Name: "s", GPA: 0x5000, Type: layout.PageSecrets, Size: 0x1000}))
		l.VCPUs = []layout.VCPUState{boot.BootCPUState(0x1000000), boot.ResetCPUState()}
		return l
	}
	base, err := LaunchDigest(mk(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var d Digest
	n := 0
	err = Pages(mk(), 0, func(r PageRecord) error {
		n++
		var zero [48]byte
		if r.SHA384 == zero {
			return d.Update(r.GPA, r.Type, nil)
		}
		d.updateContents(r.GPA, r.Type, &r.SHA384)
		return nil
	})
	if err != nil || d.Sum() != base || n != 2+2+1+2 {
		t.Fatalf("Pages fold %x (%d records, %v), LaunchDigest %x", d.Sum(), n, err, base)
	}
	mutations := map[string]func(l *layout.Layout) uint64{
		"swap order":   func(l *layout.Layout) uint64 { l.Regions[0], l.Regions[1] = l.Regions[1], l.Regions[0]; return 0 },
		"content":      func(l *layout.Layout) uint64 { l.Regions[0].Data[4999] = 2; return 0 },
		"gpa":          func(l *layout.Layout) uint64 { l.Regions[2].GPA = 0x6000; return 0 },
		"type":         func(l *layout.Layout) uint64 { l.Regions[2].Type = layout.PageCPUID; return 0 },
		"vcpu rip":     func(l *layout.Layout) uint64 { l.VCPUs[0].RIP++; return 0 },
		"vcpu count":   func(l *layout.Layout) uint64 { l.VCPUs = l.VCPUs[:1]; return 0 },
		"vmsafeatures": func(l *layout.Layout) uint64 { return 1 << 5 },
	}
	for name, m := range mutations {
		l := mk()
		f := m(l)
		got, err := LaunchDigest(l, f)
		if err != nil || got == base {
			t.Errorf("%s: digest unchanged or error %v", name, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestVMSAFields(t *testing.T) {
	s := boot.BootCPUState(0x1000000)
	s.RDX = 0x800f12
	v, err := VMSA(s, 0x21)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	checks := []struct {
		name string
		off  int
		size int
		want uint64
	}{
		{"cs selector", vmsaCS, 2, uint64(s.CS.Selector)},
		{"cs attrib", vmsaCS + 2, 2, uint64(s.CS.Attrib)},
		{"gdtr limit", vmsaGDTR + 4, 4, uint64(s.GDTR.Limit)},
		{"gdtr base", vmsaGDTR + 8, 8, s.GDTR.Base},
		{"efer has SVME", vmsaEFER, 8, s.EFER | 0x1000},
		{"cr4 has MCE", vmsaCR4, 8, s.CR4 | 0x40},
		{"cr3", vmsaCR3, 8, s.CR3},
		{"cr0", vmsaCR0, 8, s.CR0},
		{"rip", vmsaRIP, 8, 0x1000000},
		{"rsp", vmsaRSP, 8, s.RSP},
		{"rsi", vmsaRSI, 8, s.RSI},
		{"rdx", vmsaRDX, 8, 0x800f12},
		{"g_pat", vmsaGPAT, 8, 0x0007040600070406},
		{"sev_features", vmsaSEVFeatures, 8, 0x21},
		{"xcr0", vmsaXCR0, 8, 1},
		{"mxcsr", vmsaMXCSR, 4, 0x1f80},
		{"fcw", vmsaX87FCW, 2, 0x37f},
		{"dr6", vmsaDR6, 8, 0xffff0ff0},
		{"dr7", vmsaDR7, 8, 0x400},
	}
	for _, c := range checks {
		var got uint64
		switch c.size {
		case 2:
			got = uint64(le.Uint16(v[c.off:]))
		case 4:
			got = uint64(le.Uint32(v[c.off:]))
		default:
			got = le.Uint64(v[c.off:])
		}
		if got != c.want {
			t.Errorf("%s at %#x: %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	// An all-zero state still gets the architectural defaults.
	z, _ := VMSA(layout.VCPUState{}, 1)
	if le.Uint32(z[vmsaMXCSR:]) != 0x1f80 || le.Uint16(z[vmsaX87FCW:]) != 0x37f || le.Uint64(z[vmsaRFLAGS:]) != 2 {
		t.Error("zero state did not get reset defaults")
	}
	// Reset-state CR0 0x60000010 loses CD/NW as KVM does.
	r, _ := VMSA(boot.ResetCPUState(), 1)
	if le.Uint64(r[vmsaCR0:]) != 0x10 {
		t.Errorf("reset cr0 %#x, want 0x10", le.Uint64(r[vmsaCR0:]))
	}
	if _, err := VMSA(s, 0); err == nil {
		t.Error("SEV_FEATURES without SNPActive accepted")
	}
	armed := s
	armed.DR7 = 0x401
	if _, err := VMSA(armed, 1); err == nil {
		t.Error("VMSA with DR7 breakpoints accepted (KVM refuses to launch it)")
	}
	withCR2 := s
	withCR2.CR2 = 0x1234
	if c, _ := VMSA(withCR2, 0x21); !bytes.Equal(c, v) {
		t.Error("CR2 changed the VMSA; KVM does not sync it before launch")
	}
}

// BenchmarkLaunchDigest compares the launch digest of a 16 MiB kernel
// region with plain streaming SHA-384 over the same bytes. Each iteration
// runs both, back to back, so load from other processes hits both alike;
// the %-of-sha384 metric is digest throughput as a share of SHA-384's.
func BenchmarkLaunchDigest(b *testing.B) {
	const size = 16 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	l := &layout.Layout{MemorySize: 64 << 20}
	if err := l.Add(layout.Region{Name: "k", GPA: 0x100000, Type: layout.PageNormal, Data: data}); err != nil {
		b.Fatal(err)
	}
	l.VCPUs = []layout.VCPUState{boot.BootCPUState(0x100000)}
	var plain, digest time.Duration
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		h := sha512.New384()
		h.Write(data)
		h.Sum(nil)
		t1 := time.Now()
		if _, err := LaunchDigest(l, 0); err != nil {
			b.Fatal(err)
		}
		plain += t1.Sub(t0)
		digest += time.Since(t1)
	}
	b.ReportMetric(float64(size)*float64(b.N)/plain.Seconds()/1e6, "sha384-MB/s")
	b.ReportMetric(float64(size)*float64(b.N)/digest.Seconds()/1e6, "digest-MB/s")
	b.ReportMetric(100*plain.Seconds()/digest.Seconds(), "%-of-sha384")
}
