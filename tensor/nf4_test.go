package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

const goldenPath = "../testdata/tiny-qwen2-golden.safetensors"

// TestNF4MatchesBitsandbytes quantises tiny-qwen2's bf16 weights and compares
// packed codes, absmax and the dequantised bf16 weights with bitsandbytes' own,
// bit for bit, with and without double quantisation.
func TestNF4MatchesBitsandbytes(t *testing.T) {
	golden, err := Open(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	defer golden.Close()
	model, err := OpenCheckpoint("../testdata/tiny-qwen2")
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	for _, mode := range []string{"nf4", "nf4dq"} {
		for _, module := range []string{"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"} {
			w, err := model.Get(module + ".weight")
			if err != nil {
				t.Fatal(err)
			}
			q, err := QuantizeNF4(w.F32(), w.Shape, BF16, mode == "nf4dq")
			if err != nil {
				t.Fatal(err)
			}
			pre := mode + "." + module
			packed, _ := golden.Get(pre + ".packed")
			if bad := countDiff(q.Packed, packed.Data); bad > 0 {
				t.Errorf("%s: %d of %d packed bytes differ", pre, bad, len(q.Packed))
			}
			absmax, _ := golden.Get(pre + ".absmax_dequant_f32")
			if bad := countDiff(F32Bytes(q.AbsmaxF32()), absmax.Data); bad > 0 {
				t.Errorf("%s: absmax differs in %d bytes", pre, bad)
			}
			deq, _ := golden.Get(pre + ".dequant_bf16")
			if bad := countDiff(BF16Bytes(q.Dequantize()), deq.Data); bad > 0 {
				t.Errorf("%s: dequantised weights differ in %d bytes", pre, bad)
			}
		}
	}
}

func countDiff(a, b []byte) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// TestQuantizeNF4Nearest checks the decision tree against a brute-force nearest
// code on random inputs: they may differ only at an exact midpoint.
func TestQuantizeNF4Nearest(t *testing.T) {
	for i := 0; i < 100000; i++ {
		x := rand.Float32()*2 - 1
		best := 0
		for c := range NF4Table {
			if math.Abs(float64(x-NF4Table[c])) < math.Abs(float64(x-NF4Table[best])) {
				best = c
			}
		}
		if got := quantizeNF4(x); int(got) != best {
			t.Fatalf("quantizeNF4(%v) = %d, nearest is %d", x, got, best)
		}
	}
	code := DynamicMap8()
	for i := 0; i < 100000; i++ {
		x := rand.Float32()*2 - 1
		got := quantizeDynamic(code, x)
		d := math.Abs(float64(x - code[got]))
		for c := range code {
			if e := math.Abs(float64(x - code[c])); e < d-1e-7 {
				t.Fatalf("quantizeDynamic(%v) = %d (%v), %d (%v) is nearer", x, got, code[got], c, code[c])
			}
		}
	}
}

// TestNF4BlocksCrossRows: a block straddling two rows is indexed by flat element.
func TestNF4BlocksCrossRows(t *testing.T) {
	shape := []int{3, 40} // 120 elements: block 0 covers row 0 and half of row 1
	w := make([]float32, 120)
	for i := range w {
		w[i] = RoundBF16(float32(math.Sin(float64(i))) * float32(1+i/64*10))
	}
	q, err := QuantizeNF4(w, shape, BF16, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.QAbsmax) != 2 {
		t.Fatalf("%d blocks, want 2", len(q.QAbsmax))
	}
	d, absmax := q.Dequantize(), q.AbsmaxF32()
	for i := range w { // half NF4's widest gap (0.304/2 of absmax), plus the 8-bit absmax error
		if e := math.Abs(float64(d[i] - w[i])); e > 0.16*float64(absmax[i/64]) {
			t.Errorf("element %d: %v → %v (absmax %v)", i, w[i], d[i], absmax[i/64])
		}
	}
}
