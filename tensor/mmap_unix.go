//go:build unix

package tensor

import (
	"fmt"
	"os"
	"syscall"
)

// mapFile maps a whole file read-only.
func mapFile(path string) ([]byte, func() error, error) {
	// Opening a FIFO or a device would block or read forever: only regular
	// files (or links to them) are weights.
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() && !st.IsDir() {
		return nil, nil, fmt.Errorf("%s: not a regular file (%v)", path, st.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.IsDir() {
		return nil, nil, fmt.Errorf("%s: is a directory, want a safetensors file", path)
	}
	if st.Size() == 0 {
		return nil, func() error { return nil }, nil
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	return b, func() error { return syscall.Munmap(b) }, nil
}

// releasePages tells the kernel the process no longer needs these mapped
// file pages (they stay in the page cache). Advice only: an error changes
// nothing the caller can act on.
func releasePages(b []byte) { _ = syscall.Madvise(b, syscall.MADV_DONTNEED) }
