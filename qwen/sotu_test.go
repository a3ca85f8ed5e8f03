package qwen

import (
	"fmt"
	"math"
	"testing"
)

const sotuGolden = "../testdata/sotu/golden.safetensors"

// TestParitySotu compares the CPU path with transformers' fp32 logits of the
// small model trained for this project (testdata/sotu): bf16 weights alone
// and with its LoRA adapter, every logit of every position of three prompts.
// Trained weights, unlike the random tiny model's, have outlier rows and
// logits spread over tens of units, so the bound is relative: 1e-5 of the
// largest |logit| of the prompt (≈ 2e-4; observed ≤ 1.7e-6 of it, fp32
// summation order), while the adapter alone moves logits by whole units.
func TestParitySotu(t *testing.T) {
	const dir, rel = "../testdata/sotu/", 1e-5
	g := openGoldenAt(t, sotuGolden)
	for _, c := range []struct {
		variant string
		opt     LoadOptions
		adapter int
	}{
		{"base", LoadOptions{}, -1},
		{"lora", LoadOptions{Adapters: []string{dir + "sotu-qwen2-qa"}}, 0},
	} {
		m := load(t, dir+"sotu-qwen2", c.opt)
		r := NewRunner(m)
		V := m.Config.Vocab
		for k := 0; k < 3; k++ {
			ids := g.ints(fmt.Sprintf("prompt%d.ids", k))
			want, ok := g.floats(fmt.Sprintf("prompt%d.%s.logits", k, c.variant))
			if !ok {
				t.Fatalf("%s: no logits of prompt %d, %s", sotuGolden, k, c.variant)
			}
			got, err := r.Forward([]*Seq{m.NewSeq(len(ids), c.adapter)}, [][]int{ids}, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("%s prompt %d: %d logits, want %d", c.variant, k, len(got), len(want))
			}
			var scale, worst float64
			for _, v := range want {
				scale = max(scale, math.Abs(float64(v)))
			}
			for i := range want {
				worst = max(worst, math.Abs(float64(got[i]-want[i])))
			}
			if worst > rel*scale || math.IsNaN(worst) {
				t.Errorf("%s prompt %d: max |Δ| %.3g > %.3g (%g of max |logit| %.1f)", c.variant, k, worst, rel*scale, rel, scale)
			}
			for p := range ids {
				if a, b := Argmax(got[p*V:(p+1)*V]), Argmax(want[p*V:(p+1)*V]); a != b {
					t.Errorf("%s prompt %d pos %d: argmax %d, transformers %d", c.variant, k, p, a, b)
				}
			}
			t.Logf("%s prompt %d: max |Δ| %.3g, max |logit| %.1f", c.variant, k, worst, scale)
		}
	}
}
