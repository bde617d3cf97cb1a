// Package luks reads, unlocks, formats and encrypts LUKS2 volumes in pure Go,
// interoperable with cryptsetup 2.x (Debian's cryptsetup-bin).
//
// It implements the parts of the cryptsetup "LUKS2 On-Disk Format
// Specification" krun-tee needs: both binary header copies with checksums and
// seqid selection, the JSON metadata (keyslots, segments, digests, tokens,
// config), pbkdf2/argon2i/argon2id keyslots with the luks1 anti-forensic
// splitter, aes-xts-plain64 data segments, and a "krun-tee" token that carries
// the launch configuration of an image.
//
// Everything read from an image is untrusted: sizes, offsets and KDF costs are
// checked against fixed bounds and the file size before anything is allocated
// or computed, so a hostile header yields an error, never a panic, a
// gigabyte allocation or an hour-long KDF.
//
// Integrity: aes-xts-plain64 gives confidentiality only. XTS does not
// authenticate, so whoever controls the disk (in krun-tee, the host) can
// corrupt sectors (each changed ciphertext block decrypts to 16 random-looking
// bytes) or roll sectors back to older contents, undetected. It cannot move a
// sector elsewhere, because the tweak is the sector number, and it cannot read
// the plaintext without the volume key.
package luks
