package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// evict asks the kernel to drop a file's pages from the page cache
// (posix_fadvise DONTNEED: clean pages no other process maps go; no root
// needed), so the next read comes from the disk.
func evict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("%s: evicting from the page cache: %v", path, err)
	}
	return nil
}

// resetPeakRSS starts the process's resident-memory high-water mark afresh
// (clear_refs 5).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS is the resident-memory high-water mark in GB (VmHWM), 0 if
// unreadable.
func peakRSS() float64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		var kb float64
		for _, line := range strings.Split(string(b), "\n") {
			if n, _ := fmt.Sscanf(line, "VmHWM: %g kB", &kb); n == 1 {
				return kb * 1024 / 1e9
			}
		}
	}
	return 0
}
