//go:build cuda

package kernels

import (
	"fmt"
	"slices"

	"github.com/qbench/qbench/qwen"
)

// Engine runs a qwen.Model on the GPU; it implements qwen.Engine,
// qwen.GreedyEngine, qwen.CandidateEngine and qwen.LogProbEngine. Weights, LoRA and the per-layer
// launch descriptors are uploaded once (upload.go); activations are sized for
// MaxRows rows; each sequence's KV cache is allocated by NewSeq. A pass
// stages its per-row metadata (pass.go) and runs forward (forward.go); a
// decode step (one token per sequence) is one CUDA graph launch, captured
// once per shape and kept by the engine.
type Engine struct {
	Dev     *Device
	m       *qwen.Model
	cfg     *qwen.Config
	MaxRows int                   // rows one forward pass may hold (prefill tokens of all sequences)
	maxHead int                   // rows of logits one pass may return
	mma     bool                  // NF4 matrices that fit go to the tensor-core batch kernels (see NewEngine)
	lut     bool                  // NF4 matrices that fit go to nf4_lut (engines for one sequence)
	rmax    int                   // largest LoRA rank (0 without adapters)
	plain   map[*qwen.Linear]bool // NF4 matrices kept off the tensor-core layouts (markPlain)

	bufs     []*Buf // everything to free on Close
	embed    Buf    // [vocab, hidden] bf16 (embedB16) or fp32; also the tied lm_head
	embedB16 bool
	norm     Buf // [hidden] final RMSNorm weight
	layers   []layerOps
	head     matOp // lm_head

	x, xn, q, att, act, xnHead Buf // [rows, hidden], [rows, hidden], [rows, q dim], [rows, q dim], [rows, intermediate], [head rows, hidden]
	rope, invFreq              Buf // [rows, headDim/2, 2] cos/sin per row; [headDim/2] inverse frequencies
	tQKV, tO, tGU, tD          Buf // LoRA shrink outputs A·x: [rows, slots·rmax] for q/k/v, o, gate/up, down
	oPart, oCount              Buf // attn_combine_lora's per-head o shrink partials [rows, heads, rmax] and row counters [rows] int32
	meta, headIdx, ids, logits Buf // [rows] rowMeta; [head rows] int32; [head rows] int32; [head rows, vocab]
	lp                         Buf // [rows] target log-probabilities
	argWS                      argmaxWS
	part                       Buf // attention partials [rows, heads, splits, headDim+2]
	tiles                      Buf // [rows][2] int32 {first row, rows}: attn_flash's tiles of a prefill pass
	cand                       candBufs

	graphs map[graphKey]*Graph // captured decode steps of this engine
	prof   *profile            // non-nil while profiling: launches are recorded, not run

	host     map[*qwen.Linear][]byte // re-laid NF4 codes of the layer being uploaded
	embed16  []uint16                // the embedding as bf16, likewise
	hostMeta []rowMeta
	hostIdx  []int32
	// nextMeta is the metadata the last greedy decode step's argmax left on
	// the device; empty once another pass has run (run).
	nextMeta []rowMeta
	hostTile []int32
	hostIDs  []int32
	out      []float32
}

// devSeq is a sequence's device state.
type devSeq struct{ k, v Buf } // [layers, cap, kvHeads*headDim] each

// NewEngine uploads m to the device. maxRows bounds the rows of one forward
// pass (prefill tokens summed over sequences). batch is how many sequences
// will usually decode together: from 2 up, NF4 matrices are stored for the
// tensor-core batch kernels (2.1× the decode rate at batch 20, 3.8× the
// prefill rate on an H200); for 1, for nf4_lut (see kernels/PERF.md).
// QBENCH_NO_MMA=1 forces the CUDA-core GEMV for batches, QBENCH_NO_LUT=1 for
// one sequence.
func NewEngine(d *Device, m *qwen.Model, maxRows, batch int) (*Engine, error) {
	if len(m.Adapters) > maxAdapters {
		return nil, fmt.Errorf("cuda: %d adapters, the GPU engine carries at most %d", len(m.Adapters), maxAdapters)
	}
	e := &Engine{Dev: d, m: m, cfg: m.Config, MaxRows: maxRows, maxHead: min(maxRows, 1024), rmax: m.MaxRank(),
		graphs: map[graphKey]*Graph{}}
	e.mma = batch >= 2 && m.Config.HeadDim%16 == 0 && !envSet("QBENCH_NO_MMA")
	e.lut = batch < 2 && !envSet("QBENCH_NO_LUT")
	e.markPlain()
	e.prepareEmbed()
	err := d.Do(e.upload)
	e.host = nil
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Model implements qwen.Engine.
func (e *Engine) Model() *qwen.Model { return e.m }

// Close frees the engine's graphs and device buffers (sequences are freed by Release).
func (e *Engine) Close() {
	e.Dev.Do(func() error {
		e.dropGraphs()
		for _, b := range e.bufs {
			e.Dev.Free(b)
		}
		e.Dev.Free(&e.part)
		e.Dev.Free(&e.cand.seen)
		return nil
	})
	e.bufs = nil
}

// NewSeq implements qwen.Engine: the sequence's K and V caches on the device.
func (e *Engine) NewSeq(capacity, adapter int) (*qwen.Seq, error) {
	c := e.cfg
	bytes := int64(c.Layers) * int64(capacity) * int64(c.KVHeads*c.HeadDim) * 4
	ds := &devSeq{}
	err := e.Dev.Do(func() error {
		var err error
		if ds.k, err = e.Dev.Alloc(bytes, "K cache"); err != nil {
			return err
		}
		if ds.v, err = e.Dev.Alloc(bytes, "V cache"); err != nil {
			e.Dev.Free(&ds.k)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &qwen.Seq{Adapter: adapter, Cap: capacity, Handle: ds}, nil
}

// Release implements qwen.Engine.
func (e *Engine) Release(s *qwen.Seq) {
	if ds, ok := s.Handle.(*devSeq); ok {
		e.Dev.Do(func() error {
			e.Dev.Free(&ds.k)
			e.Dev.Free(&ds.v)
			return nil
		})
		s.Handle = nil
	}
}

// Forward implements qwen.Engine. A pass larger than the engine holds
// (MaxRows rows, or logits for more rows than it returns at once) runs as
// several: each sequence in turn, in chunks of its tokens.
func (e *Engine) Forward(seqs []*qwen.Seq, tokens [][]int, all bool) ([]float32, error) {
	rows, err := e.m.CheckBatch(seqs, tokens)
	if err != nil {
		return nil, err
	}
	head := len(seqs)
	if all {
		head = rows
	}
	if rows <= e.MaxRows && head <= e.maxHead {
		n, err := e.run(seqs, tokens, all, tailNone, nil)
		if err != nil {
			return nil, err
		}
		out, err := e.readLogits(n, nil)
		if err != nil {
			return nil, err
		}
		return out, qwen.CheckFinite(out, e.cfg.Vocab)
	}
	out := make([]float32, 0, head*e.cfg.Vocab)
	chunk := min(e.MaxRows, e.maxHead)
	for i, s := range seqs {
		for lo := 0; lo < len(tokens[i]); lo += chunk {
			hi := min(lo+chunk, len(tokens[i]))
			n, err := e.run([]*qwen.Seq{s}, [][]int{tokens[i][lo:hi]}, all, tailNone, nil)
			if err != nil {
				return nil, err
			}
			if all || hi == len(tokens[i]) {
				if out, err = e.readLogits(n, out); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, qwen.CheckFinite(out, e.cfg.Vocab)
}

// readLogits copies n rows of logits from the device, appended to dst (or
// into the engine's reused buffer when dst is nil).
func (e *Engine) readLogits(n int, dst []float32) ([]float32, error) {
	V := e.cfg.Vocab
	var out []float32
	if dst == nil {
		if cap(e.out) < n*V {
			e.out = make([]float32, n*V)
		}
		out = e.out[:n*V]
	} else {
		dst = append(dst, make([]float32, n*V)...)
		out = dst[len(dst)-n*V:]
	}
	if err := e.Dev.Do(func() error { return Read(out, e.logits) }); err != nil {
		return nil, err
	}
	if dst == nil {
		return out, nil
	}
	return dst, nil
}

// ForwardArgmax implements qwen.GreedyEngine: only the ids come back, read
// in the same turn of the device's thread as the launch.
func (e *Engine) ForwardArgmax(seqs []*qwen.Seq, tokens [][]int) ([]int, error) {
	var ids []int32
	n, err := e.run(seqs, tokens, false, tailArgmax, func(n int) error {
		if cap(e.hostIDs) < n {
			e.hostIDs = make([]int32, n)
		}
		ids = e.hostIDs[:n]
		return Read(ids, e.ids)
	})
	if err != nil {
		return nil, err
	}
	out := make([]int, n)
	for i, v := range ids {
		if v < 0 {
			return nil, fmt.Errorf("forward: non-finite logits for sequence %d (NaN or infinite weights? the CPU engine names the layer)", i)
		}
		out[i] = int(v)
	}
	// A decode step's argmax advanced the rows' metadata on the device:
	// the step that feeds each sequence the id it picked needs no staging.
	if n == len(seqs) && len(e.hostMeta) == n {
		e.nextMeta = append(e.nextMeta[:0], e.hostMeta...)
		for i := range e.nextMeta {
			e.nextMeta[i].Tok, e.nextMeta[i].Pos = ids[i], e.nextMeta[i].Pos+1
		}
	}
	return out, nil
}

// TargetLogProbs implements qwen.LogProbEngine: it appends tokens to s and
// returns, for each new position i, log p(targets[i] | the sequence up to
// and including tokens[i]), computed on the device so only the numbers come
// back.
func (e *Engine) TargetLogProbs(s *qwen.Seq, tokens, targets []int) ([]float64, error) {
	out, err := e.TargetLogProbsBatch([]*qwen.Seq{s}, [][]int{tokens}, [][]int{targets})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// TargetLogProbsBatch implements qwen.BatchLogProbEngine: TargetLogProbs for
// each sequence, the sequences sharing forward passes (as many whole
// sequences a pass as it holds; a sequence longer than a pass in chunks of
// its own), so that an evaluation's teacher-forced passes run at the
// prefill rate rather than one short pass a question.
func (e *Engine) TargetLogProbsBatch(seqs []*qwen.Seq, tokens, targets [][]int) ([][]float64, error) {
	if len(tokens) != len(seqs) || len(targets) != len(seqs) {
		return nil, fmt.Errorf("logprobs: %d sequences, %d token lists, %d target lists", len(seqs), len(tokens), len(targets))
	}
	for i := range seqs {
		if len(targets[i]) != len(tokens[i]) || len(tokens[i]) == 0 {
			return nil, fmt.Errorf("logprobs: sequence %d: %d tokens, %d targets", i, len(tokens[i]), len(targets[i]))
		}
		for _, t := range targets[i] {
			if t < 0 || t >= e.cfg.Vocab {
				return nil, fmt.Errorf("logprobs: target id %d outside the vocabulary", t)
			}
		}
	}
	out := make([][]float64, len(seqs))
	chunk := min(e.MaxRows, e.maxHead)
	// pass runs the rows of ps (tokens ts, targets gs) and appends each
	// sequence's log-probabilities to out[idx[k]].
	pass := func(idx []int, ps []*qwen.Seq, ts, gs [][]int) error {
		n, err := e.run(ps, ts, true, tailNone, nil)
		if err != nil {
			return err
		}
		tg := make([]int32, 0, n)
		for _, g := range gs {
			for _, t := range g {
				tg = append(tg, int32(t))
			}
		}
		lp := make([]float32, n)
		err = e.Dev.Do(func() error {
			if err := e.Dev.Sync(); err != nil { // the pass is done with the buffers the copy below writes
				return err
			}
			if err := Write(e.ids, tg); err != nil {
				return err
			}
			if err := e.Dev.run(targetLogprobCall(e.lp, e.logits, e.ids, e.cfg.Vocab, n)); err != nil {
				return err
			}
			return Read(lp, e.lp)
		})
		if err != nil {
			return err
		}
		at := 0
		for k, i := range idx {
			for range ts[k] {
				out[i] = append(out[i], float64(lp[at]))
				at++
			}
		}
		return nil
	}
	var idx []int
	var ps []*qwen.Seq
	var ts, gs [][]int
	rows := 0
	flush := func() error {
		if len(idx) == 0 {
			return nil
		}
		err := pass(idx, ps, ts, gs)
		idx, ps, ts, gs, rows = idx[:0], ps[:0], ts[:0], gs[:0], 0
		return err
	}
	for i, s := range seqs {
		if len(tokens[i]) > chunk { // alone, in chunks of what one pass holds
			if err := flush(); err != nil {
				return nil, err
			}
			for lo := 0; lo < len(tokens[i]); lo += chunk {
				hi := min(lo+chunk, len(tokens[i]))
				if err := pass([]int{i}, []*qwen.Seq{s}, [][]int{tokens[i][lo:hi]}, [][]int{targets[i][lo:hi]}); err != nil {
					return nil, err
				}
			}
			continue
		}
		if rows+len(tokens[i]) > chunk {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		idx, ps, ts, gs = append(idx, i), append(ps, s), append(ts, tokens[i]), append(gs, targets[i])
		rows += len(tokens[i])
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// run stages the metadata of one pass and launches it, with t after the
// logits: a replayed graph for decode steps of fewer than directRows rows,
// direct launches otherwise. It returns the rows of logits; the caller's
// Read of them (or of the ids) waits for the pass. read, if not nil, runs
// on the device's thread right after the launch, with the rows of logits.
//
// A decode step that continues the last greedy one exactly — the same
// rows, each sequence fed the id that step picked — skips staging: the
// last step's argmax left the metadata advanced on the device, and the
// host's copy of it would only wait for the stream and copy the same bytes.
func (e *Engine) run(seqs []*qwen.Seq, tokens [][]int, all bool, t tail, read func(n int) error) (nHead int, err error) {
	p, err := e.prepare(seqs, tokens, all)
	if err != nil {
		return 0, err
	}
	onDevice := len(e.nextMeta) > 0 && p.rows == len(seqs) && slices.Equal(e.hostMeta, e.nextMeta)
	e.nextMeta = e.nextMeta[:0]
	decode := !all && p.rows == len(seqs)
	p.pdl = decode
	graph := decode && p.rows < directRows
	if decode {
		for _, s := range seqs {
			p.reserve = max(p.reserve, (s.Cap+attnChunk-1)/attnChunk)
		}
	}
	if graph { // a graph is keyed by rows and splits: size splits by capacity so it survives the whole generation
		p.splits = p.reserve
	}
	err = e.Dev.Do(func() error {
		if err := e.stage(p, !onDevice); err != nil {
			return err
		}
		if !graph { // no wait here: the caller's Read of the results waits for the pass
			if err := e.forward(p, t); err != nil {
				return err
			}
		} else {
			key := graphKey{p.rows, p.splits, t}
			g := e.graphs[key]
			if g == nil {
				var err error
				if g, err = e.Dev.Capture(func() error { return e.forward(p, t) }); err != nil {
					return err
				}
				e.graphs[key] = g
			}
			if err := e.Dev.Launch(g); err != nil {
				return err
			}
		}
		if read != nil {
			return read(p.nHead)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for i, s := range seqs {
		s.Len += len(tokens[i])
	}
	return p.nHead, nil
}

// directRows is the fewest rows of a decode step launched directly rather
// than replayed as a graph: from there a step's kernels (5 ms and more at
// the 3B shape) outlast the host's launches (~4.8 µs each, ~470 a step), so
// direct launches (programmatic dependents in the stream) run as fast as the
// graph (H200, 3B, LoRA on: batch 20 3,702 tok/s against 3,656–3,732, batch
// 64 6,790 against 6,675–6,733), and a batch whose rows finish one by one
// (an evaluation's tail) captures no graph for each new row count. Shorter
// steps, where the host would be the bound, replay graphs.
const directRows = 16

// dropGraphs destroys the engine's captured graphs (on the device's thread),
// e.g. when a buffer they hold moves.
func (e *Engine) dropGraphs() {
	for k, g := range e.graphs {
		g.destroy()
		delete(e.graphs, k)
	}
}
