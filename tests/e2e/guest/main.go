// Command vsockping is a test workload for the nested harness: it connects
// from the guest to the host over AF_VSOCK (busybox has no vsock client),
// sends one line, and prints the line the host echoes back.
//
//	vsockping [-cid 2] [-port 1234] [-timeout 20s] message
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	cid := flag.Uint("cid", unix.VMADDR_CID_HOST, "peer context id (2 = the host)")
	port := flag.Uint("port", 1234, "peer vsock port")
	timeout := flag.Duration("timeout", 20*time.Second, "overall deadline")
	flag.Parse()
	if flag.NArg() != 1 || strings.ContainsAny(flag.Arg(0), "\n") {
		fmt.Fprintln(os.Stderr, "usage: vsockping [-cid N] [-port N] [-timeout D] one-line-message")
		os.Exit(2)
	}
	reply, err := ping(uint32(*cid), uint32(*port), flag.Arg(0), *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vsockping:", err)
		os.Exit(1)
	}
	fmt.Println(reply)
}

// ping sends msg plus a newline and returns the first line received.
func ping(cid, port uint32, msg string, timeout time.Duration) (string, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket(AF_VSOCK): %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return "", fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("connect to vsock %d:%d: %w", cid, port, err)
	}
	f := os.NewFile(uintptr(fd), "vsock")
	defer f.Close()
	if _, err := f.WriteString(msg + "\n"); err != nil {
		return "", fmt.Errorf("send: %w", err)
	}
	// A peer that closes right after echoing still gave us the line.
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("receive: %w", err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
