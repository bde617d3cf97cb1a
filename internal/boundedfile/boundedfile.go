// Package boundedfile reads small files whole under a size limit, so a path
// that names a huge file or an endless device fails with a clear error instead
// of exhausting memory. It is the one bounded file reader of krun-tee: keys,
// certificates, configuration, evidence, the kernel command line.
package boundedfile

import (
	"fmt"
	"io"
	"os"
)

// Read returns the whole content of the file at path, refusing one of more
// than max bytes. A regular file's size is checked before reading; anything
// else (a pipe such as /dev/stdin, a /proc file reporting size 0) is read up
// to max+1 bytes and refused if it goes beyond max. Directories are refused.
func Read(path string, max int64) ([]byte, error) {
	if max < 0 {
		return nil, fmt.Errorf("read %s: negative limit %d", path, max)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("read %s: is a directory", path)
	}
	if st.Mode().IsRegular() && st.Size() > max {
		return nil, fmt.Errorf("read %s: %d bytes, more than the %d bytes allowed", path, st.Size(), max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("read %s: more than the %d bytes allowed", path, max)
	}
	return data, nil
}
