//go:build !linux

package main

import "fmt"

// evict: dropping a file from the page cache is done here on Linux only.
func evict(path string) error {
	return fmt.Errorf("%s: timing a cold-cache load needs Linux (posix_fadvise)", path)
}

func resetPeakRSS() {}

// peakRSS: the high-water mark is read from Linux's /proc only.
func peakRSS() float64 { return 0 }
