// Command blkio is the random-I/O half of tests/bench/blk.sh's guest
// workload (busybox dd cannot seek to random offsets per request): it issues
// -ops single-block O_DIRECT reads or writes at uniformly random,
// block-aligned offsets of a block device (or file) and prints one line
//
//	BLKRES test=NAME bytes=N secs=S
//
// that blk.sh parses. The offsets come from a fixed seed, so every VMM sees the
// same request sequence. One request in flight at a time (queue depth 1), as
// with dd. `blkio -now` prints CLOCK_MONOTONIC in seconds with nanoseconds,
// for timing the dd runs (busybox has no sub-10ms clock of its own).
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dev := flag.String("dev", "", "block device or file (required)")
	op := flag.String("op", "read", "read or write")
	bs := flag.Int("bs", 4096, "request size in bytes (a multiple of 4096 for O_DIRECT)")
	ops := flag.Int("ops", 4096, "number of requests")
	seed := flag.Int64("seed", 1, "PRNG seed for the offsets")
	name := flag.String("name", "", "test name printed in the result line (default rand<op>)")
	now := flag.Bool("now", false, "print CLOCK_MONOTONIC (seconds) and exit")
	flag.Parse()
	if *now {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			fmt.Fprintln(os.Stderr, "blkio:", err)
			os.Exit(1)
		}
		fmt.Printf("%d.%09d\n", ts.Sec, ts.Nsec)
		return
	}
	if err := run(*dev, *op, *bs, *ops, *seed, *name); err != nil {
		fmt.Fprintln(os.Stderr, "blkio:", err)
		os.Exit(1)
	}
}

func run(dev, op string, bs, ops int, seed int64, name string) error {
	if dev == "" || bs <= 0 || bs%4096 != 0 || ops <= 0 {
		return fmt.Errorf("want -dev, -bs a positive multiple of 4096 and -ops > 0")
	}
	flags := syscall.O_RDONLY
	switch op {
	case "read":
	case "write":
		flags = syscall.O_WRONLY
	default:
		return fmt.Errorf("-op %q: want read or write", op)
	}
	if name == "" {
		name = "rand" + op
	}
	f, err := os.OpenFile(dev, flags|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return err
	}
	blocks := size / int64(bs)
	if blocks < 1 {
		return fmt.Errorf("%s: %d bytes, smaller than one block", dev, size)
	}
	// O_DIRECT wants an aligned buffer: anonymous mmap memory is page-aligned.
	buf, err := syscall.Mmap(-1, 0, bs, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	rng := rand.New(rand.NewSource(seed))
	offs := make([]int64, ops)
	for i := range offs {
		offs[i] = rng.Int63n(blocks) * int64(bs)
	}
	start := time.Now()
	for _, off := range offs {
		var n int
		if op == "read" {
			n, err = f.ReadAt(buf, off)
		} else {
			n, err = f.WriteAt(buf, off)
		}
		if err != nil {
			return fmt.Errorf("%s at %d: %v", op, off, err)
		}
		if n != bs {
			return fmt.Errorf("%s at %d: %d of %d bytes", op, off, n, bs)
		}
	}
	if op == "write" {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("BLKRES test=%s bytes=%d secs=%.6f\n", name, int64(ops)*int64(bs), secs)
	return nil
}
