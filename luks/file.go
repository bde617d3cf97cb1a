package luks

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// OpenFile opens the image file or block device at path with flag (os.O_RDONLY
// or os.O_RDWR) and reads its headers. The size of a block device is found
// by seeking to its end. The caller closes the file.
func OpenFile(path string, flag int) (*os.File, *Volume, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("luks: %w", err)
	}
	v, err := openFileVolume(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("luks: %s: %w", path, err)
	}
	return f, v, nil
}

func openFileVolume(f *os.File) (*Volume, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	switch {
	case st.Mode().IsRegular():
	case st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0:
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("not a regular file or block device (%s)", st.Mode().Type())
	}
	return Open(f, size)
}
