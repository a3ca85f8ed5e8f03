//go:build amd64

package tensor

import (
	"os"

	"golang.org/x/sys/cpu"
)

// haveFMA: the CPU has AVX2 and FMA, so the dot products run 32 elements a
// step in dot_amd64.s (QBENCH_NO_SIMD=1 keeps them scalar).
var haveFMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA && !noSIMD()

//go:noescape
func dotFMA(a, b *float32, n int) float32

//go:noescape
func dotBF16FMA(a *uint16, b *float32, n int) float32

//go:noescape
func dotNF4FMA(t *[16]float32, p *byte, x *float32, n int) float32

// dotVec is Σ a[i]·b[i] over the leading multiple of 32 elements the vector
// unit takes, and how many that is (0 without it).
func dotVec(a, b []float32) (float32, int) {
	n := len(a) &^ 31
	if !haveFMA || n == 0 {
		return 0, 0
	}
	return dotFMA(&a[0], &b[0], n), n
}

// dotVecBF16 is dotVec over bf16 weights widened exactly.
func dotVecBF16(a []uint16, b []float32) (float32, int) {
	n := len(a) &^ 31
	if !haveFMA || n == 0 {
		return 0, 0
	}
	return dotBF16FMA(&a[0], &b[0], n), n
}

// dotVecNF4 is DotNF4 on the vector unit when there is one (ok false: not
// taken). len(p) must be a multiple of 8, len(x) = 2·len(p).
func dotVecNF4(t *[16]float32, p []byte, x []float32) (float32, bool) {
	if !haveFMA || len(p) == 0 {
		return 0, false
	}
	_ = x[2*len(p)-1]
	return dotNF4FMA(t, &p[0], &x[0], 2*len(p)), true
}

func noSIMD() bool { return os.Getenv("QBENCH_NO_SIMD") == "1" }
