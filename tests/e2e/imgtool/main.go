// Command imgtool makes the harness's tampered inputs for the confidential
// refusal scenarios, each the smallest change a hostile host could make:
//
//	imgtool set-launch [-kbs URL] [-workload ID] IMAGE   rewrite the krun-tee token (header checksums stay valid)
//	imgtool corrupt-headers IMAGE                        flip a byte in the JSON area of both LUKS2 header copies
//	imgtool flip-banner IN OUT                           copy a kernel with one byte of its "Linux version" banner changed
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
		fmt.Fprintln(os.Stderr, "usage: imgtool set-launch|corrupt-headers|flip-banner ...")
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
