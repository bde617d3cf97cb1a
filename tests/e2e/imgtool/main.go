// Command imgtool makes the harness's tampered inputs for the confidential
// refusal scenarios, each the smallest change a hostile host could make:
//
//	imgtool set-launch [-kbs URL] [-workload ID] IMAGE   rewrite the krun-tee token (header checksums stay valid)
//	imgtool corrupt-headers IMAGE                        flip a byte in the JSON area of both LUKS2 header copies
//	imgtool flip-banner IN OUT                           copy a kernel with one byte of its "Linux version" banner changed
//	imgtool flip-payload -at N IMAGE                     flip one ciphertext byte N bytes into the encrypted payload
//	imgtool transplant-block -block N -pass P -from OLD -from-pass P2 IMAGE
//	                                                     replace 4 KiB plaintext block N of IMAGE by block N of OLD,
//	                                                     re-encrypted under IMAGE's own volume key
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/krun-tee/krun-tee/luks"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: imgtool set-launch|corrupt-headers|flip-banner|flip-payload|transplant-block ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "set-launch":
		err = setLaunch(os.Args[2:])
	case "corrupt-headers":
		if len(os.Args) != 3 {
			err = errors.New("usage: imgtool corrupt-headers IMAGE")
		} else {
			err = corruptHeaders(os.Args[2])
		}
	case "flip-payload":
		err = flipPayload(os.Args[2:])
	case "transplant-block":
		err = transplantBlock(os.Args[2:])
	case "flip-banner":
		if len(os.Args) != 4 {
			err = errors.New("usage: imgtool flip-banner IN OUT")
		} else {
			err = flipBanner(os.Args[2], os.Args[3])
		}
	default:
		err = fmt.Errorf("unknown verb %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imgtool:", err)
		os.Exit(1)
	}
}

func openVolume(path string) (*os.File, *luks.Volume, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	v, err := luks.Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, v, nil
}

func setLaunch(args []string) error {
	fs := flag.NewFlagSet("set-launch", flag.ContinueOnError)
	kbs := fs.String("kbs", "", "new KBS URL")
	workload := fs.String("workload", "", "new workload id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (*kbs == "" && *workload == "") {
		return errors.New("usage: imgtool set-launch [-kbs URL] [-workload ID] IMAGE")
	}
	f, v, err := openVolume(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	lc, err := v.ReadLaunchConfig()
	if err != nil {
		return err
	}
	if *kbs != "" {
		lc.KBSURL = *kbs
	}
	if *workload != "" {
		lc.WorkloadID = *workload
	}
	if err := v.SetLaunchConfig(f, lc); err != nil {
		return err
	}
	return f.Sync()
}

// corruptHeaders flips one byte 16 bytes into the JSON area of the primary
// header (at 4096) and of the secondary one (at hdr_size), so neither copy's
// checksum holds.
func corruptHeaders(path string) error {
	f, v, err := openVolume(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, off := range []int64{4096 + 16, int64(v.HeaderSize()) + 4096 + 16} {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			return err
		}
		b[0] ^= 0x01
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	st, _ := f.Stat()
	if _, err := luks.Open(f, st.Size()); err == nil {
		return errors.New("the volume still opens after corrupting both headers")
	}
	return nil
}

// flipBanner changes the first character after "Linux version " (the
// version digit, data the kernel only prints) in a copy of a kernel image.
func flipBanner(in, out string) error {
	data, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	i := bytes.Index(data, []byte("Linux version "))
	if i < 0 {
		return fmt.Errorf("%s: no \"Linux version \" banner", in)
	}
	data[i+len("Linux version ")] ^= 0x01 // '6' -> '7'
	return os.WriteFile(out, data, 0o644)
}

// flipPayload flips the low bit of the ciphertext byte at payload offset
// -at: what a host that corrupts one sector of the disk does. Under aes-xts
// the 16-byte cipher block holding it decrypts to different plaintext.
func flipPayload(args []string) error {
	fs := flag.NewFlagSet("flip-payload", flag.ContinueOnError)
	at := fs.Int64("at", -1, "byte offset into the encrypted payload")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *at < 0 {
		return errors.New("usage: imgtool flip-payload -at N IMAGE")
	}
	f, v, err := openVolume(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	off, n, err := v.PayloadRange()
	if err != nil {
		return err
	}
	if *at >= n {
		return fmt.Errorf("offset %d is beyond the %d-byte payload", *at, n)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off+*at); err != nil {
		return err
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off+*at); err != nil {
		return err
	}
	return f.Sync()
}

// transplantBlock models a host replaying old content: block N of the
// plaintext of OLD (an older build of the same image) is written into
// IMAGE, encrypted under IMAGE's own volume key, as if the owner had kept
// one key across builds. A plain ciphertext copy could not model it (each
// image has its own key); this is the strongest form of that rollback. It
// refuses to do nothing: the two blocks must differ.
func transplantBlock(args []string) error {
	fs := flag.NewFlagSet("transplant-block", flag.ContinueOnError)
	block := fs.Int64("block", -1, "4 KiB block of the payload")
	passFile := fs.String("pass", "", "passphrase file of IMAGE")
	from := fs.String("from", "", "the older image")
	fromPass := fs.String("from-pass", "", "passphrase file of the older image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *block < 0 || *passFile == "" || *from == "" || *fromPass == "" {
		return errors.New("usage: imgtool transplant-block -block N -pass P -from OLD -from-pass P2 IMAGE")
	}
	old, err := readPlainBlock(*from, *fromPass, *block)
	if err != nil {
		return fmt.Errorf("%s: %w", *from, err)
	}
	f, v, err := openVolume(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	sc, off, err := unlockSegment(f, v, *passFile, *block)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	cur := make([]byte, 4096)
	if _, err := f.ReadAt(cur, off+*block*4096); err != nil {
		return err
	}
	if err := sc.Decrypt(cur, cur, *block*4096); err != nil {
		return err
	}
	if bytes.Equal(cur, old) {
		return fmt.Errorf("block %d is the same in both images: nothing would be rolled back", *block)
	}
	if err := sc.Encrypt(old, old, *block*4096); err != nil {
		return err
	}
	if _, err := f.WriteAt(old, off+*block*4096); err != nil {
		return err
	}
	return f.Sync()
}

// readPlainBlock decrypts 4 KiB block n of an image's payload.
func readPlainBlock(path, passFile string, n int64) ([]byte, error) {
	f, v, err := openVolume(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc, off, err := unlockSegment(f, v, passFile, n)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, off+n*4096); err != nil {
		return nil, err
	}
	return b, sc.Decrypt(b, b, n*4096)
}

// unlockSegment unlocks v with the passphrase in passFile and returns its
// payload cipher and offset, checking that block n lies in the payload.
func unlockSegment(f *os.File, v *luks.Volume, passFile string, n int64) (*luks.SegmentCipher, int64, error) {
	pass, err := os.ReadFile(passFile)
	if err != nil {
		return nil, 0, err
	}
	key, _, err := v.Unlock(f, bytes.TrimSpace(pass))
	if err != nil {
		return nil, 0, err
	}
	defer clear(key)
	seg, err := v.CryptSegment()
	if err != nil {
		return nil, 0, err
	}
	sc, err := luks.NewSegmentCipher(seg, key)
	if err != nil {
		return nil, 0, err
	}
	off, size, err := v.PayloadRange()
	if err != nil {
		return nil, 0, err
	}
	if (n+1)*4096 > size {
		return nil, 0, fmt.Errorf("block %d is beyond the %d-byte payload", n, size)
	}
	return sc, off, nil
}
