package qwen

import (
	"errors"
	"fmt"
)

// ErrOutOfMemory is wrapped by an engine's errors when the device ran out of
// memory (for a sequence's cache, say): a smaller batch may still fit.
var ErrOutOfMemory = errors.New("out of memory")

// GenerateOptions controls decoding.
type GenerateOptions struct {
	MaxNewTokens int
	StopIDs      []int // generation stops after emitting one of these (ignored when empty)
	// OnToken, if set, is called with each sequence's index and new token as
	// it is produced (for streaming).
	OnToken func(seq, token int)
}

// Engine runs forward passes of one model on one device. The CPU Runner is
// the reference; the CUDA engine implements the same contract.
type Engine interface {
	// NewSeq starts a sequence whose KV cache holds capacity tokens, decoded
	// with adapter (−1 = base).
	NewSeq(capacity, adapter int) (*Seq, error)
	// Forward appends tokens[i] to seqs[i] and returns logits [n, vocab]: for
	// every new token when all is set, else for each sequence's last one.
	Forward(seqs []*Seq, tokens [][]int, all bool) ([]float32, error)
	// Release frees a sequence's cache.
	Release(*Seq)
	// Model is the model the engine runs.
	Model() *Model
}

// GreedyEngine is implemented by engines that can pick greedy tokens on the
// device, so that only ids come back. ForwardArgmax is Forward(seqs, tokens,
// false) followed by Argmax of each sequence's logits.
type GreedyEngine interface {
	ForwardArgmax(seqs []*Seq, tokens [][]int) ([]int, error)
}

// CandidateEngine is implemented by engines that apply the repetition
// penalty and select each row's top-k candidates on the device, so that at
// most MaxCandidates ids and logits a row come back instead of the vocabulary.
// ForwardCandidates is Forward(seqs, tokens, false) followed by, for each
// sequence i, Sampler.Candidates under req[i] (req[i].Seen distinct).
type CandidateEngine interface {
	ForwardCandidates(seqs []*Seq, tokens [][]int, req []CandRequest) ([]StepRow, error)
}

// LogProbEngine is implemented by engines that compute teacher-forced
// log-probabilities on the device. TargetLogProbs appends tokens to s and
// returns log p(targets[i] | s up to tokens[i]) for each i.
type LogProbEngine interface {
	TargetLogProbs(s *Seq, tokens, targets []int) ([]float64, error)
}

// BatchLogProbEngine is a LogProbEngine that takes many sequences at once,
// in shared forward passes: TargetLogProbsBatch(seqs, tokens, targets)[i] is
// TargetLogProbs(seqs[i], tokens[i], targets[i]).
type BatchLogProbEngine interface {
	TargetLogProbsBatch(seqs []*Seq, tokens, targets [][]int) ([][]float64, error)
}

// NewSeq implements Engine.
func (r *Runner) NewSeq(capacity, adapter int) (*Seq, error) {
	return r.m.NewSeq(capacity, adapter), nil
}

// Release implements Engine; the CPU cache is garbage-collected.
func (r *Runner) Release(*Seq) {}

// Model implements Engine.
func (r *Runner) Model() *Model { return r.m }

// Generate continues each prompt with its own adapter (−1 = base) and
// sampler, all sequences sharing every forward pass, and returns the new
// tokens of each (the stop token included when one ends it).
func Generate(e Engine, prompts [][]int, adapters []int, samplers []*Sampler, opt GenerateOptions) ([][]int, error) {
	n := len(prompts)
	if len(adapters) != n || len(samplers) != n {
		return nil, fmt.Errorf("generate: %d prompts, %d adapters, %d samplers", n, len(adapters), len(samplers))
	}
	seqs := make([]*Seq, n)
	maxPos := e.Model().Config.MaxPositions
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("generate: prompt %d is empty", i)
		}
		if opt.MaxNewTokens < 0 || opt.MaxNewTokens > maxPos-len(p) {
			return nil, fmt.Errorf("generate: a prompt of %d tokens and %d new tokens exceed the model's %d positions (max_position_embeddings)", len(p), opt.MaxNewTokens, maxPos)
		}
		s, err := e.NewSeq(len(p)+opt.MaxNewTokens, adapters[i])
		if err != nil {
			return nil, err
		}
		defer e.Release(s)
		seqs[i] = s
	}
	return GenerateFrom(e, seqs, prompts, samplers, opt)
}

// GenerateFrom continues sequences whose caches already hold a prefix of
// their prompts: the first step feeds prompts[i][seqs[i].Len:] (at least one
// token), and the whole prompt is the history the repetition penalty sees.
// The sequences' capacity must leave room for opt.MaxNewTokens.
func GenerateFrom(e Engine, seqs []*Seq, prompts [][]int, samplers []*Sampler, opt GenerateOptions) ([][]int, error) {
	m := e.Model()
	n := len(seqs)
	if len(prompts) != n || len(samplers) != n {
		return nil, fmt.Errorf("generate: %d sequences, %d prompts, %d samplers", n, len(prompts), len(samplers))
	}
	hist := make([][]int, n)
	out := make([][]int, n)
	first := make([][]int, n)
	for i, p := range prompts {
		if seqs[i].Len < 0 || seqs[i].Len >= len(p) {
			return nil, fmt.Errorf("generate: sequence %d holds %d of its %d prompt tokens; at least one must be fed", i, seqs[i].Len, len(p))
		}
		if seqs[i].Cap-len(p) < opt.MaxNewTokens {
			return nil, fmt.Errorf("generate: sequence %d holds %d tokens, too few for a prompt of %d and %d new tokens", i, seqs[i].Cap, len(p), opt.MaxNewTokens)
		}
		hist[i] = append(make([]int, 0, len(p)+opt.MaxNewTokens), p...)
		first[i] = p[seqs[i].Len:]
	}
	if opt.MaxNewTokens <= 0 {
		return out, nil
	}
	V := m.Config.Vocab
	// The device's shortcuts: greedy ids when every row is plainly greedy,
	// else each row's candidates; the whole logits otherwise.
	greedy, canGreedy := e.(GreedyEngine)
	cands, canCand := e.(CandidateEngine)
	for _, s := range samplers {
		if s.S.Temperature > 0 || s.penalised() {
			canGreedy = false
		}
	}
	canCand = canCand && !canGreedy
	var seen [][]int // each penalised sequence's distinct tokens, for the device
	var seenSet []map[int]bool
	var req []CandRequest
	if canCand {
		seen, seenSet = distinctTokens(hist, samplers)
		req = make([]CandRequest, 0, n)
	}
	active := make([]int, n) // indices of unfinished sequences
	for i := range active {
		active[i] = i
	}
	seqBuf, tokBuf := make([]*Seq, 0, n), make([][]int, 0, n)
	stepSeqs, stepToks := seqs, first
	for step := 0; len(active) > 0; step++ {
		var logits []float32
		var ids []int
		var rows []StepRow
		var err error
		switch {
		case canGreedy:
			ids, err = greedy.ForwardArgmax(stepSeqs, stepToks)
		case canCand:
			req = req[:0]
			for _, i := range active {
				req = append(req, samplers[i].Request(seen[i]))
			}
			rows, err = cands.ForwardCandidates(stepSeqs, stepToks, req)
		default:
			logits, err = e.Forward(stepSeqs, stepToks, false)
		}
		if err != nil {
			return nil, err
		}
		next := active[:0]
		stepSeqs, stepToks = seqBuf[:0], tokBuf[:0]
		for j, i := range active {
			var tok int
			switch {
			case canGreedy:
				tok = ids[j]
			case canCand && rows[j].Cands != nil:
				tok = samplers[i].NextFrom(rows[j].Cands)
			case canCand:
				tok = samplers[i].NextPenalised(rows[j].Logits)
			default:
				tok = samplers[i].Next(logits[j*V:(j+1)*V], hist[i])
			}
			if seenSet != nil && seenSet[i] != nil && !seenSet[i][tok] {
				seenSet[i][tok] = true
				seen[i] = append(seen[i], tok)
			}
			hist[i] = append(hist[i], tok)
			out[i] = append(out[i], tok)
			if opt.OnToken != nil {
				opt.OnToken(i, tok)
			}
			if len(out[i]) < opt.MaxNewTokens && !contains(opt.StopIDs, tok) {
				next = append(next, i)
				stepSeqs = append(stepSeqs, seqs[i])
				stepToks = append(stepToks, hist[i][len(hist[i])-1:])
			}
		}
		active = next
	}
	return out, nil
}

// distinctTokens lists, for each sequence whose sampler has a repetition
// penalty, the distinct tokens of its history (in first-seen order) and
// their set; nil for the others.
func distinctTokens(hist [][]int, samplers []*Sampler) ([][]int, []map[int]bool) {
	seen, sets := make([][]int, len(hist)), make([]map[int]bool, len(hist))
	for i, h := range hist {
		if !samplers[i].penalised() {
			continue
		}
		sets[i] = map[int]bool{}
		for _, t := range h {
			if !sets[i][t] {
				sets[i][t] = true
				seen[i] = append(seen[i], t)
			}
		}
	}
	return seen, sets
}

func contains(v []int, x int) bool {
	for _, y := range v {
		if y == x {
			return true
		}
	}
	return false
}
