// Package rootfs builds a guest root filesystem that does not depend on who
// builds it or when: a Tree stages file contents in a private directory and
// keeps every entry's owner, mode, times, extended attributes and device
// numbers in memory, and Build turns it into a byte-reproducible ext4 image
// with mke2fs -d followed by a debugfs script that sets that metadata, so an
// unprivileged build gives the guest the same tree a root build would.
//
// Paths handed to a Tree are relative, slash-separated and resolved inside
// the tree only: symlinks in parent components are followed with the tree as
// "/", one that would climb out of it is refused, and every staging write
// goes through an os.Root, so nothing is written outside the staging
// directory whatever the input. The staging directory holds only
// directories and regular files: symlinks, device nodes and FIFOs exist in
// memory and are created in the image by the debugfs script.
package rootfs
