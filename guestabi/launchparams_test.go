package guestabi

import (
	"bytes"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/verity"
)

const ca = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func good() LaunchParams {
	return LaunchParams{WorkloadID: "web", KBSURL: "https://127.0.0.1:8443", KBSCA: ca, TEE: tee.EmulatedSNP, Resource: "default/krun-tee/web"}
}

func TestFormatParseRoundTrip(t *testing.T) {
	p := good()
	s, err := p.Format()
	if err != nil {
		t.Fatal(err)
	}
	want := "krun.workload=web krun.kbs=https://127.0.0.1:8443 krun.kbs_ca=" + ca + " krun.tee=emulated-snp krun.resource=default/krun-tee/web"
	if s != want {
		t.Fatalf("Format:\n got %s\nwant %s", s, want)
	}
	back, err := ParseLaunchParams("console=ttyS0 quiet " + s + " virtio_mmio.device=4K@0xd0000000:5")
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(&p) {
		t.Fatalf("round trip: %+v != %+v", *back, p)
	}
	u := LaunchParams{WorkloadID: "w", KBSURL: "http://127.0.0.1:8080", TEE: tee.None, Resource: "a/b/c", Unpinned: true}
	s, err = u.Format()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseLaunchParams(s); err != nil || !back.Unpinned || back.KBSCA != "" {
		t.Fatalf("unpinned round trip: %+v %v", back, err)
	}
}

func TestRejects(t *testing.T) {
	mod := func(f func(*LaunchParams)) LaunchParams { p := good(); f(&p); return p }
	cases := []struct {
		name string
		p    LaunchParams
		want string
	}{
		{"no workload", mod(func(p *LaunchParams) { p.WorkloadID = "" }), "workload id \"\""},
		{"space", mod(func(p *LaunchParams) { p.KBSURL = "https://a b" }), "whitespace"},
		{"quote", mod(func(p *LaunchParams) { p.Resource = `a/b/"c` }), "invalid part"},
		{"colon id", mod(func(p *LaunchParams) { p.WorkloadID = "team:web" }), "workload id"},
		{"tee", mod(func(p *LaunchParams) { p.TEE = "sev" }), "tee \"sev\""},
		{"url", mod(func(p *LaunchParams) { p.KBSURL = "ftp://x" }), "not an http(s)://host[:port] URL"},
		{"http pinned", mod(func(p *LaunchParams) { p.KBSURL = "http://127.0.0.1:1" }), "plain http"},
		{"resource", mod(func(p *LaunchParams) { p.Resource = "a/b" }), "repository/type/tag"},
		{"no ca", mod(func(p *LaunchParams) { p.KBSCA = "" }), "no KBS CA fingerprint"},
		{"bad ca", mod(func(p *LaunchParams) { p.KBSCA = "zz" }), "64 lowercase hex digits"},
		{"upper ca", mod(func(p *LaunchParams) { p.KBSCA = strings.ToUpper(ca) }), "64 lowercase hex digits"},
		{"both", mod(func(p *LaunchParams) { p.Unpinned = true }), "both"},
		{"long", mod(func(p *LaunchParams) { p.WorkloadID = strings.Repeat("a", 129) }), "1-128"},
	}
	for _, c := range cases {
		if _, err := c.p.Format(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	p := good()
	s, _ := p.Format()
	cases := []struct{ in, want string }{
		{"console=ttyS0", "no krun.* launch parameters"},
		{s + " krun.tee=snp", "given twice"},
		{"krun.workload=a krun.tee=none", "missing krun.kbs, krun.resource"},
		{s + " krun.kbs_unpinned=yes", "want 1"},
		{strings.Replace(s, "krun.tee=emulated-snp", "krun.tee=x", 1), "tee \"x\""},
	}
	for _, c := range cases {
		if _, err := ParseLaunchParams(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.in, err, c.want)
		}
	}
}

func FuzzParseLaunchParams(f *testing.F) {
	p := good()
	s, _ := p.Format()
	f.Add(s)
	f.Add("krun.workload= krun.kbs=https://x krun.tee=none krun.resource=a/b/c krun.kbs_unpinned=1")
	v := good()
	v.Verity = testVerity()
	s, _ = v.Format()
	f.Add(s)
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseLaunchParams(in)
		if err != nil {
			return
		}
		// Whatever parses must format back to something that parses equal.
		out, err := got.Format()
		if err != nil {
			t.Fatalf("parsed %+v does not format: %v", got, err)
		}
		again, err := ParseLaunchParams(out)
		if err != nil || !again.Equal(got) {
			t.Fatalf("reparse %q: %+v %v", out, again, err)
		}
	})
}

const (
	verityRoot = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	veritySalt = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
)

func testVerity() *verity.Params {
	p, err := verity.ParseParams(verityRoot + ":" + veritySalt + ":25600:104857600")
	if err != nil {
		panic(err)
	}
	return p
}

func TestVerityRoundTrip(t *testing.T) {
	p := good()
	p.Verity = testVerity()
	s, err := p.Format()
	if err != nil {
		t.Fatal(err)
	}
	if want := " krun.resource=default/krun-tee/web krun.verity=" + verityRoot + ":" + veritySalt + ":25600:104857600"; !strings.HasSuffix(s, want) {
		t.Fatalf("Format: %s", s)
	}
	back, err := ParseLaunchParams(s)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(&p) || back.Verity.DataBlocks != 25600 || back.Verity.HashStartBlock() != 25601 {
		t.Fatalf("round trip: %+v", back.Verity)
	}
	// Equal tells verity from none and one tree from another.
	plain := good()
	if back.Equal(&plain) || plain.Equal(back) {
		t.Fatal("a verity configuration equals one without")
	}
	other := good()
	other.Verity = testVerity()
	other.Verity.RootHash = bytes.Repeat([]byte{1}, 32)
	if back.Equal(&other) {
		t.Fatal("different root hashes are equal")
	}
	for in, want := range map[string]string{
		s + " krun.verity=" + verityRoot + ":" + veritySalt + ":1:4096": "given twice",
		strings.Replace(s, ":25600:", ":0:", 1):                         "krun.verity: verity: 0 data blocks",
		strings.Replace(s, veritySalt, "", 1):                           "krun.verity: verity: salt is 0 bytes",
		strings.Replace(s, verityRoot, strings.ToUpper(verityRoot), 1):  "lowercase",
		strings.Replace(s, ":104857600", ":4096", 1):                    "inside",
		strings.Replace(s, ":104857600", "", 1):                         "not <root>",
	} {
		if _, err := ParseLaunchParams(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
	bad := good()
	bad.Verity = &verity.Params{}
	if _, err := bad.Format(); err == nil || !strings.Contains(err.Error(), "krun.verity") {
		t.Fatalf("invalid verity formatted: %v", err)
	}
}
