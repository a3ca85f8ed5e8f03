package qwen

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestNextFromCandidates: drawing from the candidate set a device would hand
// over (Candidates: penalty, then the top-k with its ties) picks the same
// token as Next on the whole row, draw after draw from the same seeds — on
// fresh random logits rounded to quarters (many ties, at the k-th value
// too), with repeated history tokens, over greedy and sampled settings.
func TestNextFromCandidates(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 5))
	const V = 300
	same, whole := 0, 0
	for trial := 0; trial < 400; trial++ {
		s := Sampling{
			Temperature:       []float32{0, 0.7, 1.3}[rng.IntN(3)],
			TopK:              []int{1, 5, 20, 40}[rng.IntN(4)],
			TopP:              []float32{1, 0.8, 0.5}[rng.IntN(3)],
			RepetitionPenalty: []float32{1, 1.05, 1.3}[rng.IntN(3)],
			Seed:              rng.Uint64(),
		}
		a, b, n := NewSampler(s), NewSampler(s), NewSampler(s) // whole rows, candidates, Next
		max := []int{64, 24}[rng.IntN(2)]                      // 24: top-k 40, and some ties, fall back
		hist := make([]int, 1+rng.IntN(40))
		for i := range hist {
			hist[i] = rng.IntN(V / 3) // repeats
		}
		for step := 0; step < 20; step++ {
			orig := make([]float32, V)
			for i := range orig {
				orig[i] = float32(math.Round(rng.NormFloat64()*8) / 4)
			}
			full, part := append([]float32(nil), orig...), append([]float32(nil), orig...)
			if a.penalised() {
				RepetitionPenalty(full, hist, s.RepetitionPenalty)
			}
			want := Argmax(full)
			if s.Temperature > 0 {
				want = a.nextWhole(full) // the reference: transformers' transforms on the whole row
			}
			if got := n.Next(append([]float32(nil), orig...), hist); got != want {
				t.Fatalf("trial %d step %d %+v: Next %d, the whole row %d", trial, step, s, got, want)
			}
			c, ok := b.Candidates(part, hist, max)
			if !ok {
				// Too many ties at the k-th value for max: the device would
				// hand over the whole row; keep b's generator in step.
				whole++
				b.Next(append([]float32(nil), orig...), hist)
				continue
			}
			if got := b.NextFrom(c); got != want {
				t.Fatalf("trial %d step %d %+v: NextFrom %d, the whole row %d (%d candidates)", trial, step, s, got, want, len(c))
			}
			for i := 1; i < len(c); i++ {
				if c[i].ID <= c[i-1].ID {
					t.Fatalf("candidates not in id order: %v", c)
				}
			}
			same++
			hist = append(hist, want)
		}
	}
	t.Logf("%d draws the same from the candidates, %d fell back to the whole row", same, whole)
	if same < 4000 || whole == 0 {
		t.Fatalf("%d draws compared, %d fallbacks", same, whole)
	}
}

// BenchmarkNextInstruct: one sampling step over Qwen2.5's vocabulary with
// Qwen2.5-Instruct's settings (temperature 0.7, top-k 20, top-p 0.8,
// repetition penalty 1.05, 300 tokens of history) on the host: the top-k set
// first (NextPenalised), against transformers' order on the whole row
// (nextWhole, whose top-p sorts it).
func BenchmarkNextInstruct(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	row := make([]float32, 151936)
	for i := range row {
		row[i] = float32(rng.NormFloat64() * 3)
	}
	hist := make([]int, 300)
	for i := range hist {
		hist[i] = rng.IntN(len(row))
	}
	s := NewSampler(Sampling{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05})
	work := make([]float32, len(row))
	for _, c := range []struct {
		name string
		next func([]float32) int
	}{{"topk-first", s.NextPenalised}, {"whole-row", s.nextWhole}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				copy(work, row)
				RepetitionPenalty(work, hist, 1.05)
				c.next(work)
			}
		})
	}
}
