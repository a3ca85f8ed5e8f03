package kernels

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
)

// ptxModule is one compiled .cu file.
type ptxModule struct {
	name   string // the .cu file's base name
	ptx    string // its PTX
	source string // sha256 of common.cuh and the .cu it was built from
}

// SourceHash is the sha256 of common.cuh followed by the .cu file: what a
// module's PTX depends on.
func SourceHash(cu string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"common.cuh", cu} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
