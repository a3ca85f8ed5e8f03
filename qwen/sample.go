package qwen

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Sampling selects how the next token is chosen. Temperature 0 is greedy.
// The transforms run in transformers' order: repetition penalty, temperature,
// top-k, top-p; then one draw from the softmax with the sampler's own RNG.
type Sampling struct {
	Temperature       float32
	TopK              int     // 0 = off
	TopP              float32 // 1 = off
	RepetitionPenalty float32 // 1 = off
	Seed              uint64
}

// Sampler draws tokens for one sequence; it owns a seeded RNG so a run is
// reproducible whatever else runs beside it.
type Sampler struct {
	S     Sampling
	rng   *rand.Rand
	order []int     // [vocab] scratch for top-p
	probs []float32 // [vocab] scratch
}

// NewSampler makes a sampler whose draws depend only on s.Seed.
func NewSampler(s Sampling) *Sampler {
	return &Sampler{S: s, rng: rand.New(rand.NewPCG(s.Seed, 0x9e3779b97f4a7c15))}
}

// Next picks the next token from logits (which it may modify) given the
// sequence so far (prompt and generated tokens, for the repetition penalty).
func (s *Sampler) Next(logits []float32, history []int) int {
	if s.penalised() {
		RepetitionPenalty(logits, history, s.S.RepetitionPenalty)
	}
	return s.NextPenalised(logits)
}

// penalised reports whether s applies a repetition penalty.
func (s *Sampler) penalised() bool {
	return s.S.RepetitionPenalty != 0 && s.S.RepetitionPenalty != 1
}

// NextPenalised is Next on logits the repetition penalty was already applied
// to (by a device: see CandidateEngine).
func (s *Sampler) NextPenalised(logits []float32) int {
	if s.S.Temperature <= 0 {
		return Argmax(logits)
	}
	if k := s.S.TopK; k > 0 && k < len(logits) {
		// Only the top-k set (with its ties) can be drawn: the same draw as
		// nextWhole's from it alone (NextFrom), without sorting the whole row
		// for top-p (TestNextFromCandidates).
		c, _ := topK(logits, k, len(logits))
		return s.NextFrom(c)
	}
	return s.nextWhole(logits)
}

// nextWhole is NextPenalised by transformers' transforms on the whole row:
// temperature, top-k, top-p, softmax, one draw (the reference NextFrom is
// tested against).
func (s *Sampler) nextWhole(logits []float32) int {
	Temperature(logits, s.S.Temperature)
	if s.S.TopK > 0 {
		TopK(logits, s.S.TopK)
	}
	if cap(s.order) < len(logits) {
		s.order, s.probs = make([]int, len(logits)), make([]float32, len(logits))
	}
	if s.S.TopP > 0 && s.S.TopP < 1 {
		TopP(logits, s.S.TopP, s.order[:len(logits)], s.probs[:len(logits)])
	}
	p := s.probs[:len(logits)]
	Softmax(p, logits)
	return draw(p, s.rng.Float32())
}

// draw is the index where the running sum of the probabilities p first
// exceeds u (the last nonzero one when u falls in the rounding gap at the top).
func draw(p []float32, u float32) int {
	var acc float32
	last := 0
	for i, v := range p {
		if v > 0 {
			acc += v
			last = i
			if u < acc {
				return i
			}
		}
	}
	return last
}

// Argmax returns the index of the largest value, the first on ties (as torch.argmax).
func Argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// RepetitionPenalty divides positive logits of tokens already seen by p and
// multiplies negative ones by p (transformers' RepetitionPenaltyLogitsProcessor).
// Each distinct token is penalised once.
func RepetitionPenalty(logits []float32, history []int, p float32) {
	for i, t := range history {
		if t < 0 || t >= len(logits) || seenBefore(history[:i], t) {
			continue
		}
		if logits[t] < 0 {
			logits[t] *= p
		} else {
			logits[t] /= p
		}
	}
}

func seenBefore(h []int, t int) bool {
	for _, x := range h {
		if x == t {
			return true
		}
	}
	return false
}

// Temperature divides every logit by t.
func Temperature(logits []float32, t float32) {
	for i := range logits {
		logits[i] /= t
	}
}

// TopK sets to −Inf every logit below the k-th largest (ties with it are kept).
func TopK(logits []float32, k int) {
	if k >= len(logits) {
		return
	}
	kth := kthLargest(logits, k)
	for i, v := range logits {
		if v < kth {
			logits[i] = float32(math.Inf(-1))
		}
	}
}

// kthLargest finds the k-th largest value with a bounded min-heap of size k.
func kthLargest(v []float32, k int) float32 {
	h := make([]float32, 0, k)
	for _, x := range v {
		if len(h) < k {
			h = append(h, x)
			for i := len(h) - 1; i > 0 && h[(i-1)/2] > h[i]; i = (i - 1) / 2 {
				h[i], h[(i-1)/2] = h[(i-1)/2], h[i]
			}
		} else if x > h[0] {
			h[0] = x
			for i := 0; ; {
				l, r, m := 2*i+1, 2*i+2, i
				if l < k && h[l] < h[m] {
					m = l
				}
				if r < k && h[r] < h[m] {
					m = r
				}
				if m == i {
					break
				}
				h[i], h[m] = h[m], h[i]
				i = m
			}
		}
	}
	return h[0]
}

// TopP keeps the smallest set of most likely tokens whose probability reaches
// p, as transformers' TopPLogitsWarper: sort ascending, drop tokens while the
// cumulative probability stays ≤ 1−p, always keep the most likely one.
// order and probs are scratch of len(logits).
func TopP(logits []float32, p float32, order []int, probs []float32) {
	Softmax(probs, logits)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return logits[order[a]] < logits[order[b]] })
	var cum float32
	for j, i := range order[:len(order)-1] {
		cum += probs[i]
		if cum > 1-p {
			break
		}
		logits[order[j]] = float32(math.Inf(-1))
	}
}

// Softmax writes exp(v−max)/Σ to dst; −Inf entries get 0.
func Softmax(dst, v []float32) {
	m := float32(math.Inf(-1))
	for _, x := range v {
		m = max(m, x)
	}
	var sum float64
	for i, x := range v {
		e := float32(math.Exp(float64(x - m)))
		dst[i] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for i := range dst {
		dst[i] *= inv
	}
}

// Cand is one token a sampling step may still pick: its id and logit (after
// the repetition penalty).
type Cand struct {
	ID    int
	Logit float32
}

// Candidates is what a device has to hand the host for a step of s when
// s.TopK > 0 (or greedy): the repetition penalty applied to logits (in
// place), then every token whose logit is at least the TopK-th largest —
// ties with it included, so possibly more than TopK — in id order. NextFrom
// on them picks the token Next picks on the whole row. ok is false when the
// set would exceed max (ties) or s has no top-k: then the whole row is needed.
func (s *Sampler) Candidates(logits []float32, history []int, max int) (c []Cand, ok bool) {
	k := s.S.TopK
	if s.S.Temperature <= 0 {
		k = 1
	}
	if k <= 0 || k > max {
		return nil, false
	}
	if s.penalised() {
		RepetitionPenalty(logits, history, s.S.RepetitionPenalty)
	}
	return topK(logits, k, max)
}

// topK is every token whose logit is at least the k-th largest, in id order;
// ok is false when there are more than max.
func topK(logits []float32, k, max int) (c []Cand, ok bool) {
	kth := logits[0]
	if k < len(logits) {
		kth = kthLargest(logits, k)
	} else {
		for _, v := range logits {
			kth = min(kth, v)
		}
	}
	for i, v := range logits {
		if v >= kth {
			if len(c) == max {
				return nil, false
			}
			c = append(c, Cand{i, v})
		}
	}
	return c, true
}

// NextFrom is Next over a step's candidates (Candidates: penalty applied,
// the top-k set with its ties, in id order) instead of the whole row: the
// same transforms on the same values in the same order — every other token
// is −Inf after top-k, adds 0 to the softmax's sums and sorts first in
// top-p's ascending order — and the same draw, so the same token.
func (s *Sampler) NextFrom(c []Cand) int {
	v := make([]float32, len(c))
	for i, x := range c {
		v[i] = x.Logit
	}
	if s.S.Temperature <= 0 {
		return c[Argmax(v)].ID
	}
	Temperature(v, s.S.Temperature)
	TopK(v, s.S.TopK)
	order, probs := make([]int, len(v)), make([]float32, len(v))
	if s.S.TopP > 0 && s.S.TopP < 1 {
		TopP(v, s.S.TopP, order, probs)
	}
	Softmax(probs, v)
	return c[draw(probs, s.rng.Float32())].ID
}

// MaxCandidates is the most candidates a CandidateEngine hands back for a row
// (CAND_MAX in kernels/sample.cu).
const MaxCandidates = 64

// CandRequest is what a CandidateEngine needs for one row of a step: its
// top-k size (1 for greedy; 0 when the sampler has none, or one above
// MaxCandidates: the whole row comes back), its repetition penalty (1 = off)
// and the distinct tokens the penalty applies to, each once.
type CandRequest struct {
	K       int
	Penalty float32
	Seen    []int
}

// Request is s's CandRequest for a step, given the distinct tokens of the
// sequence so far.
func (s *Sampler) Request(seen []int) CandRequest {
	k := s.S.TopK
	if s.S.Temperature <= 0 {
		k = 1
	}
	if k > MaxCandidates {
		k = 0
	}
	r := CandRequest{K: k, Penalty: 1}
	if s.penalised() {
		r.Penalty, r.Seen = s.S.RepetitionPenalty, seen
	}
	return r
}

// StepRow is a CandidateEngine's answer for one row: its candidates
// (Candidates' set, with the penalty applied), or, when they would exceed
// MaxCandidates or the request had no top-k, the whole row of logits with
// the penalty applied. Next for the row is NextFrom(Cands) or
// NextPenalised(Logits).
type StepRow struct {
	Cands  []Cand
	Logits []float32
}
