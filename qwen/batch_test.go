package qwen

import (
	"fmt"
	"testing"
)

// TestBatchedEqualsSeparate: base and adapter rows decoded in one batch give
// exactly the tokens they give when each runs alone — a row's math never
// depends on its neighbours — and the adapter really changes the answer.
func TestBatchedEqualsSeparate(t *testing.T) {
	m := load(t, tinyDir, LoadOptions{Quant: QuantNF4DQ, Adapters: []string{loraDir, loraDir}})
	r := NewRunner(m)
	prompts := [][]int{{151644, 872, 198, 3838, 374}, {9707, 11, 1879}, {151644, 872, 198, 3838, 374}, {9707, 11, 1879, 0}}
	adapters := []int{-1, 0, 0, 1}
	opt := GenerateOptions{MaxNewTokens: 12}
	samplers := func(n int) []*Sampler {
		s := make([]*Sampler, n)
		for i := range s {
			s[i] = NewSampler(Sampling{Temperature: 0.8, TopK: 40, TopP: 0.9, RepetitionPenalty: 1.1, Seed: uint64(i)})
		}
		return s
	}
	batched, err := Generate(r, prompts, adapters, samplers(len(prompts)), opt)
	if err != nil {
		t.Fatal(err)
	}
	for i := range prompts {
		s := samplers(len(prompts))[i : i+1]
		alone, err := Generate(r, prompts[i:i+1], adapters[i:i+1], s, opt)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(alone[0]) != fmt.Sprint(batched[i]) {
			t.Errorf("row %d (adapter %d): batched %v, alone %v", i, adapters[i], batched[i], alone[0])
		}
	}
	base, _ := Generate(r, prompts[:1], []int{-1}, []*Sampler{NewSampler(Sampling{})}, opt)
	tuned, _ := Generate(r, prompts[:1], []int{0}, []*Sampler{NewSampler(Sampling{})}, opt)
	if fmt.Sprint(base[0]) == fmt.Sprint(tuned[0]) {
		t.Errorf("the adapter did not change the greedy answer %v", base[0])
	}
}
