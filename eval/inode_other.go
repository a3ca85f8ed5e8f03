//go:build !unix

package eval

import "os"

// inode is a file's inode number (0 where the platform has none).
func inode(os.FileInfo) uint64 { return 0 }
