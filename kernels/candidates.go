//go:build cuda

package kernels

import (
	"fmt"

	"github.com/qbench/qbench/qwen"
	"gorgonia.org/cu"
)

// Sampling on the device (cand_slice, cand_merge in sample.cu): the
// repetition penalty and each row's top-k candidates, so that a sampled step
// brings back at most qwen.MaxCandidates ids and logits a row instead of the
// vocabulary. The host draws from them with the row's own seeded generator
// (qwen.Sampler.NextFrom), which gives the token Next gives on the whole row.

const (
	candMax       = 64   // CAND_MAX in sample.cu
	candSlice     = 4096 // CAND_SLICE
	candMaxSlices = 128  // CAND_MAX_SLICES
)

// candBufs are the device buffers of the candidates' launches.
type candBufs struct {
	k, penalty, off Buf // [head rows] int32 top-k, float32 penalty; [head rows + 1] int32 offsets into seen
	seen            Buf // the rows' distinct tokens, int32 (grows)
	key, sid, info  Buf // per (row, slice): CAND_MAX keys and ids, one int4
	id, val, count  Buf // [head rows, CAND_MAX] ids and logits; [head rows] counts
	hostSeen        []int32
}

// candSlices is how many cand_slice blocks a row takes.
func (e *Engine) candSlices() int { return (e.cfg.Vocab + candSlice - 1) / candSlice }

// ensureCand allocates the candidates' buffers for the engine's head rows,
// and the seen list for n tokens; graphs that held a buffer that moved go.
func (e *Engine) ensureCand(n int) error {
	c := &e.cand
	if c.count.Ptr == 0 {
		R, S := int64(e.maxHead), int64(e.candSlices())
		if err := e.allocWords([]words{
			{&c.k, R, "top-k sizes"}, {&c.penalty, R, "penalties"}, {&c.off, R + 1, "seen offsets"},
			{&c.key, R * S * candMax, "slice keys"}, {&c.sid, R * S * candMax, "slice ids"}, {&c.info, 4 * R * S, "slice info"}, // int4s
			{&c.id, R * candMax, "candidate ids"}, {&c.val, R * candMax, "candidate logits"}, {&c.count, R, "candidate counts"},
		}); err != nil {
			return err
		}
	}
	if need := int64(max(n, 1024)) * 4; need > c.seen.Bytes {
		e.Dev.Free(&c.seen)
		e.dropGraphs()
		var err error
		if c.seen, err = e.Dev.Alloc(2*need, "seen tokens"); err != nil {
			return err
		}
	}
	return nil
}

// ForwardCandidates implements qwen.CandidateEngine.
func (e *Engine) ForwardCandidates(seqs []*qwen.Seq, tokens [][]int, req []qwen.CandRequest) ([]qwen.StepRow, error) {
	n, V := len(seqs), e.cfg.Vocab
	if len(req) != n {
		return nil, fmt.Errorf("candidates: %d sequences, %d requests", n, len(req))
	}
	if n > e.maxHead {
		return nil, fmt.Errorf("candidates: %d sequences in one pass, the engine returns at most %d", n, e.maxHead)
	}
	// The requests: top-k sizes, penalties, and the distinct tokens of the
	// penalised rows, one list after another.
	ks, pens, off := make([]int32, n), make([]float32, n), make([]int32, n+1)
	c := &e.cand
	c.hostSeen = c.hostSeen[:0]
	for i, r := range req {
		if r.K < 0 || r.K > candMax || e.candSlices() > candMaxSlices {
			r.K = 0 // the whole row
		}
		ks[i], pens[i] = int32(r.K), 1
		if r.Penalty != 0 && r.Penalty != 1 {
			pens[i] = r.Penalty
			for _, t := range r.Seen {
				if t >= 0 && t < V {
					c.hostSeen = append(c.hostSeen, int32(t))
				}
			}
		}
		off[i+1] = int32(len(c.hostSeen))
	}
	err := e.Dev.Do(func() error {
		if err := e.ensureCand(len(c.hostSeen)); err != nil {
			return err
		}
		for _, w := range []error{Write(c.k, ks), Write(c.penalty, pens), Write(c.off, off), Write(c.seen, c.hostSeen)} {
			if w != nil {
				return w
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := e.run(seqs, tokens, false, tailCandidates, nil); err != nil {
		return nil, err
	}
	counts, ids, vals := make([]int32, n), make([]int32, n*candMax), make([]float32, n*candMax)
	rows := make([]qwen.StepRow, n)
	err = e.Dev.Do(func() error {
		for _, r := range []error{Read(counts, c.count), Read(ids, c.id), Read(vals, c.val)} {
			if r != nil {
				return r
			}
		}
		for i, k := range counts {
			switch {
			case k == -2:
				return fmt.Errorf("forward: non-finite logits for sequence %d (NaN or infinite weights? the CPU engine names the layer)", i)
			case k == 0 || k > candMax:
				return fmt.Errorf("candidates: the device returned %d candidates for sequence %d", k, i)
			case k < 0: // ties past CAND_MAX, or no top-k: the whole row, penalised
				rows[i].Logits = make([]float32, V)
				at := Buf{Ptr: e.logits.Ptr + cu.DevicePtr(int64(i)*int64(V)*4), Bytes: int64(V) * 4}
				if err := Read(rows[i].Logits, at); err != nil {
					return err
				}
				if err := qwen.CheckFinite(rows[i].Logits, V); err != nil {
					return fmt.Errorf("sequence %d: %v", i, err)
				}
			default:
				rows[i].Cands = make([]qwen.Cand, k)
				for j := range rows[i].Cands {
					rows[i].Cands[j] = qwen.Cand{ID: int(ids[i*candMax+j]), Logit: vals[i*candMax+j]}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}
