//go:build !linux

package tensor

// populatePages: only Linux maps a range's pages in one call; elsewhere they
// fault in as read.
func populatePages(b []byte) {}
