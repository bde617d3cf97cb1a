package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strconv"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
)

func init() {
	register(command{
		name:    "image",
		summary: "inspect or decrypt a LUKS2 image (image inspect | image decrypt)",
		run: func(ctx context.Context, args []string) error {
			return runImage(ctx, args, os.Stdin, os.Stdout, os.Stderr)
		},
	})
}

const maxPassphraseFile = 8 << 10 // cryptsetup's default key-file limit is larger; ours are 64 bytes

func runImage(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: krun-tee image inspect IMAGE | image decrypt --passphrase-file F IMAGE -o OUT")
	}
	switch args[0] {
	case "inspect":
		return runImageInspect(args[1:], stdout, stderr)
	case "decrypt":
		return runImageDecrypt(ctx, args[1:], stdin, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, "usage: krun-tee image inspect IMAGE\n       krun-tee image decrypt --passphrase-file F IMAGE -o OUT")
		return flag.ErrHelp
	}
	return usagef("unknown image verb %q (inspect, decrypt)", args[0])
}

// openImage opens a LUKS2 image file or block device read-only.
func openImage(path string) (*os.File, *luks.Volume, error) {
	return luks.OpenFile(path, os.O_RDONLY)
}

// Inspect output: everything in the header except salts and digests.
type inspectOutput struct {
	Path              string                     `json:"path"`
	Version           int                        `json:"version"`
	UUID              string                     `json:"uuid"`
	Label             string                     `json:"label"`
	Subsystem         string                     `json:"subsystem"`
	Epoch             uint64                     `json:"epoch"`
	HeaderSize        uint64                     `json:"header_size"`
	ChecksumAlgorithm string                     `json:"checksum_algorithm"`
	PrimaryHeader     string                     `json:"primary_header"`
	SecondaryHeader   string                     `json:"secondary_header"`
	Config            inspectConfig              `json:"config"`
	Keyslots          []inspectKeyslot           `json:"keyslots"`
	Segments          []inspectSegment           `json:"segments"`
	Digests           []inspectDigest            `json:"digests"`
	Tokens            map[string]json.RawMessage `json:"tokens"`
	LaunchConfig      *launchconfig.Config       `json:"launch_config"`
	LaunchConfigError string                     `json:"launch_config_error,omitempty"`
}

type inspectConfig struct {
	JSONSize     uint64   `json:"json_size"`
	KeyslotsSize uint64   `json:"keyslots_size"`
	Flags        []string `json:"flags,omitempty"`
	Requirements []string `json:"requirements,omitempty"`
}

type inspectKeyslot struct {
	ID       int    `json:"id"`
	Type     string `json:"type"`
	KeyBits  int    `json:"key_bits"`
	Priority int    `json:"priority"`
	KDF      struct {
		Type       string `json:"type"`
		Hash       string `json:"hash,omitempty"`
		Iterations int    `json:"iterations,omitempty"`
		Time       int    `json:"time,omitempty"`
		MemoryKiB  int    `json:"memory_kib,omitempty"`
		Threads    int    `json:"threads,omitempty"`
	} `json:"kdf"`
	AFStripes  int    `json:"af_stripes"`
	AFHash     string `json:"af_hash"`
	AreaOffset uint64 `json:"area_offset"`
	AreaSize   uint64 `json:"area_size"`
	AreaCipher string `json:"area_cipher"`
}

type inspectSegment struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Offset     uint64 `json:"offset"`
	Size       string `json:"size"`
	IVTweak    uint64 `json:"iv_tweak"`
	Encryption string `json:"encryption"`
	SectorSize int    `json:"sector_size"`
}

type inspectDigest struct {
	ID         int      `json:"id"`
	Type       string   `json:"type"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
}

func copyStatus(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func sortedIDs[T any](m map[string]T) []int {
	ids := make([]int, 0, len(m))
	for k := range m {
		id, _ := strconv.Atoi(k)
		ids = append(ids, id)
	}
	sort.Ints(ids)
	return ids
}

func inspect(path string, v *luks.Volume) *inspectOutput {
	m := v.Metadata()
	out := &inspectOutput{
		Path: path, Version: 2, UUID: v.UUID(), Label: v.Label(), Subsystem: v.Subsystem(), Epoch: v.SeqID(),
		HeaderSize: v.HeaderSize(), ChecksumAlgorithm: v.ChecksumAlgorithm(),
		PrimaryHeader: copyStatus(v.PrimaryErr), SecondaryHeader: copyStatus(v.SecondaryErr),
		Config:   inspectConfig{JSONSize: uint64(m.Config.JSONSize), KeyslotsSize: uint64(m.Config.KeyslotsSize), Flags: m.Config.Flags},
		Keyslots: []inspectKeyslot{}, Segments: []inspectSegment{}, Digests: []inspectDigest{},
		Tokens: map[string]json.RawMessage{},
	}
	if m.Config.Requirements != nil {
		out.Config.Requirements = m.Config.Requirements.Mandatory
	}
	for _, id := range sortedIDs(m.Keyslots) {
		ks := m.Keyslots[strconv.Itoa(id)]
		k := inspectKeyslot{ID: id, Type: ks.Type, KeyBits: ks.KeySize * 8, Priority: 1, AFStripes: ks.AF.Stripes, AFHash: ks.AF.Hash,
			AreaOffset: uint64(ks.Area.Offset), AreaSize: uint64(ks.Area.Size), AreaCipher: ks.Area.Encryption}
		if ks.Priority != nil {
			k.Priority = *ks.Priority
		}
		k.KDF.Type, k.KDF.Hash, k.KDF.Iterations = ks.KDF.Type, ks.KDF.Hash, ks.KDF.Iterations
		k.KDF.Time, k.KDF.MemoryKiB, k.KDF.Threads = ks.KDF.Time, ks.KDF.Memory, ks.KDF.CPUs
		out.Keyslots = append(out.Keyslots, k)
	}
	for _, id := range sortedIDs(m.Segments) {
		s := m.Segments[strconv.Itoa(id)]
		size := "dynamic"
		if !s.Size.Dynamic {
			size = strconv.FormatUint(s.Size.Bytes, 10)
		}
		out.Segments = append(out.Segments, inspectSegment{ID: id, Type: s.Type, Offset: uint64(s.Offset), Size: size,
			IVTweak: uint64(s.IVTweak), Encryption: s.Encryption, SectorSize: s.SectorSize})
	}
	for _, id := range sortedIDs(m.Digests) {
		d := m.Digests[strconv.Itoa(id)]
		out.Digests = append(out.Digests, inspectDigest{ID: id, Type: d.Type, Hash: d.Hash, Iterations: d.Iterations,
			Keyslots: d.Keyslots, Segments: d.Segments})
	}
	for id, raw := range v.Tokens() {
		out.Tokens[strconv.Itoa(id)] = raw
	}
	lc, err := v.ReadLaunchConfig()
	switch {
	case err == nil:
		out.LaunchConfig = lc
	case !errors.Is(err, luks.ErrNoLaunchConfig):
		out.LaunchConfigError = err.Error()
	}
	return out
}

func runImageInspect(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("image inspect", "image inspect IMAGE", stderr)
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fl.NArg() != 1 {
		return usagef("image inspect takes exactly one IMAGE")
	}
	f, v, err := openImage(fl.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(inspect(fl.Arg(0), v))
}

// readPassphrase reads a key file (or stdin for "-") whole, as cryptsetup
// --key-file does: every byte, including a trailing newline, is the key.
func readPassphrase(path string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPassphraseFile+1))
	if err != nil {
		return nil, fmt.Errorf("passphrase file: %w", err)
	}
	if len(b) > maxPassphraseFile {
		return nil, fmt.Errorf("passphrase file is larger than %d bytes", maxPassphraseFile)
	}
	if len(b) == 0 {
		return nil, errors.New("passphrase file is empty")
	}
	return b, nil
}

func runImageDecrypt(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (err error) {
	fl := newFlagSet("image decrypt", "image decrypt --passphrase-file F IMAGE -o OUT [--force]", stderr)
	passFile := fl.String("passphrase-file", "", "file holding the passphrase (- for stdin)")
	out := fl.String("o", "", "output file for the decrypted payload")
	force := fl.Bool("force", false, "overwrite an existing output")
	// Accept flags after the image too (image decrypt IMAGE -o OUT).
	var positional []string
	for rest := args; ; {
		if err := fl.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usagef("%v", err)
		}
		if fl.NArg() == 0 {
			break
		}
		positional = append(positional, fl.Arg(0))
		rest = fl.Args()[1:]
	}
	if len(positional) != 1 || *passFile == "" || *out == "" {
		return usagef("image decrypt needs --passphrase-file F, one IMAGE and -o OUT")
	}
	image := positional[0]
	pass, err := readPassphrase(*passFile, stdin)
	if err != nil {
		return err
	}
	defer clear(pass)
	f, v, err := openImage(image)
	if err != nil {
		return err
	}
	defer f.Close()
	vk, slot, err := v.Unlock(f, pass)
	if err != nil {
		return fmt.Errorf("%s: %w", image, err)
	}
	defer clear(vk)
	seg, err := v.CryptSegment()
	if err != nil {
		return err
	}
	sc, err := luks.NewSegmentCipher(seg, vk)
	if err != nil {
		return err
	}
	off, n, err := v.PayloadRange()
	if err != nil {
		return err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if *force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	o, err := os.OpenFile(*out, flags, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("output %s already exists (use --force to overwrite)", *out)
		}
		return fmt.Errorf("output: %w", err)
	}
	defer func() {
		if cerr := o.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("output: %w", cerr)
		}
		if err != nil {
			os.Remove(*out)
		}
	}()
	bar := newProgressBar(stderr, "decrypting")
	if err := sc.DecryptRange(ctx, o, 0, f, off, n, luks.StreamOptions{Progress: bar.update}); err != nil {
		bar.finish(false)
		return fmt.Errorf("decrypting: %w", err)
	}
	bar.finish(true)
	fmt.Fprintf(stdout, "decrypted %d bytes from %s (keyslot %d) to %s\n", n, image, slot, *out)
	return nil
}
