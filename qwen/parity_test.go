package qwen

import (
	"fmt"
	"math"
	"testing"

	"github.com/qbench/qbench/tensor"
)

const (
	tinyDir    = "../testdata/tiny-qwen2"
	bnbDir     = "../testdata/tiny-qwen2-bnb-4bit"
	loraDir    = "../testdata/tiny-qwen2-lora"
	goldenPath = "../testdata/tiny-qwen2-golden.safetensors"
)

// fp32Tol bounds |ours − reference| for a logit computed in fp32 on both
// sides: the reference's own summation order differs (CUDA reductions), and
// the fixture README expects agreement to about 1e-3.
const fp32Tol = 1e-3

type golden struct {
	f *tensor.File
	t *testing.T
}

func openGolden(t *testing.T) *golden { return openGoldenAt(t, goldenPath) }

// openGoldenAt opens a fixture of reference tensors (closed with the test).
func openGoldenAt(t *testing.T, path string) *golden {
	f, err := tensor.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &golden{f, t}
}

func (g *golden) ints(name string) []int {
	tn, err := g.f.Get(name)
	if err != nil {
		g.t.Fatal(err)
	}
	v, err := tn.I64()
	if err != nil {
		g.t.Fatal(err)
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func (g *golden) floats(name string) ([]float32, bool) {
	tn, err := g.f.Get(name)
	if err != nil {
		return nil, false
	}
	return tn.F32(), true
}

// checkParity runs the three golden sequences through m and compares with
// variant: top-8 logits at every position within tol, the same top-1 ids,
// last_logits within tol where stored, and the 16 greedy tokens.
func checkParity(t *testing.T, m *Model, variant string, adapter int, tol float32) {
	g := openGolden(t)
	r := NewRunner(m)
	V := m.Config.Vocab
	for k := 0; k < 3; k++ {
		name := fmt.Sprintf("seq%d", k)
		ids := g.ints(name + ".input_ids")
		s := m.NewSeq(len(ids), adapter)
		logits, err := r.Forward([]*Seq{s}, [][]int{ids}, true)
		if err != nil {
			t.Fatal(err)
		}
		topIDs := g.ints(name + "." + variant + ".top8_ids")
		topVals, _ := g.floats(name + "." + variant + ".top8_vals")
		var worst float32
		for p := range ids {
			row := logits[p*V : (p+1)*V]
			for j := 0; j < 8; j++ {
				d := float32(math.Abs(float64(row[topIDs[p*8+j]] - topVals[p*8+j])))
				worst = max(worst, d)
				if d > tol {
					t.Errorf("%s %s pos %d: logit[%d] = %v, reference %v (|Δ| %.2g > %.2g)", variant, name, p, topIDs[p*8+j], row[topIDs[p*8+j]], topVals[p*8+j], d, tol)
				}
			}
			if a := Argmax(row); a != topIDs[p*8] {
				t.Errorf("%s %s pos %d: top-1 %d, reference %d", variant, name, p, a, topIDs[p*8])
			}
		}
		if last, ok := g.floats(name + "." + variant + ".last_logits"); ok {
			row := logits[(len(ids)-1)*V:]
			for i := range last {
				if d := float32(math.Abs(float64(row[i] - last[i]))); d > tol {
					t.Errorf("%s %s last_logits[%d] = %v, reference %v", variant, name, i, row[i], last[i])
					break
				}
			}
		}
		want := g.ints(name + "." + variant + ".greedy")
		got, err := Generate(r, [][]int{ids}, []int{adapter}, []*Sampler{NewSampler(Sampling{})}, GenerateOptions{MaxNewTokens: 16})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got[0]) != fmt.Sprint(want) {
			t.Errorf("%s %s greedy = %v, reference %v", variant, name, got[0], want)
		}
		t.Logf("%s %s: max |Δ| over top-8 = %.3g", variant, name, worst)
	}
}

func load(t *testing.T, dir string, opt LoadOptions) *Model {
	m, err := Load(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParityBF16(t *testing.T) {
	checkParity(t, load(t, tinyDir, LoadOptions{}), "bf16", -1, fp32Tol)
}

func TestParityQuantAndLoRA(t *testing.T) {
	cases := []struct {
		variant, dir, quant string
		lora                bool
	}{
		{"bf16_lora", tinyDir, QuantNone, true},
		{"nf4", tinyDir, QuantNF4, false},
		{"nf4_lora", tinyDir, QuantNF4, true},
		{"nf4dq", tinyDir, QuantNF4DQ, false},
		{"nf4dq_lora", tinyDir, QuantNF4DQ, true},
		{"nf4dq", bnbDir, QuantNone, false}, // the pre-quantised checkpoint holds nf4dq's quantisation
		{"nf4dq_lora", bnbDir, QuantNone, true},
	}
	for _, c := range cases {
		t.Run(c.variant+"/"+c.dir[len("../testdata/"):], func(t *testing.T) {
			opt := LoadOptions{Quant: c.quant}
			adapter := -1
			if c.lora {
				opt.Adapters, adapter = []string{loraDir}, 0
			}
			checkParity(t, load(t, c.dir, opt), c.variant, adapter, fp32Tol)
		})
	}
}

// TestParityHFBnb compares our fp32 arithmetic with transformers' bf16 run of
// the same NF4 weights. The reference logits are themselves bf16: the tiny
// model's top logits lie in [2, 4), where a bf16 ulp is 2^-6 ≈ 0.0156, so its
// final rounding alone is worth half an ulp, and the residual stream and each
// projection output rounded to bf16 (8 significant bits) add about as much
// again. The bound is two ulps at that magnitude, 2^-5: bf16 noise stays
// inside it (observed ≤ 0.028), while a wrong weight or adapter moves logits by
// whole units. Greedy tokens are not compared: bf16 noise may swap near-ties.
func TestParityHFBnb(t *testing.T) {
	const bf16Tol = 1.0 / 32
	g := openGolden(t)
	for _, c := range []struct {
		variant string
		lora    bool
	}{{"hf_bnb_bf16", false}, {"hf_bnb_bf16_lora", true}} {
		opt := LoadOptions{}
		adapter := -1
		if c.lora {
			opt.Adapters, adapter = []string{loraDir}, 0
		}
		m := load(t, bnbDir, opt)
		r := NewRunner(m)
		V := m.Config.Vocab
		for k := 0; k < 3; k++ {
			name := fmt.Sprintf("seq%d", k)
			ids := g.ints(name + ".input_ids")
			logits, err := r.Forward([]*Seq{m.NewSeq(len(ids), adapter)}, [][]int{ids}, true)
			if err != nil {
				t.Fatal(err)
			}
			topIDs := g.ints(name + "." + c.variant + ".top8_ids")
			topVals, _ := g.floats(name + "." + c.variant + ".top8_vals")
			var worst float64
			for p := range ids {
				for j := 0; j < 8; j++ {
					worst = max(worst, math.Abs(float64(logits[p*V+topIDs[p*8+j]]-topVals[p*8+j])))
				}
			}
			if worst > bf16Tol {
				t.Errorf("%s %s: max |Δ| over top-8 = %.3g > %.3g", c.variant, name, worst, bf16Tol)
			}
			t.Logf("%s %s: max |Δ| over top-8 = %.3g", c.variant, name, worst)
		}
	}
}
