//go:build unix

package eval

import (
	"os"
	"syscall"
)

// inode is a file's inode number (0 where the platform has none).
func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Ino)
	}
	return 0
}
