package qwen

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qbench/qbench/tensor"
)

// forwardBoth runs two Linears of one shape on the same fresh random input
// of rows rows, the first's output poisoned with NaN first.
func forwardBoth(rng *rand.Rand, l, ref *Linear, rows int) (x, got, want []float32) {
	x = make([]float32, rows*l.In)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	got, want = make([]float32, rows*l.Out), make([]float32, rows*l.Out)
	for i := range got {
		got[i] = float32(math.NaN())
	}
	var ws Workspace
	l.Forward(got, x, rows, nil, &ws)
	ref.Forward(want, x, rows, nil, &ws)
	return x, got, want
}

// TestPackedNF4 compares the packed NF4 matvec with the same product over the
// dequantised fp32 weights, on fresh random inputs: shapes whose 64-blocks
// straddle rows (and start mid-byte: odd in), rows longer than the decode
// buffer, every compute dtype, one and several batch rows, outputs poisoned
// first.
func TestPackedNF4(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 7))
	for _, sh := range [][2]int{{5, 96}, {4, 33}, {4, 1024}, {7, 70}, {6, 72}, {3, 5000}} { // 72: a row's blocks both buffered and fused; 5000: rows longer than the decode buffer
		for _, compute := range []tensor.DType{tensor.BF16, tensor.F16, tensor.F32} {
			for _, double := range []bool{false, true} {
				out, in := sh[0], sh[1]
				if out*in%2 != 0 {
					continue
				}
				w := make([]float32, out*in)
				for i := range w {
					w[i] = float32(rng.NormFloat64())
				}
				q, err := tensor.QuantizeNF4(w, []int{out, in}, compute, double)
				if err != nil {
					t.Fatal(err)
				}
				bias := make([]float32, out)
				for i := range bias {
					bias[i] = float32(rng.NormFloat64())
				}
				packed := &Linear{Name: "p", Out: out, In: in, Quant: q, Bias: bias}
				dense := &Linear{Name: "d", Out: out, In: in, W: q.Dequantize(), Bias: bias}
				for _, rows := range []int{1, 3} {
					x, got, want := forwardBoth(rng, packed, dense, rows)
					for i := range want {
						// The two sum in different orders: fp32 rounding of the
						// products' magnitudes, not of the (often cancelling) sum.
						r, o := i/out, i%out
						mag := math.Abs(float64(bias[o]))
						for k := 0; k < in; k++ {
							mag += math.Abs(float64(dense.W[o*in+k]) * float64(x[r*in+k]))
						}
						if d := math.Abs(float64(got[i] - want[i])); !(d <= 1e-6*mag) {
							t.Fatalf("%dx%d %v double=%v rows=%d: y[%d] = %v, want %v (Σ|w·x| %v)", out, in, compute, double, rows, i, got[i], want[i], mag)
						}
					}
				}
				if packed.W != nil {
					t.Fatal("the packed path made an fp32 copy")
				}
			}
		}
	}
}

// TestBF16Linear compares the matvec over bf16 weights held as 16-bit values
// with the one over their exact fp32 widening: the same products summed in
// the same order, so the results must be bit-identical; and Weights must
// widen them exactly.
func TestBF16Linear(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 11))
	for _, sh := range [][2]int{{5, 96}, {3, 7}, {4, 1024}} {
		out, in := sh[0], sh[1]
		bits := make([]uint16, out*in)
		w := make([]float32, out*in)
		for i := range bits {
			bits[i] = tensor.F32ToBF16(float32(rng.NormFloat64()))
			w[i] = math.Float32frombits(uint32(bits[i]) << 16)
		}
		bias := make([]float32, out)
		for i := range bias {
			bias[i] = float32(rng.NormFloat64())
		}
		half := &Linear{Name: "h", Out: out, In: in, W16: bits, Bias: bias}
		dense := &Linear{Name: "d", Out: out, In: in, W: w, Bias: bias}
		for _, rows := range []int{1, 3} {
			_, got, want := forwardBoth(rng, half, dense, rows)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%dx%d rows=%d: y[%d] = %v, want %v", out, in, rows, i, got[i], want[i])
				}
			}
		}
		if half.W != nil {
			t.Fatal("the bf16 path made an fp32 copy")
		}
		for i, v := range half.Weights() {
			if v != w[i] {
				t.Fatalf("%dx%d: Weights()[%d] = %v, want %v", out, in, i, v, w[i])
			}
		}
	}
}

// BenchmarkPackedNF4Rows is the packed NF4 product over 16 batch rows (the
// prefill and log-likelihood passes of the CPU path), 2048 × 2048.
func BenchmarkPackedNF4Rows(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	const out, in, rows = 2048, 2048, 16
	w := make([]float32, out*in)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	q, err := tensor.QuantizeNF4(w, []int{out, in}, tensor.BF16, true)
	if err != nil {
		b.Fatal(err)
	}
	l := &Linear{Name: "p", Out: out, In: in, Quant: q}
	x, y := make([]float32, rows*in), make([]float32, rows*out)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	var ws Workspace
	b.SetBytes(int64(len(q.Packed)))
	for b.Loop() {
		l.Forward(y, x, rows, nil, &ws)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(out*in*rows), "ns/MAC")
}
