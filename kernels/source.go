package kernels

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
)

// ptxModule is one compiled .cu file.
type ptxModule struct {
	name   string // the .cu file's base name
	ptx    string // its PTX for compute_80
	ptx90  string // for compute_90: with programmatic dependent launch (sm_90a where sm90a)
	sm90a  bool   // ptx90 targets sm_90a (the source's first line says "// qbench: sm_90a")
	source string // sha256 of the headers and the .cu it was built from (SourceHash)
	// ptx90a: for sm90a sources, a build by nvcc 12.4 or later made on a GPU
	// machine (kernels/ptx90a.sh; ptx/<name>.sm90a.ptx, first line
	// ptx90aHeader + the source hash it was built from), "" if none. Loaded
	// before ptx90 where the driver takes it (its PTX ISA is newer).
	ptx90a string
}

// ptx90aHeader starts the first line of an sm90a.ptx file, followed by the
// SourceHash of the sources it was built from.
const ptx90aHeader = "// qbench: nvcc sm_90a build of sources "

// ptx90aSource is the source hash a ptx90a build records ("" if none).
func ptx90aSource(ptx string) string {
	line, _, _ := strings.Cut(ptx, "\n")
	if h, ok := strings.CutPrefix(line, ptx90aHeader); ok {
		return h
	}
	return ""
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

// ptxCompiler is the nvcc release named in a PTX text's header comment
// ("nvcc 13.0"), or "" if it names none.
func ptxCompiler(ptx string) string {
	const tag = "// Cuda compilation tools, release "
	i := strings.Index(ptx, tag)
	if i < 0 {
		return ""
	}
	rel, _, _ := strings.Cut(ptx[i+len(tag):], ",")
	return "nvcc " + rel
}
