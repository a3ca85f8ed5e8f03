//go:build cuda

package kernels

import "strings"

// The steps of a forward pass, as the profile labels them.
const (
	stepEmbed     = "embed+rope table"
	stepNormAttn  = "rmsnorm (+lora_shrink q/k/v)"
	stepQKV       = "gemv q/k/v+rope"
	stepAttn      = "attention"
	stepCombine   = "attention combine"
	stepCombineO  = "attention combine+lora_shrink o"
	stepAttnO     = "attention+lora_shrink o"
	stepShrinkO   = "lora_shrink o"
	stepO         = "gemv o_proj+residual"
	stepNormMLP   = "rmsnorm (+lora_shrink gate/up)"
	stepONorm     = "o finish+rmsnorm (+lora_shrink gate/up)"
	stepDownNorm  = "down finish+rmsnorm (+lora_shrink q/k/v)"
	stepGateUp    = "gemv gate/up+silu"
	stepShrinkD   = "lora_shrink down"
	stepDown      = "gemv down+residual"
	stepFinalNorm = "rmsnorm final"
	stepHead      = "gemv lm_head"
	stepArgmax    = "argmax"
	stepCands     = "sampling candidates"
)

// tail is what a pass runs after the logits.
type tail int

const (
	tailNone       tail = iota
	tailArgmax          // each row's greedy id (ForwardArgmax)
	tailCandidates      // each row's sampling candidates (ForwardCandidates)
)

// forward launches one forward pass over p.rows rows whose metadata is
// staged (pass.go), ending with logits for p.nHead rows and their tail. It
// follows qwen.Runner.Forward step for step; each comment names the CPU step
// a launch computes, or the steps it fuses.
func (e *Engine) forward(p pass, t tail) error {
	c := e.cfg
	eps := float32(c.RMSEps)
	e.nextMeta = e.nextMeta[:0] // this pass moves the metadata on (ForwardArgmax)
	f := &steps{e: e, lora: len(e.m.Adapters) > 0, pdl: p.pdl}
	// Runner.embed: each row's token embedding into the residual stream x,
	// and the cos/sin of its RoPE angles.
	f.do(stepEmbed, -1, embedCall(e.x, e.embed, e.embedB16, e.meta, c.Hidden, e.rope, e.invFreq, c.HeadDim/2, p.rows))
	normed := false // the layer's input norm ran with the previous layer's down (matNorm)
	for i := range e.layers {
		L := &e.layers[i]
		// xn = rmsNorm(x)·input_layernorm. With adapters, extra blocks of the
		// same launch compute the q/k/v LoRA shrinks A·xn; engines of one
		// sequence without them norm inside the q/k/v launch (deferNorm).
		if !normed {
			f.deferNorm(stepNormAttn, i, e.xn, L.inNorm, L.shQKV, eps, p.rows)
		}
		// q, k, v = xn·Wᵀ + b + LoRA expand; RoPE on q and k (the pairs j,
		// j + headDim/2 meet in one thread); k and v straight into each row's
		// cache slot.
		f.mat(stepQKV, i, L.qkv, p.rows)
		// att = softmax(q·Kᵀ/√headDim)·V over each row's cache, GQA: in
		// prefill passes a block per tile of a sequence's rows (flash
		// attention); in decode steps of short sequences a row's heads one
		// cluster, each KV head's positions split over its query heads'
		// blocks and merged in shared memory (with the o shrink A·att
		// below); else split over chunks of positions, then the chunks
		// combined (flash-decoding).
		decode := e.attnDecode(p, f.lora)
		switch {
		case p.tiles > 0:
			f.do(stepAttn, i, attnFlashCall(e.att, e.q, e.meta, e.tiles, i, c.Heads, c.KVHeads, c.HeadDim, p.tiles))
		case decode && f.lora:
			f.do(stepAttnO, i, attnDecodeCall(e.att, e.q, e.meta, i, c.Heads, c.KVHeads, c.HeadDim, p.rows, L.shO.desc))
		case decode:
			f.do(stepAttn, i, attnDecodeCall(e.att, e.q, e.meta, i, c.Heads, c.KVHeads, c.HeadDim, p.rows, nil))
		default:
			f.do(stepAttn, i, attnSplitCall(e.part, e.q, e.meta, i, c.Heads, c.KVHeads, c.HeadDim, p.splits, p.rows, p.oneEach))
		}
		// x += att·W_oᵀ + LoRA (its shrink A·att first): the residual add
		// is the epilogue of the matrix kernel. Decode steps compute the
		// shrink in the attention's one launch, or in the launch that
		// combines its splits.
		switch {
		case decode: // done with the attention
		case p.tiles > 0:
			f.shrink(stepShrinkO, i, L.shO, p.rows)
		case f.lora && p.rows <= combineClusterRows && e.Dev.combineCluster && c.Heads <= 16 && e.rmax <= 64:
			f.do(stepCombineO, i, attnCombineLoRACCall(e.att, e.part, c.Heads, c.HeadDim, p.splits, p.rows, L.shO.desc))
		case f.lora && p.rows < shrinkSplitMin:
			f.do(stepCombineO, i, attnCombineLoRACall(e.att, e.part, c.Heads, c.HeadDim, p.splits, p.rows, L.shO.desc, e.oPart, e.oCount))
		default:
			f.do(stepCombine, i, attnCombineCall(e.att, e.part, c.Heads, c.HeadDim, p.splits, p.rows))
			f.shrink(stepShrinkO, i, L.shO, p.rows)
		}
		// xn = rmsNorm(x)·post_attention_layernorm (+ the gate/up shrinks):
		// in decode batches in the launch that finishes o's product.
		f.matNorm(stepO, stepONorm, stepNormMLP, i, L.o, p.rows, e.xn, L.postNorm, L.shGU, eps)
		// act = silu(xn·W_gateᵀ + LoRA)·(xn·W_upᵀ + LoRA): gate row n and up
		// row n are one pair.
		f.mat(stepGateUp, i, L.gateup, p.rows)
		// x += act·W_downᵀ + LoRA; the next layer's input norm (+ its q/k/v
		// shrinks) in the launch that finishes it, as for o.
		f.shrink(stepShrinkD, i, L.shD, p.rows)
		if normed = i+1 < len(e.layers); normed {
			next := &e.layers[i+1]
			f.matNorm(stepDown, stepDownNorm, stepNormAttn, i, L.down, p.rows, e.xn, next.inNorm, next.shQKV, eps)
		} else {
			f.mat(stepDown, i, L.down, p.rows)
		}
	}
	// The final rmsNorm of the rows that get logits, lm_head; then greedy
	// ids (Argmax), or the repetition penalty and the top-k candidates
	// (Sampler.Candidates) in two steps: within slices, then merged.
	f.do(stepFinalNorm, -1, rmsnormCall(e.xnHead, e.x, e.norm, e.headIdx, c.Hidden, eps, p.nHead))
	f.mat(stepHead, -1, e.head, p.nHead)
	switch t {
	case tailArgmax: // a decode step also advances the rows' metadata for the next one (Engine.run)
		adv := Buf{}
		if p.oneEach {
			adv = e.meta
		}
		f.do(stepArgmax, -1, argmaxCall(e.ids, e.logits, c.Vocab, p.nHead, e.argWS, adv))
	case tailCandidates:
		cb, S := &e.cand, e.candSlices()
		f.do(stepCands, -1, candSliceCall(e.logits, c.Vocab, cb.seen, cb.off, cb.penalty, cb.k, cb.key, cb.sid, cb.info, S, p.nHead))
		f.do(stepCands, -1, candMergeCall(cb.key, cb.sid, cb.info, cb.k, S, c.Vocab, cb.id, cb.val, cb.count, p.nHead))
	}
	return f.err
}

// steps issues a pass's launches in order and keeps the first error.
type steps struct {
	e       *Engine
	lora    bool      // the model has adapters
	pdl     bool      // launch as programmatic dependents (pass.pdl)
	pending *normStep // a norm deferNorm held back for the next matrix launch
	err     error
}

// normStep is a norm's parameters (steps.norm).
type normStep struct {
	label  string
	layer  int
	out, w Buf
	sh     shrinkDesc
	eps    float32
	rows   int
}

// deferNorm is norm — run inside the next matrix launch where that is
// nf4_lut with a block a tile (engines of one sequence without adapters:
// each block norms x itself, the norm's launch and its gap gone; batch 1
// 350 → 366 tok/s, H200), else before it (QBENCH_NO_NORM_FUSE=1: always).
// With adapters the norm's launch also computes their shrinks, which cost
// more inside the matrix kernel than the launch does (kernels/PERF.md).
func (f *steps) deferNorm(label string, layer int, out, w Buf, sh shrinkDesc, eps float32, rows int) {
	if f.lora || !f.e.lut || envSet("QBENCH_NO_NORM_FUSE") {
		f.norm(label, layer, out, w, sh, eps, rows)
		return
	}
	f.pending = &normStep{label, layer, out, w, sh, eps, rows}
}

// do runs c, or records it under label (and its layer, −1 outside the
// layers) while profiling.
func (f *steps) do(label string, layer int, c call) {
	if f.err != nil {
		return
	}
	if p := f.pending; p != nil { // a deferred norm no matrix launch took: before c
		f.pending = nil
		f.norm(p.label, p.layer, p.out, p.w, p.sh, p.eps, p.rows)
	}
	c.pdl = f.pdl
	if p := f.e.prof; p != nil {
		p.launches = append(p.launches, recorded{label, layer, c})
		return
	}
	f.err = f.e.Dev.run(c)
}

// mat runs one fused matrix op over rows batch rows.
func (f *steps) mat(label string, layer int, op matOp, rows int) {
	if f.err != nil {
		return
	}
	cs, err := f.e.Dev.matmulCalls(op.kind, op.desc, rows, op.pairs, op.k)
	if err != nil {
		f.err = err
		return
	}
	if p := f.pending; p != nil && len(cs) == 1 && strings.HasPrefix(cs[0].name, "nf4_lut") {
		if c, ok := withNorm(cs[0], f.e.x, p.w, p.eps); ok {
			cs[0], f.pending = c, nil
		}
	}
	for _, c := range cs {
		f.do(label, layer, c)
	}
}

// matNorm is mat then norm (normLabel) — or, where the op's launches end
// in its only mmas_finish and the norm would be one launch (decode batches),
// that finish and the norm as one resid_norm launch (label fused): without
// adapters (3B, H200: batch 20 4,915 → 5,111 tok/s, 64 10,234 → 10,698),
// and with them for batches of more than wideBatchMin rows (64: 8,227 →
// 8,387); at 20 with adapters its block a row, reading every A row of the
// shrinks, lost to rmsnorm_lora's many blocks (3,887 → 3,763), so there a
// cluster of blocks takes each row (resid_norm_c: 3,874 → 4,007) — and
// without adapters too, since its split sums take 16 loads at a time
// (batch 8 2,696 → 2,814, 20 5,550 → 5,660, 32 6,906 → 6,980).
func (f *steps) matNorm(label, fused, normLabel string, layer int, op matOp, rows int, out, w Buf, sh shrinkDesc, eps float32) {
	if f.err != nil {
		return
	}
	e := f.e
	cs, err := e.Dev.matmulCalls(op.kind, op.desc, rows, op.pairs, op.k)
	if err != nil {
		f.err = err
		return
	}
	fins := 0
	for _, c := range cs {
		if c.fin != nil {
			fins++
		}
	}
	last := cs[len(cs)-1].fin // the op's one finish, over its whole batch, fused below
	d := e.Dev
	cluster := 0 // resid_norm_c up to wideBatchMin rows (or everywhere: tests)
	if rows <= wideBatchMin || d.residClusterAll {
		cluster = d.residCluster
	}
	if !d.residNorm || fins != 1 || last == nil || last.m0 != 0 || last.n != rows || f.lora && (rows <= wideBatchMin && cluster == 0 || rows >= shrinkSplitMin) {
		for _, c := range cs {
			f.do(label, layer, c)
		}
		f.deferNorm(normLabel, layer, out, w, sh, eps, rows)
		return
	}
	for _, c := range cs[:len(cs)-1] {
		f.do(label, layer, c)
	}
	var s *shrinkOp
	if f.lora {
		s = sh.desc
	}
	f.do(fused, layer, residNormCall(last, out, w, e.cfg.Hidden, eps, s, cluster))
}

// norm is rmsnorm of x into out with the LoRA shrink of the modules reading
// out when the model has adapters: fused into the norm's launch, or in long
// passes shrink_split after it.
func (f *steps) norm(label string, layer int, out, w Buf, sh shrinkDesc, eps float32, rows int) {
	e := f.e
	if !f.lora || rows >= shrinkSplitMin && sh.slots*e.rmax <= ssOuts {
		f.do(label, layer, rmsnormCall(out, e.x, w, Buf{}, e.cfg.Hidden, eps, rows))
		f.shrink(label, layer, sh, rows)
		return
	}
	f.do(label, layer, rmsnormLoRACall(out, e.x, w, e.cfg.Hidden, eps, sh.desc, sh.slots, e.rmax, rows, e.Dev.SMs))
}

// shrink is a LoRA shrink of its own launch (when the model has adapters):
// K split in chunks, A staged once a group of 32 rows (shrink_split, when
// its shared memory holds the outputs' rows), or a block an output.
func (f *steps) shrink(label string, layer int, sh shrinkDesc, rows int) {
	if !f.lora {
		return
	}
	if outs := sh.slots * f.e.rmax; rows >= shrinkSplitMin && outs <= ssOuts {
		for _, c := range shrinkSplitCalls(sh.desc, outs, sh.k, rows, f.e.Dev.splitWS) {
			f.do(label, layer, c)
		}
		return
	}
	f.do(label, layer, shrinkCall(sh.desc, f.e.rmax, sh.slots, rows))
}

// combineClusterRows is the most rows whose attention combine meets the o
// shrink's head partials in a cluster (attn_combine_lora_c): H200, 3B with
// adapters, against attn_combine_lora's counter: batch 1 +1 %, 20 +0.5 %,
// 64 −1.5 % (kernels/PERF.md, fifteenth session).
const combineClusterRows = 32

// shrinkSplitMin is the fewest rows whose shrinks take shrink_split (decode
// steps measured slower with it: few blocks and a second launch).
const shrinkSplitMin = prefillMin + 1
