//go:build amd64

package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDotVec checks the AVX2/FMA dot products (dot_amd64.s) against a
// float64 sum, and the scalar loop they replace, on fresh random vectors
// whose lengths cover the vector part's edges (0, 31, 32, 33, …): both
// within fp32 rounding of Σ|a·b|; and dotBF16 bit-identical to dot over the
// widened weights, vector part and tail.
func TestDotVec(t *testing.T) {
	if !haveFMA {
		t.Skip("no AVX2/FMA on this CPU (or QBENCH_NO_SIMD=1)")
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 11))
	for _, n := range []int{0, 1, 31, 32, 33, 63, 64, 65, 100, 2048, 2081} {
		a, b := make([]float32, n), make([]float32, n)
		a16 := make([]uint16, n)
		var want, mag float64
		for i := range a {
			a16[i] = F32ToBF16(float32(rng.NormFloat64()))
			a[i] = BF16ToF32(a16[i])
			b[i] = float32(rng.NormFloat64())
			want += float64(a[i]) * float64(b[i])
			mag += math.Abs(float64(a[i]) * float64(b[i]))
		}
		got := Dot(a, b)
		haveFMA = false
		scalar := Dot(a, b)
		haveFMA = true
		for _, c := range []struct {
			name string
			v    float32
		}{{"vector", got}, {"scalar", scalar}} {
			if d := math.Abs(float64(c.v) - want); !(d <= 1e-6*mag+1e-30) {
				t.Errorf("n %d, %s: %v, want %v (Σ|a·b| %v)", n, c.name, c.v, want, mag)
			}
		}
		if g16 := DotBF16(a16, b); math.Float32bits(g16) != math.Float32bits(got) {
			t.Errorf("n %d: dotBF16 %v, dot over the widened weights %v", n, g16, got)
		}
	}
}
