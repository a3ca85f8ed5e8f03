//go:build cuda

package kernels

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// matOp is one fused matrix launch of a layer: its descriptor (passed to
// the kernel by value), the kernel family that runs it and its shape.
type matOp struct {
	desc     *gemvOp
	kind     kernelKind
	pairs, k int   // output pairs (pair_rows in gemv.cuh), input columns
	weights  int64 // bytes of weights (codes, scales, bias, LoRA B) one pass reads
}

// shrinkDesc is a LoRA shrink's descriptor (passed by value), with the bytes
// of LoRA A it reads.
type shrinkDesc struct {
	desc  *shrinkOp
	slots int
	k     int // input columns
	bytes int64
}

// layerOps is one decoder layer on the device.
type layerOps struct {
	inNorm, postNorm      Buf // [hidden] RMSNorm weights
	qkv, o, gateup, down  matOp
	shQKV, shO, shGU, shD shrinkDesc // LoRA shrinks of the modules sharing an input
}

// layoutPipe re-lays the NF4 codes of each layer for its kernels on every
// core, a few layers ahead of the upload that copies them, in the buffers of
// layers already uploaded: the host holds a few layers' codes at a time
// rather than the whole model's (1.5 GB at the 3B shape, on top of the model
// itself), and makes no garbage for the collector to lag behind.
type layoutPipe struct {
	layers []chan map[*qwen.Linear][]byte // layer i's codes, sent once
	slots  chan struct{}                  // layers being re-laid
	stop   chan struct{}
	mu     sync.Mutex
	free   [][]byte // buffers of uploaded layers
}

func (e *Engine) startLayouts(ahead int) *layoutPipe {
	p := &layoutPipe{layers: make([]chan map[*qwen.Linear][]byte, len(e.m.Layers)), slots: make(chan struct{}, ahead),
		stop: make(chan struct{})}
	for i := range p.layers {
		p.layers[i] = make(chan map[*qwen.Linear][]byte, 1)
	}
	go func() {
		for i := range e.m.Layers {
			select {
			case p.slots <- struct{}{}:
			case <-p.stop:
				return
			}
			go func() {
				host := map[*qwen.Linear][]byte{}
				var mu sync.Mutex
				var wg sync.WaitGroup
				for _, l := range e.m.Layers[i].Linears() {
					if l.Quant != nil && e.nf4Fmt(l) != fmtNF4 {
						wg.Add(1)
						go func() {
							defer wg.Done()
							t := e.layout(p.buffer(len(l.Quant.Packed)), l)
							mu.Lock()
							host[l] = t
							mu.Unlock()
						}()
					}
				}
				wg.Wait()
				p.layers[i] <- host // buffered: never blocks
			}()
		}
	}()
	return p
}

// take waits for layer i's codes and lets the next layer start.
func (p *layoutPipe) take(i int) map[*qwen.Linear][]byte {
	h := <-p.layers[i]
	<-p.slots
	return h
}

// buffer is the smallest free buffer of at least n bytes (the same matrix
// of an earlier layer), or nil.
func (p *layoutPipe) buffer(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	b := p.free[best]
	p.free = append(p.free[:best], p.free[best+1:]...)
	return b
}

// recycle takes back the buffers of an uploaded layer.
func (p *layoutPipe) recycle(host map[*qwen.Linear][]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range host {
		p.free = append(p.free, b)
	}
}

// close ends the pipe early (an upload failed); layers under way finish alone.
func (p *layoutPipe) close() { close(p.stop) }

// prepareEmbed makes the bf16 embedding the device holds (shared with a
// tied lm_head), on every core.
func (e *Engine) prepareEmbed() {
	if emb := e.m.Embed; emb.W16 != nil { // a bf16 checkpoint's own values
		e.embed16 = emb.W16
		return
	}
	w := e.m.Embed.Weights()
	e.embed16 = make([]uint16, len(w))
	var inexact atomic.Bool
	tensor.ForChunks(len(w), 1<<20, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			e.embed16[i] = tensor.F32ToBF16(w[i])
			if tensor.BF16ToF32(e.embed16[i]) != w[i] {
				inexact.Store(true)
			}
		}
	})
	if inexact.Load() { // an f16/f32 checkpoint: keep the embedding (and tied head) in fp32
		e.embed16 = nil
	}
}

// fused is a layer's matrices grouped by launch: the modules sharing an
// input (q/k/v, gate/up) run in one.
func fused(l *qwen.DecoderLayer) (qkv, o, gateup, down []*qwen.Linear) {
	ls := l.Linears() // q, k, v, o, gate, up, down
	return ls[0:3], ls[3:4], ls[4:6], ls[6:7]
}

// tcFits reports whether an NF4 matrix fits the tensor-core kernels: whole
// 64-blocks per row, rows in 16s, bf16 compute (their A operand).
func tcFits(l *qwen.Linear) bool {
	q := l.Quant
	return q != nil && q.BlockSize == 64 && l.In%64 == 0 && l.Out%16 == 0 && q.Compute == tensor.BF16
}

// markPlain records the matrices that must stay off the tensor-core
// layouts because a matrix sharing their launch does not fit them.
func (e *Engine) markPlain() {
	e.plain = map[*qwen.Linear]bool{}
	for i := range e.m.Layers {
		qkv, o, gu, down := fused(&e.m.Layers[i])
		for _, g := range [][]*qwen.Linear{qkv, o, gu, down} {
			ok := true
			for _, l := range g {
				ok = ok && tcFits(l)
			}
			for _, l := range g {
				if !ok {
					e.plain[l] = true
				}
			}
		}
	}
}

// nf4Fmt is how this engine stores an NF4 matrix: for the tensor-core
// kernels when they apply to its whole launch, tiled for gemv when a row
// holds a whole 1024-column tile, else as bitsandbytes packed it.
func (e *Engine) nf4Fmt(l *qwen.Linear) matFmt {
	q := l.Quant
	tc := tcFits(l) && !e.plain[l]
	switch {
	case (e.mma || e.lut) && tc:
		return fmtNF4LUT
	case l.In >= 1024 && l.In%64 == 0 && q.BlockSize == 64:
		return fmtNF4Tiled
	}
	return fmtNF4
}

// layout returns an NF4 matrix's codes in the order its kernel reads them,
// in t when it has the room.
func (e *Engine) layout(t []byte, l *qwen.Linear) []byte {
	q := l.Quant
	switch e.nf4Fmt(l) {
	case fmtNF4LUT:
		return lutNF4(t, q.Packed, l.Out, l.In)
	case fmtNF4Tiled:
		return tileNF4(t, q.Packed, l.Out, l.In)
	}
	return q.Packed
}

// denseKind is the kernel of a bf16 matrix: the tensor cores when this
// engine uses them and the shape fits (16-row tiles, 64-column steps).
func (e *Engine) denseKind(out, in int) kernelKind {
	if e.mma && in%64 == 0 && out%16 == 0 {
		return kindMMABF16
	}
	return kindGemvDense
}

func (e *Engine) alloc(bytes int64, what string) (Buf, error) {
	b, err := e.Dev.Alloc(bytes, what)
	if err == nil {
		e.bufs = append(e.bufs, &b)
	}
	return b, err
}

// words is a buffer of n 4-byte elements for allocWords.
type words struct {
	b    *Buf
	n    int64
	what string
}

// allocWords allocates each buffer with e.alloc (freed on Close).
func (e *Engine) allocWords(bufs []words) error {
	for _, a := range bufs {
		var err error
		if *a.b, err = e.alloc(4*a.n, a.what); err != nil {
			return err
		}
	}
	return nil
}

func uploadTo[T any](e *Engine, v []T, what string) (Buf, error) {
	b, err := Upload(e.Dev, v, what)
	if err == nil {
		e.bufs = append(e.bufs, &b)
	}
	return b, err
}

func bf16Bits(w []float32) []uint16 {
	out := make([]uint16, len(w))
	for i, v := range w {
		out[i] = tensor.F32ToBF16(v)
	}
	return out
}

// matBytes is what one pass over a matrix reads: codes and scales for NF4,
// the weights otherwise, plus its bias and LoRA B matrices.
func matBytes(l *qwen.Linear) int64 {
	n := int64(l.Out) * int64(l.In)
	var b int64
	switch {
	case l.Quant != nil && l.Quant.Double():
		blocks := n / int64(l.Quant.BlockSize)
		b = n/2 + blocks + 4*(blocks/int64(l.Quant.NestedBlockSize)+1)
	case l.Quant != nil:
		b = n/2 + 4*n/int64(l.Quant.BlockSize)
	case l.DType == tensor.BF16 || l.DType == tensor.U8:
		b = 2 * n
	default:
		b = 4 * n
	}
	if l.Bias != nil {
		b += 4 * int64(l.Out)
	}
	for _, mod := range l.LoRA {
		if mod != nil {
			b += 4 * int64(len(mod.B))
		}
	}
	return b
}

// uploadMat puts one Linear on the device; slot is its place in the LoRA
// shrink buffer (−1 = none). It returns the descriptor and the kernel that
// runs it.
func (e *Engine) uploadMat(l *qwen.Linear, slot int) (mat, kernelKind, error) {
	mt := mat{N: int32(l.Out), K: int32(l.In), LoraSlot: int32(slot), Round: 2}
	var kind kernelKind
	var err error
	var b Buf
	switch {
	case l.Quant != nil:
		q := l.Quant
		if l.In%32 != 0 || q.BlockSize%32 != 0 || bits.OnesCount(uint(q.BlockSize)) != 1 {
			return mt, 0, fmt.Errorf("cuda: %s: NF4 on the GPU needs in-features %% 32 == 0 and a power-of-two block size ≥ 32 (have %d, %d)", l.Name, l.In, q.BlockSize)
		}
		mt.Fmt = e.nf4Fmt(l)
		mt.BlockShift = int32(bits.TrailingZeros(uint(q.BlockSize)))
		switch q.Compute {
		case tensor.BF16:
			mt.Round = 0
		case tensor.F16:
			mt.Round = 1
		}
		switch {
		case mt.Fmt == fmtNF4LUT && e.mma:
			kind = kindMMANF4
		case mt.Fmt == fmtNF4LUT:
			kind = kindLUTNF4
		case mt.Round != 0:
			kind = kindGemvNF4Round
		default:
			kind = kindGemvNF4
		}
		codes := e.host[l] // re-laid by the layout pipe
		if codes == nil {
			codes = e.layout(nil, l)
		}
		if b, err = uploadTo(e, codes, l.Name+" codes"); err != nil {
			return mt, 0, err
		}
		mt.Packed = uint64(b.Ptr)
		if q.Double() {
			if bits.OnesCount(uint(q.NestedBlockSize)) != 1 {
				return mt, 0, fmt.Errorf("cuda: %s: nested block size %d is not a power of two", l.Name, q.NestedBlockSize)
			}
			mt.NestedShift = int32(bits.TrailingZeros(uint(q.NestedBlockSize)))
			mt.Offset = q.Offset
			if b, err = uploadTo(e, q.QAbsmax, l.Name+" absmax codes"); err != nil {
				return mt, 0, err
			}
			mt.QAbsmax = uint64(b.Ptr)
			if b, err = uploadTo(e, q.NestedAbsmax, l.Name+" nested absmax"); err != nil {
				return mt, 0, err
			}
			mt.Nested = uint64(b.Ptr)
			if b, err = uploadTo(e, q.NestedCode, l.Name+" nested code"); err != nil {
				return mt, 0, err
			}
			mt.Code = uint64(b.Ptr)
		} else {
			if b, err = uploadTo(e, q.Absmax, l.Name+" absmax"); err != nil {
				return mt, 0, err
			}
			mt.Absmax = uint64(b.Ptr)
		}
	case l.DType == tensor.BF16 || l.DType == tensor.U8:
		if l.In%8 != 0 {
			return mt, 0, fmt.Errorf("cuda: %s: in-features %d must be a multiple of 8", l.Name, l.In)
		}
		mt.Fmt, kind = fmtBF16, e.denseKind(l.Out, l.In)
		bits := l.W16 // a bf16 checkpoint's own values
		if bits == nil {
			bits = bf16Bits(l.Weights())
		}
		if b, err = uploadTo(e, bits, l.Name); err != nil {
			return mt, 0, err
		}
		mt.BF16 = uint64(b.Ptr)
	default:
		if l.In%8 != 0 {
			return mt, 0, fmt.Errorf("cuda: %s: in-features %d must be a multiple of 8", l.Name, l.In)
		}
		mt.Fmt, kind = fmtF32, kindGemvDense // gemv_dense reads both dense formats
		if b, err = uploadTo(e, l.Weights(), l.Name); err != nil {
			return mt, 0, err
		}
		mt.F32 = uint64(b.Ptr)
	}
	if l.Bias != nil {
		if b, err = uploadTo(e, l.Bias, l.Name+" bias"); err != nil {
			return mt, 0, err
		}
		mt.Bias = uint64(b.Ptr)
	}
	for a, mod := range l.LoRA {
		if mod == nil || slot < 0 {
			continue
		}
		if b, err = uploadTo(e, mod.B, l.Name+" lora_B"); err != nil {
			return mt, 0, err
		}
		mt.LoraB[a], mt.LoraScale[a], mt.LoraRank[a] = uint64(b.Ptr), mod.Scale, int32(mod.Rank)
	}
	return mt, kind, nil
}

// uploadOp puts the matrices of one fused launch (q/k/v, o, gate/up or down)
// on the device with its descriptor: base carries the launch's other fields.
func (e *Engine) uploadOp(base gemvOp, ls []*qwen.Linear, what string) (matOp, error) {
	op := base
	op.Nmat, op.TStride = int32(len(ls)), int32(len(ls)*e.rmax)
	mo := matOp{k: ls[0].In, pairs: (ls[0].Out + 1) / 2}
	switch op.Mode {
	case modeGateUp:
		mo.pairs = ls[0].Out
	case modeQKV:
		mo.pairs = (ls[0].Out + ls[1].Out + ls[2].Out) / 2
	}
	for s, l := range ls {
		slot := -1
		if e.rmax > 0 { // the model has adapters
			slot = s
		}
		mt, kind, err := e.uploadMat(l, slot)
		if err != nil {
			return mo, err
		}
		if s > 0 && kind != mo.kind {
			return mo, fmt.Errorf("cuda: %s mixes matrix formats (NF4, 16-bit, tensor-core layouts) that one fused launch cannot serve", what)
		}
		op.Mat[s], mo.kind, mo.weights = mt, kind, mo.weights+matBytes(l)
	}
	if mo.kind == kindMMANF4 || mo.kind == kindLUTNF4 { // LUTNF4: passes of 3–128 rows run mmas_nf4
		if err := e.Dev.reserveSplit(splitWSBytes(mo.pairs, mo.k)); err != nil {
			return mo, err
		}
		if err := e.Dev.reservePlanes(e.MaxRows, mo.k); err != nil { // prefill_wgmma (devices that run it)
			return mo, err
		}
	}
	if mo.kind == kindMMABF16 {
		if err := e.Dev.reservePlanes(e.MaxRows, mo.k); err != nil { // dense_wgmma (devices that run it)
			return mo, err
		}
	}
	if mo.kind == kindLUTNF4 {
		if err := e.Dev.reserveLUT(mo.pairs / 8); err != nil {
			return mo, err
		}
	}
	mo.desc = &op
	return mo, nil
}

// uploadShrink builds the LoRA shrink descriptor of the modules sharing input x
// (k columns) whose results go to t.
func (e *Engine) uploadShrink(ls []*qwen.Linear, x, t Buf, k int) (shrinkDesc, error) {
	sd := shrinkDesc{slots: len(ls), k: k}
	op := shrinkOp{X: uint64(x.Ptr), T: uint64(t.Ptr), Rows: uint64(e.meta.Ptr), NSlots: int32(len(ls)), K: int32(k),
		TStride: int32(len(ls) * e.rmax), Rmax: int32(e.rmax)}
	for s, l := range ls {
		for a, mod := range l.LoRA {
			if mod == nil {
				continue
			}
			b, err := uploadTo(e, mod.A, l.Name+" lora_A")
			if err != nil {
				return sd, err
			}
			op.A[s][a], op.Rank[s][a] = uint64(b.Ptr), int32(mod.Rank)
			sd.bytes += 4 * int64(len(mod.A))
		}
	}
	sd.desc = &op
	if outs := len(ls) * e.rmax; e.rmax > 0 && outs <= ssOuts && e.MaxRows >= shrinkSplitMin { // shrink_split's partial sums (long passes only)
		if err := e.Dev.reserveSplit(shrinkWSBytes(outs, k, e.MaxRows)); err != nil {
			return sd, err
		}
	}
	return sd, nil
}

// upload allocates the activations and puts the weights on the device (on
// its thread).
func (e *Engine) upload() error {
	c := e.cfg
	R := int64(e.MaxRows)
	qDim, kvDim := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	r := int64(max(e.rmax, 1))
	if err := e.allocWords([]words{
		{&e.x, R * int64(c.Hidden), "residual stream"}, {&e.xn, R * int64(c.Hidden), "normed activations"},
		{&e.q, R * int64(qDim), "queries"}, {&e.att, R * int64(qDim), "attention output"},
		{&e.act, R * int64(c.Intermediate), "MLP activations"}, {&e.xnHead, int64(e.maxHead) * int64(c.Hidden), "head input"},
		{&e.logits, int64(e.maxHead) * int64(c.Vocab), "logits"},
		{&e.tQKV, R * 3 * r, "LoRA q/k/v shrink"}, {&e.tO, R * r, "LoRA o shrink"},
		{&e.tGU, R * 2 * r, "LoRA gate/up shrink"}, {&e.tD, R * r, "LoRA down shrink"},
		{&e.rope, R * int64(c.HeadDim), "RoPE table"}, {&e.headIdx, R, "head rows"}, {&e.tiles, 2 * R, "attention tiles"}, {&e.ids, R, "token ids"},
		{&e.lp, R, "log-probabilities"}, {&e.oPart, R * int64(c.Heads) * r, "LoRA o shrink partials"},
	}); err != nil {
		return err
	}
	var err error
	if e.oCount, err = uploadTo(e, make([]int32, R), "LoRA o shrink counters"); err != nil {
		return err
	}
	H := int64(e.maxHead)
	if err := e.allocWords([]words{{&e.argWS.v, H * argmaxMaxSlices, "argmax slices"}, {&e.argWS.i, H * argmaxMaxSlices, "argmax slices"}}); err != nil {
		return err
	}
	if e.argWS.count, err = uploadTo(e, make([]int32, H), "argmax counters"); err != nil {
		return err
	}
	if e.invFreq, err = uploadTo(e, qwen.RopeInvFreq(c), "RoPE frequencies"); err != nil {
		return err
	}
	if e.meta, err = e.alloc(R*int64(unsafe.Sizeof(rowMeta{})), "row metadata"); err != nil {
		return err
	}
	// Embedding (shared with a tied lm_head) and final norm.
	m := e.m
	e.embedB16 = e.embed16 != nil // bf16 when exact (every Qwen2.5 checkpoint), else fp32
	if e.embedB16 {
		e.embed, err = uploadTo(e, e.embed16, "model.embed_tokens")
	} else {
		e.embed, err = uploadTo(e, m.Embed.Weights(), "model.embed_tokens")
	}
	e.embed16 = nil
	if err != nil {
		return err
	}
	if e.norm, err = uploadTo(e, m.Norm, "model.norm"); err != nil {
		return err
	}
	if err := e.uploadHead(); err != nil {
		return err
	}
	e.layers = make([]layerOps, c.Layers)
	pipe := e.startLayouts(2)
	defer pipe.close()
	for i := range m.Layers {
		l, lo := &m.Layers[i], &e.layers[i]
		e.host = pipe.take(i)
		if lo.inNorm, err = uploadTo(e, l.InputLayernorm, "input_layernorm"); err != nil {
			return err
		}
		if lo.postNorm, err = uploadTo(e, l.PostAttentionLayernorm, "post_attention_layernorm"); err != nil {
			return err
		}
		base := gemvOp{Rows: uint64(e.meta.Ptr), Rope: uint64(e.rope.Ptr), Layer: int32(i), HeadDim: int32(c.HeadDim), KVDim: int32(kvDim),
			Rmax: int32(e.rmax)}
		with := func(mode int, x, y, t Buf, ldy int) gemvOp {
			op := base
			op.Mode, op.X, op.Y, op.T, op.Ldy = int32(mode), uint64(x.Ptr), uint64(y.Ptr), uint64(t.Ptr), int32(ldy)
			return op
		}
		qkv, o, gu, down := fused(l)
		if lo.qkv, err = e.uploadOp(with(modeQKV, e.xn, e.q, e.tQKV, qDim), qkv, "q/k/v"); err != nil {
			return err
		}
		if lo.o, err = e.uploadOp(with(modeResid, e.att, e.x, e.tO, c.Hidden), o, "o_proj"); err != nil {
			return err
		}
		if lo.gateup, err = e.uploadOp(with(modeGateUp, e.xn, e.act, e.tGU, c.Intermediate), gu, "gate/up"); err != nil {
			return err
		}
		if lo.down, err = e.uploadOp(with(modeResid, e.act, e.x, e.tD, c.Hidden), down, "down_proj"); err != nil {
			return err
		}
		pipe.recycle(e.host) // copied: cuMemcpyHtoD from pageable memory returns once the bytes are staged
		e.host = nil
		if len(m.Adapters) == 0 {
			continue
		}
		if lo.shQKV, err = e.uploadShrink(qkv, e.xn, e.tQKV, c.Hidden); err != nil {
			return err
		}
		if lo.shO, err = e.uploadShrink(o, e.att, e.tO, qDim); err != nil {
			return err
		}
		if lo.shGU, err = e.uploadShrink(gu, e.xn, e.tGU, c.Hidden); err != nil {
			return err
		}
		if lo.shD, err = e.uploadShrink(down, e.act, e.tD, c.Intermediate); err != nil {
			return err
		}
	}
	return nil
}

// uploadHead puts lm_head on the device: the embedding itself when tied
// (bf16, or fp32 for an f16/f32 checkpoint whose embedding bf16 would round).
func (e *Engine) uploadHead() error {
	c := e.cfg
	op := gemvOp{Nmat: 1, Mode: modeStore, X: uint64(e.xnHead.Ptr), Y: uint64(e.logits.Ptr), Rows: uint64(e.meta.Ptr), Ldy: int32(c.Vocab)}
	e.head = matOp{k: c.Hidden, pairs: (c.Vocab + 1) / 2}
	if c.TieEmbeddings {
		op.Mat[0] = mat{N: int32(c.Vocab), K: int32(c.Hidden), Fmt: fmtBF16, BF16: uint64(e.embed.Ptr), LoraSlot: -1, Round: 2}
		e.head.weights, e.head.kind = 2*int64(c.Vocab)*int64(c.Hidden), e.denseKind(c.Vocab, c.Hidden)
		if !e.embedB16 {
			op.Mat[0].Fmt, op.Mat[0].BF16, op.Mat[0].F32 = fmtF32, 0, uint64(e.embed.Ptr)
			e.head.weights *= 2
			e.head.kind = kindGemvDense
		}
	} else {
		var err error
		if op.Mat[0], e.head.kind, err = e.uploadMat(e.m.LMHead, -1); err != nil {
			return err
		}
		e.head.weights = matBytes(e.m.LMHead)
	}
	e.head.desc = &op
	return nil
}
