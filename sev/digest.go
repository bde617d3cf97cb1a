// Package sev holds the SEV-SNP pieces that do not need KVM: the launch
// digest (the chain of PAGE_INFO hashes the PSP computes during
// SNP_LAUNCH_UPDATE), the VMSA page builder and the default guest policy.
// The emulated PSP lives apart, in the host-only package emulated/psp.
package sev

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"

	"github.com/krun-tee/krun-tee/layout"
)

// PAGE_INFO layout (SNP firmware ABI, "PAGE_INFO Structure"), little endian.
const (
	PageInfoSize = 0x70

	pageInfoOffDigestCur = 0x00 // 48: the launch digest before this page
	pageInfoOffContents  = 0x30 // 48: SHA-384 of the page (NORMAL, VMSA) or zero
	pageInfoOffLength    = 0x60 // u16: PageInfoSize
	pageInfoOffPageType  = 0x62 // u8
	pageInfoOffIMI       = 0x63 // u8: 0 (not an IMI page)
	pageInfoOffVMPLPerms = 0x64 // 4 bytes: VMPL permissions + reserved, 0 under KVM
	pageInfoOffGPA       = 0x68 // u64
)

// VMSAGPA is the GPA KVM gives every VMSA page in the launch digest
// (INITIAL_VMSA_GPA).
const VMSAGPA = 0x0000FFFFFFFFF000

// SEVFeatureSNPActive is SEV_FEATURES bit 0; KVM ORs it into the INIT2
// vmsa_features for every SNP guest.
const SEVFeatureSNPActive = 1 << 0

// Digest is a running SNP launch digest (GCTX.LD).
type Digest struct {
	ld [48]byte
	pi [PageInfoSize]byte
}

// Sum returns the current launch digest.
func (d *Digest) Sum() [48]byte { return d.ld }

// Update folds one 4 KiB page into the digest: LD = SHA-384(PAGE_INFO).
// page is the plaintext for NORMAL and VMSA pages and is ignored (may be nil)
// for the other types, whose CONTENTS field is zero.
func (d *Digest) Update(gpa uint64, t layout.PageType, page []byte) error {
	var contents [48]byte
	switch t {
	case layout.PageNormal, layout.PageVMSA:
		if len(page) != layout.PageSize {
			return fmt.Errorf("sev: %v page at %#x is %d bytes, want %d", t, gpa, len(page), layout.PageSize)
		}
		contents = sha512.Sum384(page)
	case layout.PageZero, layout.PageUnmeasured, layout.PageSecrets, layout.PageCPUID:
	default:
		return fmt.Errorf("sev: page at %#x has unknown type %v", gpa, t)
	}
	d.updateContents(gpa, t, &contents)
	return nil
}

func (d *Digest) updateContents(gpa uint64, t layout.PageType, contents *[48]byte) {
	pi := &d.pi
	copy(pi[pageInfoOffDigestCur:], d.ld[:])
	copy(pi[pageInfoOffContents:], contents[:])
	binary.LittleEndian.PutUint16(pi[pageInfoOffLength:], PageInfoSize)
	pi[pageInfoOffPageType] = byte(t)
	pi[pageInfoOffIMI] = 0
	clear(pi[pageInfoOffVMPLPerms:pageInfoOffGPA])
	binary.LittleEndian.PutUint64(pi[pageInfoOffGPA:], gpa)
	d.ld = sha512.Sum384(pi[:])
}

// LaunchDigest computes the SNP MEASUREMENT for a launch of l: every page
// of every region in launch order, then one VMSA page per vCPU (index
// order) at VMSAGPA, as KVM's SNP_LAUNCH_UPDATE and SNP_LAUNCH_FINISH feed
// the PSP. vmsaFeatures is KVM_SEV_INIT2's vmsa_features; SNPActive is
// added as KVM does.
func LaunchDigest(l *layout.Layout, vmsaFeatures uint64) ([48]byte, error) {
	var d Digest
	if err := d.AddLayout(l, vmsaFeatures); err != nil {
		return [48]byte{}, err
	}
	return d.Sum(), nil
}

// AddLayout folds all of l's pages and VMSAs into d (see LaunchDigest).
func (d *Digest) AddLayout(l *layout.Layout, vmsaFeatures uint64) error {
	if len(l.VCPUs) == 0 {
		return fmt.Errorf("sev: layout has no vCPUs")
	}
	for _, r := range l.Regions {
		if r.Type.Measured() {
			// Page contents hash independently; only the PAGE_INFO chain
			// is sequential.
			contents := pageDigests(r)
			for i := range contents {
				d.updateContents(r.GPA+uint64(i)*layout.PageSize, r.Type, &contents[i])
			}
			continue
		}
		for i := uint64(0); i < r.Pages(); i++ {
			if err := d.Update(r.GPA+i*layout.PageSize, r.Type, nil); err != nil {
				return fmt.Errorf("sev: region %s: %w", r.Name, err)
			}
		}
	}
	for i, s := range l.VCPUs {
		v, err := VMSA(s, vmsaFeatures|SEVFeatureSNPActive)
		if err != nil {
			return fmt.Errorf("sev: vCPU %d: %w", i, err)
		}
		if err := d.Update(VMSAGPA, layout.PageVMSA, v); err != nil {
			return err
		}
	}
	return nil
}

// parallelPages is the region size from which page hashing is spread over
// all CPUs; below it goroutine start-up costs more than it saves.
const parallelPages = 256

// pageDigests returns SHA-384 of every page of r, hashing on all CPUs for
// large regions.
func pageDigests(r layout.Region) [][48]byte {
	n := int(r.Pages())
	out := make([][48]byte, n)
	workers := runtime.GOMAXPROCS(0)
	if n < parallelPages || workers == 1 {
		for i := range out {
			out[i] = sha512.Sum384(r.Page(uint64(i)))
		}
		return out
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for start := 0; start < n; start += per {
		end := min(start+per, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := start; i < end; i++ {
				out[i] = sha512.Sum384(r.Page(uint64(i)))
			}
		}()
	}
	wg.Wait()
	return out
}

// PageRecord is one launch operation as `krun-tee measure --pages` prints it.
type PageRecord struct {
	GPA    uint64
	Type   layout.PageType
	SHA384 [48]byte // CONTENTS: SHA-384 of the page, zero for unmeasured types
}

// Pages lists the launch operations of l in order, VMSAs last, with the
// CONTENTS hash each contributes.
func Pages(l *layout.Layout, vmsaFeatures uint64, emit func(PageRecord) error) error {
	for _, r := range l.Regions {
		for i := uint64(0); i < r.Pages(); i++ {
			rec := PageRecord{GPA: r.GPA + i*layout.PageSize, Type: r.Type}
			if r.Type.Measured() {
				rec.SHA384 = sha512.Sum384(r.Page(i))
			}
			if err := emit(rec); err != nil {
				return err
			}
		}
	}
	for i, s := range l.VCPUs {
		v, err := VMSA(s, vmsaFeatures|SEVFeatureSNPActive)
		if err != nil {
			return fmt.Errorf("sev: vCPU %d: %w", i, err)
		}
		if err := emit(PageRecord{GPA: VMSAGPA, Type: layout.PageVMSA, SHA384: sha512.Sum384(v)}); err != nil {
			return err
		}
	}
	return nil
}
