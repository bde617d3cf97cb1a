// Package tdx holds the Intel TDX pieces that do not need KVM: the MRTD and
// RTMR computations the TDX module performs and the default XFAM. The
// emulated TDX module lives apart, in the host-only package emulated/tdxmodule.
package tdx

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"

	"github.com/krun-tee/krun-tee/layout"
)

// Records the TDX module feeds into the MRTD hash (Intel TDX module ABI,
// TDH.MEM.PAGE.ADD and TDH.MR.EXTEND).
const (
	mrtdRecordSize   = 128 // every record header is one SHA-384 block
	mrtdRecordOffGPA = 16  // u64 GPA, little endian
	ExtendChunk      = 256 // TDH.MR.EXTEND measures 256 bytes at a time
	chunksPerPage    = layout.PageSize / ExtendChunk
)

var (
	pageAddTag = []byte("MEM.PAGE.ADD") // 12 bytes, zero-padded to 16
	extendTag  = []byte("MR.EXTEND")    // 9 bytes, zero-padded to 16
)

// MRTDBuilder is a running MRTD: one SHA-384 over every PAGE.ADD and
// MR.EXTEND record from TDH.MNG.INIT to TDH.MR.FINALIZE.
type MRTDBuilder struct {
	h   hash.Hash
	rec [mrtdRecordSize]byte
}

// NewMRTDBuilder starts an empty MRTD.
func NewMRTDBuilder() *MRTDBuilder { return &MRTDBuilder{h: sha512.New384()} }

func (b *MRTDBuilder) record(tag []byte, gpa uint64) {
	clear(b.rec[:])
	copy(b.rec[:], tag)
	binary.LittleEndian.PutUint64(b.rec[mrtdRecordOffGPA:], gpa)
	b.h.Write(b.rec[:])
}

// PageAdd records TDH.MEM.PAGE.ADD of the page at gpa.
func (b *MRTDBuilder) PageAdd(gpa uint64) { b.record(pageAddTag, gpa) }

// Extend records TDH.MR.EXTEND of one 256-byte chunk at gpa.
func (b *MRTDBuilder) Extend(gpa uint64, chunk []byte) error {
	if len(chunk) != ExtendChunk || gpa%ExtendChunk != 0 {
		return fmt.Errorf("tdx: MR.EXTEND needs a %d-byte aligned chunk, got %d bytes at %#x", ExtendChunk, len(chunk), gpa)
	}
	b.record(extendTag, gpa)
	b.h.Write(chunk)
	return nil
}

// AddPage records what KVM_TDX_INIT_MEM_REGION does for one page: PAGE.ADD,
// then, when measured, 16 MR.EXTENDs of its contents.
func (b *MRTDBuilder) AddPage(gpa uint64, page []byte, measured bool) error {
	if gpa%layout.PageSize != 0 {
		return fmt.Errorf("tdx: page at %#x is not page aligned", gpa)
	}
	b.PageAdd(gpa)
	if !measured {
		return nil
	}
	if len(page) != layout.PageSize {
		return fmt.Errorf("tdx: page at %#x is %d bytes, want %d", gpa, len(page), layout.PageSize)
	}
	for i := 0; i < chunksPerPage; i++ {
		off := i * ExtendChunk
		if err := b.Extend(gpa+uint64(off), page[off:off+ExtendChunk]); err != nil {
			return err
		}
	}
	return nil
}

// Sum returns the MRTD as TDH.MR.FINALIZE would.
func (b *MRTDBuilder) Sum() [48]byte {
	var out [48]byte
	b.h.Sum(out[:0])
	return out
}

// PageAdded reports whether a layout page of type t is added to a TD at
// launch. NORMAL pages are added and measured, ZERO and UNMEASURED pages are
// added unmeasured; SECRETS and CPUID pages are SEV-SNP constructs that a TD
// launch skips.
func PageAdded(t layout.PageType) bool {
	switch t {
	case layout.PageNormal, layout.PageZero, layout.PageUnmeasured:
		return true
	}
	return false
}

// MRTD computes the MRTD of a TD launched from l: KVM_TDX_INIT_MEM_REGION
// over every added page in ascending GPA order, measuring NORMAL pages'
// contents with MR.EXTEND. Unlike libkrun, the kernel, initrd, zero page
// and command line are NORMAL pages, so MRTD covers them.
func MRTD(l *layout.Layout) ([48]byte, error) {
	b := NewMRTDBuilder()
	for _, r := range l.ByGPA() {
		if !PageAdded(r.Type) {
			continue
		}
		for i := uint64(0); i < r.Pages(); i++ {
			var page []byte
			if r.Type == layout.PageNormal {
				page = r.Page(i)
			}
			if err := b.AddPage(r.GPA+i*layout.PageSize, page, r.Type == layout.PageNormal); err != nil {
				return [48]byte{}, fmt.Errorf("tdx: region %s: %w", r.Name, err)
			}
		}
	}
	return b.Sum(), nil
}

// ExtendRTMR performs TDG.MR.RTMR.EXTEND: rtmr = SHA-384(rtmr || digest).
func ExtendRTMR(rtmr *[48]byte, digest [48]byte) {
	var buf [96]byte
	copy(buf[:48], rtmr[:])
	copy(buf[48:], digest[:])
	*rtmr = sha512.Sum384(buf[:])
}

// LaunchRTMRs returns RTMR0..3 as they stand when a TD launched from a
// krun-tee layout starts: all zero, because everything krun-tee loads
// (boot structures, kernel, initrd, command line) is measured into MRTD
// rather than extended into RTMRs by firmware.
func LaunchRTMRs() [4][48]byte { return [4][48]byte{} }
