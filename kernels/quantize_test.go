//go:build cuda

package kernels

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qbench/qbench/tensor"
)

// TestQuantizeGPU checks nf4_quantize against the CPU quantiser (itself
// checked against bitsandbytes' tree and fixtures in tensor): every code,
// absmax, double-quantisation field bit for bit, on fresh random matrices
// with the awkward cases planted — zero blocks, subnormal weights, blocks of
// one repeated value, values landing exactly on a code boundary, a last
// block shorter than 64 — and a non-finite weight refused with its index.
func TestQuantizeGPU(t *testing.T) {
	d := device(t)
	q := NewQuantizer(d)
	defer q.Close()
	rng := rand.New(rand.NewPCG(rand.Uint64(), 7))
	mids := []float32{-0.8480964004993439, -0.13791173323988914, 0.03979014977812767, 0.3893125355243683, 0.8614784181118011}
	for _, shape := range [][]int{{256, 2048}, {11008, 512}, {3, 70}, {1, 64}, {130, 96}} {
		n := shape[0] * shape[1]
		w := make([]float32, n)
		for i := range w {
			w[i] = tensor.RoundBF16(float32(rng.NormFloat64() * 0.02 * math.Exp(rng.NormFloat64())))
		}
		for b := 0; b*64 < n; b++ {
			lo, hi := b*64, min(b*64+64, n)
			switch rng.IntN(8) {
			case 0: // all zero: absmax 0, 0·∞ = NaN → code 0
				clear(w[lo:hi])
			case 1: // subnormal bf16 weights
				for i := lo; i < hi; i++ {
					w[i] = tensor.BF16ToF32(uint16(rng.IntN(0x7f) + 1))
				}
			case 2: // one value repeated (negative or positive)
				for i := lo; i < hi; i++ {
					w[i] = w[lo]
				}
			case 3: // absmax 1 and the rest at the bf16 roundings of code boundaries
				w[lo] = 1
				for i := lo + 1; i < hi; i++ {
					w[i] = tensor.RoundBF16(mids[rng.IntN(len(mids))])
				}
			}
		}
		raw := make([]byte, 2*n)
		for i, v := range w {
			binary.LittleEndian.PutUint16(raw[2*i:], tensor.F32ToBF16(v))
		}
		for _, double := range []bool{false, true} {
			name := fmt.Sprintf("%v double=%v", shape, double)
			want, err := tensor.QuantizeNF4(w, shape, tensor.BF16, double)
			if err != nil {
				t.Fatal(err)
			}
			got, err := q.QuantizeBF16(raw, shape, double)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if i := firstDiff(got.Packed, want.Packed); i >= 0 {
				t.Errorf("%s: code byte %d = %#x, CPU %#x", name, i, got.Packed[i], want.Packed[i])
			}
			if fmt.Sprint(got.Absmax) != fmt.Sprint(want.Absmax) || !bytes.Equal(got.QAbsmax, want.QAbsmax) ||
				fmt.Sprint(got.NestedAbsmax) != fmt.Sprint(want.NestedAbsmax) || math.Float32bits(got.Offset) != math.Float32bits(want.Offset) {
				t.Errorf("%s: absmax or double quantisation differs from the CPU's", name)
			}
		}
	}
	raw := make([]byte, 2*4096)
	binary.LittleEndian.PutUint16(raw[2*3001:], 0x7fc0) // NaN
	binary.LittleEndian.PutUint16(raw[2*3999:], 0xff80) // −∞
	if _, err := q.QuantizeBF16(raw, []int{64, 64}, true); err == nil || !strings.Contains(err.Error(), "element 3001") {
		t.Errorf("a NaN weight: %v, want an error naming element 3001", err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
