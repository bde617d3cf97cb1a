package virtio

// Helpers for the scatter-gather lists of a Chain. Device requests may be
// split across descriptors at any byte boundary (virtio 1.2 section 2.6.4,
// "message framing"), so devices parse headers through these instead of
// assuming one descriptor per field.

// TotalLen is the total number of bytes in bufs.
func TotalLen(bufs [][]byte) uint64 {
	var n uint64
	for _, b := range bufs {
		n += uint64(len(b))
	}
	return n
}

// SplitAt splits bufs after n bytes without copying. ok is false when bufs
// holds fewer than n bytes.
func SplitAt(bufs [][]byte, n uint64) (head, tail [][]byte, ok bool) {
	for i, b := range bufs {
		if n == 0 {
			return head, bufs[i:], true
		}
		if uint64(len(b)) <= n {
			head = append(head, b)
			n -= uint64(len(b))
			continue
		}
		head = append(head, b[:n])
		tail = append([][]byte{b[n:]}, bufs[i+1:]...)
		return head, tail, true
	}
	return head, nil, n == 0
}

// SplitLast splits off the final n bytes of bufs (for example a status byte
// at the end of the writable part). ok is false when bufs is shorter.
func SplitLast(bufs [][]byte, n uint64) (head, last [][]byte, ok bool) {
	total := TotalLen(bufs)
	if total < n {
		return nil, nil, false
	}
	return SplitAt(bufs, total-n)
}

// Gather copies from bufs into dst and returns the number of bytes copied.
func Gather(dst []byte, bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], b)
	}
	return n
}

// Scatter copies src into bufs and returns the number of bytes copied.
func Scatter(bufs [][]byte, src []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(src) {
			break
		}
		n += copy(b, src[n:])
	}
	return n
}
