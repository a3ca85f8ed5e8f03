package eval

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// NewOutDir creates a fresh output directory named qbench-eval-<time>-<random>
// in dir, so runs started in the same second never share one.
func NewOutDir(dir string) (string, error) {
	for range 10 {
		var b [3]byte
		rand.Read(b[:])
		p := filepath.Join(dir, "qbench-eval-"+time.Now().Format("20060102-150405")+"-"+hex.EncodeToString(b[:]))
		err := os.Mkdir(p, 0o755)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("could not make a fresh output directory in %s", dir)
}

// LockOut makes out (if needed) and takes its lock for the life of the
// process (or until unlock): a second evaluation on the same directory
// fails at once instead of interleaving its results, and an unwritable
// directory fails before any work. The lock is the operating system's, so
// a crashed run leaves none behind.
func LockOut(out string) (unlock func(), err error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %v", out, err)
	}
	f, err := os.OpenFile(filepath.Join(out, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", out, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: another qbench eval is writing there (%v)", out, err)
	}
	return func() { f.Close() }, nil
}
