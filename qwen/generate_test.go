package qwen

import (
	"fmt"
	"testing"
)

// candEngine is the CPU Runner answering ForwardCandidates as a device must:
// Candidates under each request, or the whole penalised row when more than
// max candidates would come back (max below MaxCandidates forces that path).
type candEngine struct {
	*Runner
	max           int
	steps, wholes int
}

func (c *candEngine) ForwardCandidates(seqs []*Seq, tokens [][]int, req []CandRequest) ([]StepRow, error) {
	logits, err := c.Forward(seqs, tokens, false)
	if err != nil {
		return nil, err
	}
	c.steps++
	V := c.m.Config.Vocab
	rows := make([]StepRow, len(seqs))
	for i, r := range req {
		row := logits[i*V : (i+1)*V]
		s := NewSampler(Sampling{Temperature: 1, TopK: r.K, RepetitionPenalty: r.Penalty})
		if cands, ok := s.Candidates(append([]float32(nil), row...), r.Seen, c.max); ok {
			rows[i].Cands = cands
			continue
		}
		RepetitionPenalty(row, r.Seen, r.Penalty)
		rows[i].Logits = row
		c.wholes++
	}
	return rows, nil
}

// TestGenerateCandidates: decoding through a CandidateEngine — penalty and
// top-k on the "device", the draw from the candidates on the host — gives
// the tokens the whole logits give, row for row and seed for seed, for
// greedy and sampled rows, with and without the penalty, rows without top-k
// or with one above MaxCandidates, and rows whose candidates overflow.
func TestGenerateCandidates(t *testing.T) {
	m := load(t, tinyDir, LoadOptions{Quant: QuantNF4DQ, Adapters: []string{loraDir}})
	r := NewRunner(m)
	prompts := [][]int{{151644, 872, 198, 3838, 374}, {9707, 11, 1879}, {151644, 872, 198, 3838, 374}, {9707, 11, 1879, 0}, {3838, 3838, 374, 11}, {872, 198}}
	adapters := []int{-1, 0, 0, -1, 0, -1}
	settings := []Sampling{
		{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05}, // Qwen2.5-3B-Instruct's generation_config.json
		{Temperature: 0, RepetitionPenalty: 1.3},                         // greedy with a penalty
		{Temperature: 1.2, TopK: 64, RepetitionPenalty: 1.1},
		{Temperature: 0.9, TopP: 0.9},                     // no top-k: the whole row
		{Temperature: 0.8, TopK: 100, TopP: 0.95},         // top-k above MaxCandidates: the whole row
		{Temperature: 0.5, TopK: 1, RepetitionPenalty: 2}, // top-1 sampling
	}
	samplers := func(seed uint64) []*Sampler {
		s := make([]*Sampler, len(settings))
		for i, x := range settings {
			x.Seed = seed + uint64(i)
			s[i] = NewSampler(x)
		}
		return s
	}
	opt := GenerateOptions{MaxNewTokens: 12}
	for _, max := range []int{MaxCandidates, 2} {
		for seed := uint64(0); seed < 2; seed++ {
			want, err := Generate(r, prompts, adapters, samplers(seed), opt)
			if err != nil {
				t.Fatal(err)
			}
			c := &candEngine{Runner: r, max: max}
			got, err := Generate(c, prompts, adapters, samplers(seed), opt)
			if err != nil {
				t.Fatal(err)
			}
			if c.steps == 0 {
				t.Fatal("Generate did not use ForwardCandidates")
			}
			for i := range prompts {
				if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
					t.Errorf("max %d seed %d row %d (%+v): candidates %v, whole logits %v", max, seed, i, settings[i], got[i], want[i])
				}
			}
			if max == 2 && c.wholes <= 2*c.steps { // rows 3 and 4 always; the others once in a while
				t.Errorf("max 2: only %d whole rows in %d steps", c.wholes, c.steps)
			}
		}
	}
}
