//go:build !unix

package tensor

import (
	"fmt"
	"os"
)

// mapFile reads the whole file where memory maps are not available (only
// regular files: a FIFO or a device would block or read forever).
func mapFile(path string) ([]byte, func() error, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file (%v)", path, st.Mode().Type())
	}
	b, err := os.ReadFile(path)
	return b, func() error { return nil }, err
}

// releasePages: the file was read into memory, not mapped; nothing to drop.
func releasePages(b []byte) {}
