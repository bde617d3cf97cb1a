package imagebuild

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/internal/pemfile"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/tee"
)

func TestWorkload(t *testing.T) {
	m := &Measurements{SNP: strings.Repeat("aa", 48), MRTD: strings.Repeat("bb", 48),
		RTMRs: [4]string{strings.Repeat("01", 48), strings.Repeat("02", 48), strings.Repeat("03", 48), strings.Repeat("04", 48)}}
	for _, tc := range []struct {
		tee               tee.TEE
		wantTEE, wantMeas string
		emulated, rtmrs   bool
		err               string
	}{
		{tee: tee.SNP, wantTEE: "snp", wantMeas: m.SNP},
		{tee: tee.EmulatedSNP, wantTEE: "snp", wantMeas: m.SNP, emulated: true},
		{tee: tee.TDX, wantTEE: "tdx", wantMeas: m.MRTD, rtmrs: true},
		{tee: tee.EmulatedTDX, wantTEE: "tdx", wantMeas: m.MRTD, emulated: true, rtmrs: true},
		{tee: tee.None, err: "attests nothing"},
	} {
		lc := &launchconfig.Config{WorkloadID: "w1", TEE: tc.tee, ResourcePath: "default/krun-tee/w1", VCPUs: 1, MemoryMiB: 512}
		w, err := Workload(lc, m)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.tee, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.tee, err)
			continue
		}
		if w.TEE != tc.wantTEE || w.Measurements[0] != tc.wantMeas || w.AllowEmulated != tc.emulated ||
			(len(w.RTMRs) == 1) != tc.rtmrs || w.Resources[0] != lc.ResourcePath || w.ID != "w1" {
			t.Errorf("%s: %+v", tc.tee, w)
		}
		if tc.rtmrs && strings.Join(w.RTMRs[0], ",") != strings.Join(m.RTMRs[:], ",") {
			t.Errorf("%s: rtmrs %v", tc.tee, w.RTMRs)
		}
	}
	lc := &launchconfig.Config{WorkloadID: "w1", TEE: tee.SNP, VCPUs: 1, MemoryMiB: 512}
	if _, err := Workload(lc, m); err == nil || !strings.Contains(err.Error(), "no KBS resource path") {
		t.Errorf("no resource path: %v", err)
	}
	lc.ResourcePath = "default/krun-tee/w1"
	if _, err := Workload(lc, &Measurements{SNP: "abcd"}); err == nil {
		t.Error("short measurement accepted")
	}
	// The registration goes through the launch-configuration validator: a
	// workload id the image could never carry is not registered either.
	lc.WorkloadID = "team:web"
	if _, err := Workload(lc, m); err == nil || !strings.Contains(err.Error(), "workload id") {
		t.Errorf("team:web: %v", err)
	}
}

func TestDefaultWorkloadID(t *testing.T) {
	for in, want := range map[string]string{"/x/web.luks": "web", "/x/.hidden": "workload", "/x/a b.img": "a-b", "/x/---": "workload",
		"/x/team:web.img": "team-web", "/x/" + strings.Repeat("a", 200) + ".img": strings.Repeat("a", 128)} {
		got := DefaultWorkloadID(in)
		if got != want {
			t.Errorf("DefaultWorkloadID(%q) = %q, want %q", in, got, want)
		}
		if err := launchconfig.ValidateWorkloadID(got); err != nil {
			t.Errorf("DefaultWorkloadID(%q) = %q is invalid: %v", in, got, err)
		}
	}
}

func TestCAFingerprintRejects(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"key.pem":  "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"two.pem":  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
		"junk.der": "not a certificate",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(data), 0o644)
		if _, err := CAFingerprint(p); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, pemfile.MaxFileSize+1), 0o644)
	if _, err := CAFingerprint(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized file: %v", err)
	}
}

// TestBuildRefusesUnbootableConfig: the launch configuration is validated
// before anything is written, so no image that run would refuse exists.
func TestBuildRefusesUnbootableConfig(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.img")
	o := &Options{Rootfs: t.TempDir(), Output: out, KDF: luks.PBKDF2(),
		Workload: workload.Config{Cmd: []string{"/bin/true"}},
		Launch:   launchconfig.Config{WorkloadID: "x", TEE: tee.SNP, VCPUs: 255, MemoryMiB: 512}}
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "vCPUs") {
		t.Fatalf("Build with 255 vCPUs: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("an output was created for a refused configuration")
	}
}
