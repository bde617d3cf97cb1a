package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/luks"
)

// ErrNotLaunchImage: the file is not an image made by `krun-tee mkimage`
// (no LUKS2 header, or a LUKS2 volume without a krun-tee token). A damaged
// header is a different error: it must be reported, not booted as a plain
// disk.
var ErrNotLaunchImage = errors.New("launch: not a krun-tee image (make one with `krun-tee mkimage`)")

// ReadImageConfig opens the image at path once and returns its validated
// launch configuration. It wraps ErrNotLaunchImage when the file is a plain
// disk or a LUKS2 volume without a krun-tee token, and fs.ErrNotExist when
// there is no file.
func ReadImageConfig(path string) (*launchconfig.Config, error) {
	f, v, err := luks.OpenFile(path, os.O_RDONLY)
	if err != nil {
		if errors.Is(err, luks.ErrNotLUKS) {
			return nil, fmt.Errorf("%s: %w", path, ErrNotLaunchImage)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("launch: %s: %w", path, err)
	}
	defer f.Close()
	lc, err := v.ReadLaunchConfig()
	if errors.Is(err, luks.ErrNoLaunchConfig) {
		return nil, fmt.Errorf("%s has no krun-tee launch configuration: %w", path, ErrNotLaunchImage)
	}
	if err != nil {
		return nil, fmt.Errorf("launch: %s: %w", path, err)
	}
	return lc, nil
}
