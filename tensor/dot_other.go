//go:build !amd64

package tensor

// haveFMA: vector dot products exist on amd64 only (dot_amd64.s).
const haveFMA = false

// dotVec takes nothing without a vector unit: the scalar loop does it all.
func dotVec(a, b []float32) (float32, int) { return 0, 0 }

// dotVecBF16 takes nothing without a vector unit.
func dotVecBF16(a []uint16, b []float32) (float32, int) { return 0, 0 }

// dotVecNF4 is not taken without a vector unit.
func dotVecNF4(t *[16]float32, p []byte, x []float32) (float32, bool) { return 0, false }
