package kernels

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
)

// ptxModule is one compiled .cu file.
type ptxModule struct {
	name   string // the .cu file's base name
	ptx    string // its PTX for compute_80
	ptx90  string // for compute_90: with programmatic dependent launch (sm_90a where sm90a)
	sm90a  bool   // ptx90 targets sm_90a (the source's first line says "// qbench: sm_90a")
	source string // sha256 of the headers and the .cu it was built from (SourceHash)
}

// SourceHash is the sha256 of every .cuh header (in name order) followed by
// the .cu file: what a module's PTX depends on.
func SourceHash(cu string) (string, error) {
	h := sha256.New()
	headers, err := filepath.Glob("*.cuh") // sorted
	if err != nil {
		return "", err
	}
	for _, f := range append(headers, cu) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
