package tensor

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
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

// TestQuantizeNF4Tree checks the search over nf4Mid against bitsandbytes'
// dQuantizeNF4 decision tree written out as it is in the CUDA source
// (bnbTreeNF4): at every threshold and its fp32 neighbours, ±0, ±1, ±Inf,
// NaN, and a million random values of weights' spread.
func TestQuantizeNF4Tree(t *testing.T) {
	xs := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())}
	for _, m := range nf4Mid {
		for _, d := range []float32{-1, 1} {
			v := m
			for k := 0; k < 3; k++ {
				xs = append(xs, v)
				v = math.Nextafter32(v, d*2)
			}
		}
	}
	r := rand.New(rand.NewPCG(rand.Uint64(), 5))
	for range 1000000 {
		xs = append(xs, float32(r.NormFloat64()*0.4))
	}
	for _, x := range xs {
		if got, want := quantizeNF4(x), bnbTreeNF4(x); got != want {
			t.Fatalf("quantizeNF4(%v) = %d, bitsandbytes' tree gives %d", x, got, want)
		}
	}
}

// bnbTreeNF4 is bitsandbytes' dQuantizeNF4 (csrc/kernels.cu) as written there.
func bnbTreeNF4(x float32) byte {
	if x > 0.03979014977812767 {
		if x > 0.3893125355243683 {
			if x > 0.6427869200706482 {
				if x > 0.8614784181118011 {
					return 15
				}
				return 14
			}
			if x > 0.5016634166240692 {
				return 13
			}
			return 12
		}
		if x > 0.2035212516784668 {
			if x > 0.2920137718319893 {
				return 11
			}
			return 10
		}
		if x > 0.1202552504837513 {
			return 9
		}
		return 8
	}
	if x > -0.33967943489551544 {
		if x > -0.13791173323988914 {
			if x > -0.045525018125772476 {
				return 7
			}
			return 6
		}
		if x > -0.23460740596055984 {
			return 5
		}
		return 4
	}
	if x > -0.6106329262256622 {
		if x > -0.4599952697753906 {
			return 3
		}
		return 2
	}
	if x > -0.8480964004993439 {
		return 1
	}
	return 0
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

// TestDequantizeComputeF32: an fp32 compute dtype keeps the fp32 product
// NF4[code]·absmax (bitsandbytes returns it unrounded); bf16 rounds it.
func TestDequantizeComputeF32(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	w := make([]float32, 256)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	q, err := QuantizeNF4(w, []int{4, 64}, F32, false)
	if err != nil {
		t.Fatal(err)
	}
	got := q.Dequantize()
	unrounded := 0
	for i, v := range got {
		code := q.Packed[i/2] >> 4
		if i%2 == 1 {
			code = q.Packed[i/2] & 15
		}
		want := NF4Table[code] * q.Absmax[i/64]
		if v != want {
			t.Fatalf("element %d: %v, want the fp32 product %v", i, v, want)
		}
		if RoundBF16(want) != want {
			unrounded++
		}
	}
	if unrounded == 0 {
		t.Fatal("every product is a bf16 value: the test shows nothing")
	}
}

// torchVector is an absmax-like vector (values in [0.01, 0.06)) made the same
// way as the vectors whose torch.mean testdata/torch-mean.json records.
func torchVector(n int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(n), 99))
	v := make([]float32, n)
	for i := range v {
		v[i] = 0.01 + rng.Float32()*0.05
	}
	return v
}

// TestTorchMeanFixture compares the offset with torch.mean of the same
// vectors on an H200's CUDA (what bitsandbytes quantises with), recorded in
// testdata/torch-mean.json. To remake it: QBENCH_TORCH_VECTORS=DIR go test
// -run TorchMeanFixture ./tensor writes the vectors to DIR, then on the GPU
// machine python3 kernels/dev/torch_mean.py DIR OUTDIR.
func TestTorchMeanFixture(t *testing.T) {
	if dir := os.Getenv("QBENCH_TORCH_VECTORS"); dir != "" {
		for _, n := range []int{768, 1536, 3072, 44032, 352256} {
			var b []byte
			for _, v := range torchVector(n) {
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("v%d.f32", n)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := os.ReadFile("../testdata/torch-mean.json")
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]struct {
		Bits    uint32 `json:"bits"`
		CPUBits uint32 `json:"cpu_bits"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	for ns, r := range rec {
		n, _ := strconv.Atoi(ns)
		got := math.Float32bits(torchMean(torchVector(n)))
		old := math.Float32bits(float32(func() float64 {
			var s float64
			for _, v := range torchVector(n) {
				s += float64(v)
			}
			return s / float64(n)
		}()))
		if got != r.Bits {
			t.Errorf("n=%d: offset bits %d, torch.mean on CUDA %d (on the CPU %d; correctly rounded %d)", n, got, r.Bits, r.CPUBits, old)
		} else {
			t.Logf("n=%d: offset = torch.mean on CUDA (CPU torch %+d ulp, correctly rounded %+d ulp)", n, int64(r.CPUBits)-int64(got), int64(old)-int64(got))
		}
	}
}
