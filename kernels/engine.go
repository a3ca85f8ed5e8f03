//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// Engine runs a qwen.Model on the GPU; it implements qwen.Engine,
// qwen.GreedyEngine and qwen.LogProbEngine. Weights, LoRA and the per-layer launch descriptors are
// uploaded once; activations are sized for MaxRows rows; each sequence's KV
// cache is allocated by NewSeq. A decode step (one token per sequence) is one
// CUDA graph launch, captured once per batch size.
type Engine struct {
	Dev     *Device
	m       *qwen.Model
	cfg     *qwen.Config
	MaxRows int // rows one forward pass may hold (prefill tokens of all sequences)
	maxHead int // rows of logits one pass may return

	bufs      []*Buf // everything to free on Close
	embed     Buf
	embedB16  bool
	norm      Buf
	layers    []layerDesc
	head      Buf // gemvOp of lm_head
	headFmt   int
	headBytes int64
	prof      *profile // non-nil while profiling: launches are recorded, not run
	mma       bool     // NF4 matrices that fit go to the tensor-core kernels (see NewEngine)
	rmax      int      // largest LoRA rank (0 without adapters)

	x, xn, q, att, act, xnHead Buf
	rope, invFreq              Buf // [MaxRows, headDim/2, 2] cos/sin per row; [headDim/2] inverse frequencies
	tQKV, tO, tGU, tD          Buf
	meta, headIdx, ids, logits Buf
	lp                         Buf // [MaxRows] target log-probabilities
	part                       Buf

	host     map[*qwen.Linear][]byte // tiled NF4 codes, made on all cores before the upload
	embed16  []uint16                // the embedding as bf16, likewise
	hostMeta []rowMeta
	hostIdx  []int32
	hostIDs  []int32
	out      []float32
}

type layerDesc struct {
	inNorm, postNorm          Buf
	qkv, o, gateup, down      Buf // gemvOp descriptors on the device
	shQKV, shO, shGU, shD     Buf // shrinkOp descriptors
	qkvFmt, oFmt, guFmt, dFmt int
	// bytes of weights each launch reads (for the profile)
	qkvBytes, oBytes, guBytes, dBytes, shQKVBytes, shOBytes, shGUBytes, shDBytes int64
}

// devSeq is a sequence's device state.
type devSeq struct{ k, v Buf }

// NewEngine uploads m to the device. maxRows bounds the rows of one forward
// pass (prefill tokens summed over sequences). batch is how many sequences
// will usually decode together: from 2 up, NF4 matrices are stored for the
// tensor-core kernels (2.1× the decode rate at batch 20, 3.8× the prefill
// rate on an H200); for 1, for the CUDA-core GEMV, which is 1.2× faster
// there. QBENCH_NO_MMA=1 forces the GEMV.
func NewEngine(d *Device, m *qwen.Model, maxRows, batch int) (*Engine, error) {
	if len(m.Adapters) > maxAdapters {
		return nil, fmt.Errorf("cuda: %d adapters, the GPU engine carries at most %d", len(m.Adapters), maxAdapters)
	}
	e := &Engine{Dev: d, m: m, cfg: m.Config, MaxRows: maxRows, maxHead: min(maxRows, 1024), rmax: m.MaxRank(),
		mma: batch >= 2 && m.Config.HeadDim%16 == 0 && os.Getenv("QBENCH_NO_MMA") != "1"}
	e.prepareHost()
	err := d.Do(e.upload)
	e.host = nil
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// prepareHost does the host-side reshaping of the weights (NF4 code tiles,
// the bf16 embedding) on every core, so the upload only copies.
func (e *Engine) prepareHost() {
	e.host = map[*qwen.Linear][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i := range e.m.Layers {
		for _, l := range e.m.Layers[i].Linears() {
			if q := l.Quant; q != nil && (e.mmaOK(l) || tiles(l)) {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					t := e.layout(l)
					mu.Lock()
					e.host[l] = t
					mu.Unlock()
				}()
			}
		}
	}
	w := e.m.EmbedTokens
	e.embed16 = make([]uint16, len(w))
	var inexact atomic.Bool
	chunk := (len(w) + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	for lo := 0; lo < len(w); lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				e.embed16[i] = tensor.F32ToBF16(w[i])
				if tensor.BF16ToF32(e.embed16[i]) != w[i] {
					inexact.Store(true)
				}
			}
		}(lo, min(lo+chunk, len(w)))
	}
	wg.Wait()
	if inexact.Load() { // an f16/f32 checkpoint: keep the embedding (and tied head) in fp32
		e.embed16 = nil
	}
}

// denseKind is the kernel kind of a bf16 matrix: the tensor cores when this
// engine uses them and the shape fits (16-row tiles, 64-column steps).
func (e *Engine) denseKind(out, in int) int {
	if e.mma && in%64 == 0 && out%16 == 0 {
		return kindMMABF16
	}
	return fmtBF16
}

// mmaOK reports whether an NF4 matrix goes to the tensor-core kernels: whole
// 64-blocks per row, 16-row tiles, bf16 compute (the MMA's A operand).
func (e *Engine) mmaOK(l *qwen.Linear) bool {
	q := l.Quant
	return e.mma && q != nil && q.BlockSize == 64 && l.In%64 == 0 && l.Out%16 == 0 && q.Compute == tensor.BF16
}

// layout returns an NF4 matrix's codes in the order its kernel reads them.
func (e *Engine) layout(l *qwen.Linear) []byte {
	switch {
	case e.mmaOK(l):
		return mmaNF4(l.Quant.Packed, l.Out, l.In)
	case tiles(l):
		return tileNF4(l.Quant.Packed, l.Out, l.In)
	}
	return l.Quant.Packed
}

// mmaNF4 reorders packed NF4 codes within each 64-column block of each row:
// thread t of a quad gets, in its 8 bytes, for s = 0…3 the byte of columns
// 16s + 2t, +1 and the byte of columns 16s + 2t + 8, +9 — its part of the
// bf16 A fragment of mma.m16n8k16 (see mma_nf4 in nf4_matmul.cu).
func mmaNF4(packed []byte, out, in int) []byte {
	t := make([]byte, len(packed))
	for base := 0; base < out*in/2; base += 32 { // a block is 32 bytes of codes; in % 64 == 0
		for q := 0; q < 4; q++ {
			for s := 0; s < 4; s++ {
				t[base+8*q+2*s] = packed[base+8*s+q]
				t[base+8*q+2*s+1] = packed[base+8*s+q+4]
			}
		}
	}
	return t
}

// tiles reports whether an NF4 matrix's codes are stored tiled: at least one
// whole 1024-column tile, rows of whole 64-blocks (tile_fma's scale shuffles).
func tiles(l *qwen.Linear) bool {
	return l.In >= 1024 && l.In%64 == 0 && l.Quant.BlockSize == 64
}

// Model implements qwen.Engine.
func (e *Engine) Model() *qwen.Model { return e.m }

func (e *Engine) alloc(bytes int64, what string) (Buf, error) {
	b, err := e.Dev.Alloc(bytes, what)
	if err == nil {
		e.bufs = append(e.bufs, &b)
	}
	return b, err
}

func uploadTo[T any](e *Engine, v []T, what string) (Buf, error) {
	b, err := Upload(e.Dev, v, what)
	if err == nil {
		e.bufs = append(e.bufs, &b)
	}
	return b, err
}

func (e *Engine) uploadDesc(v any, size int, what string) (Buf, error) {
	var b []byte
	switch d := v.(type) {
	case *gemvOp:
		b = unsafe.Slice((*byte)(unsafe.Pointer(d)), size)
	case *shrinkOp:
		b = unsafe.Slice((*byte)(unsafe.Pointer(d)), size)
	}
	return uploadTo(e, b, what)
}

// Close frees every device buffer of the engine (sequences are freed by Release).
func (e *Engine) Close() {
	e.Dev.Do(func() error {
		for _, b := range e.bufs {
			e.Dev.Free(b)
		}
		return nil
	})
	e.bufs = nil
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
// shrink buffer (−1 = none). It returns the descriptor, the kind of gemv
// kernel it needs and the bytes a pass over it reads.
func (e *Engine) uploadMat(l *qwen.Linear, slot int) (mat, int, int64, error) {
	mt, kind, err := e.uploadMatFields(l, slot)
	return mt, kind, matBytes(l), err
}

func (e *Engine) uploadMatFields(l *qwen.Linear, slot int) (mat, int, error) {
	mt := mat{N: int32(l.Out), K: int32(l.In), LoraSlot: int32(slot), Round: 2}
	var err error
	var b Buf
	switch {
	case l.Quant != nil:
		q := l.Quant
		if l.In%32 != 0 || q.BlockSize%32 != 0 || bits.OnesCount(uint(q.BlockSize)) != 1 {
			return mt, 0, fmt.Errorf("cuda: %s: NF4 on the GPU needs in-features %% 32 == 0 and a power-of-two block size ≥ 32 (have %d, %d)", l.Name, l.In, q.BlockSize)
		}
		mt.Fmt = fmtNF4
		mt.BlockShift = int32(bits.TrailingZeros(uint(q.BlockSize)))
		switch q.Compute {
		case tensor.BF16:
			mt.Round = 0
		case tensor.F16:
			mt.Round = 1
		}
		codes := e.host[l]
		if codes == nil {
			codes = e.layout(l)
		}
		switch {
		case e.mmaOK(l):
			mt.Fmt = fmtNF4MMA
		case tiles(l):
			mt.Fmt = fmtNF4Tiled
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
		mt.Fmt = fmtBF16
		if b, err = uploadTo(e, bf16Bits(l.W), l.Name); err != nil {
			return mt, 0, err
		}
		mt.BF16 = uint64(b.Ptr)
	default:
		if l.In%8 != 0 {
			return mt, 0, fmt.Errorf("cuda: %s: in-features %d must be a multiple of 8", l.Name, l.In)
		}
		mt.Fmt = fmtF32
		if b, err = uploadTo(e, l.W, l.Name); err != nil {
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
	kind := int(mt.Fmt)
	switch {
	case kind == fmtBF16:
		return mt, e.denseKind(l.Out, l.In), nil
	case kind == fmtF32:
		kind = fmtBF16 // gemv_dense handles both dense formats
	case kind == fmtNF4Tiled:
		kind = fmtNF4 // gemv_nf4 handles both code orders
	case kind == fmtNF4MMA:
		return mt, kindMMA, nil
	}
	if kind == fmtNF4 && mt.Round != 0 {
		kind = fmtNF4Round
	}
	return mt, kind, nil
}

// tileNF4 reorders packed NF4 codes of an [out, in] matrix within each whole
// 1024-column tile of each row: lane l of a warp gets, in its 16 bytes, the
// codes of columns 4l + 128j … 4l + 128j + 3 for j = 0…7 (2 bytes a group),
// so that the x values a warp needs for one group are one contiguous 512-byte
// run. Columns past the last whole tile keep their order.
func tileNF4(packed []byte, out, in int) []byte {
	t := append([]byte(nil), packed...)
	for r := 0; r < out; r++ {
		for c := 0; c+1024 <= in; c += 1024 {
			base := (r*in + c) / 2 // a tile is 512 bytes of codes
			for l := 0; l < 32; l++ {
				for j := 0; j < 8; j++ {
					t[base+16*l+2*j] = packed[base+2*l+64*j]
					t[base+16*l+2*j+1] = packed[base+2*l+64*j+1]
				}
			}
		}
	}
	return t
}

func shrinkBytes(ls []*qwen.Linear) int64 {
	var b int64
	for _, l := range ls {
		for _, mod := range l.LoRA {
			if mod != nil {
				b += 4 * int64(len(mod.A))
			}
		}
	}
	return b
}

// shrinkFor builds the shrink descriptor of the modules sharing input x.
func (e *Engine) shrinkFor(ls []*qwen.Linear, x, t Buf, k int) (Buf, error) {
	op := shrinkOp{X: uint64(x.Ptr), T: uint64(t.Ptr), Rows: uint64(e.meta.Ptr), NSlots: int32(len(ls)), K: int32(k),
		TStride: int32(len(ls) * e.rmax), Rmax: int32(e.rmax)}
	for s, l := range ls {
		for a, mod := range l.LoRA {
			if mod == nil {
				continue
			}
			b, err := uploadTo(e, mod.A, l.Name+" lora_A")
			if err != nil {
				return Buf{}, err
			}
			op.A[s][a], op.Rank[s][a] = uint64(b.Ptr), int32(mod.Rank)
		}
	}
	return e.uploadDesc(&op, int(unsafe.Sizeof(op)), "shrink descriptor")
}

func (e *Engine) upload() error {
	c := e.cfg
	var err error
	R := int64(e.MaxRows)
	qDim, kvDim := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	// Activations.
	for _, a := range []struct {
		b     *Buf
		elems int64
		what  string
	}{
		{&e.x, R * int64(c.Hidden), "residual stream"}, {&e.xn, R * int64(c.Hidden), "normed activations"},
		{&e.q, R * int64(qDim), "queries"}, {&e.att, R * int64(qDim), "attention output"},
		{&e.act, R * int64(c.Intermediate), "MLP activations"}, {&e.xnHead, int64(e.maxHead) * int64(c.Hidden), "head input"},
		{&e.logits, int64(e.maxHead) * int64(c.Vocab), "logits"},
		{&e.tQKV, R * int64(3*max(e.rmax, 1)), "LoRA q/k/v shrink"}, {&e.tO, R * int64(max(e.rmax, 1)), "LoRA o shrink"},
		{&e.tGU, R * int64(2*max(e.rmax, 1)), "LoRA gate/up shrink"}, {&e.tD, R * int64(max(e.rmax, 1)), "LoRA down shrink"},
	} {
		if *a.b, err = e.alloc(4*a.elems, a.what); err != nil {
			return err
		}
	}
	if e.rope, err = e.alloc(R*int64(c.HeadDim)*4, "RoPE table"); err != nil {
		return err
	}
	inv := make([]float32, c.HeadDim/2)
	for j := range inv { // as transformers (and the CPU reference): 1/θ^(2j/d), each step in fp32
		inv[j] = 1 / float32(math.Pow(c.RopeTheta, float64(float32(2*j)/float32(c.HeadDim))))
	}
	if e.invFreq, err = uploadTo(e, inv, "RoPE frequencies"); err != nil {
		return err
	}
	if e.meta, err = e.alloc(R*int64(unsafe.Sizeof(rowMeta{})), "row metadata"); err != nil {
		return err
	}
	if e.headIdx, err = e.alloc(4*R, "head rows"); err != nil {
		return err
	}
	if e.ids, err = e.alloc(4*R, "token ids"); err != nil {
		return err
	}
	if e.lp, err = e.alloc(4*R, "log-probabilities"); err != nil {
		return err
	}
	// Embedding (shared with a tied lm_head) and final norm.
	m := e.m
	e.embedB16 = e.embed16 != nil // bf16 when exact (every Qwen2.5 checkpoint), else fp32
	if e.embedB16 {
		e.embed, err = uploadTo(e, e.embed16, "model.embed_tokens")
	} else {
		e.embed, err = uploadTo(e, m.EmbedTokens, "model.embed_tokens")
	}
	e.embed16 = nil
	if err != nil {
		return err
	}
	if e.norm, err = uploadTo(e, m.Norm, "model.norm"); err != nil {
		return err
	}
	var head mat
	if c.TieEmbeddings {
		head = mat{N: int32(c.Vocab), K: int32(c.Hidden), Fmt: fmtBF16, BF16: uint64(e.embed.Ptr), LoraSlot: -1, Round: 2}
		e.headBytes = 2 * int64(c.Vocab) * int64(c.Hidden)
		e.headFmt = e.denseKind(c.Vocab, c.Hidden)
		if !e.embedB16 {
			head.Fmt, head.BF16, head.F32 = fmtF32, 0, uint64(e.embed.Ptr)
			e.headBytes *= 2
			e.headFmt = fmtBF16 // gemv_dense serves fp32 too
		}
	} else if head, e.headFmt, e.headBytes, err = e.uploadMat(m.LMHead, -1); err != nil {
		return err
	}
	hop := gemvOp{Nmat: 1, Mode: modeStore, X: uint64(e.xnHead.Ptr), Y: uint64(e.logits.Ptr), Rows: uint64(e.meta.Ptr), Ldy: int32(c.Vocab)}
	hop.Mat[0] = head
	if e.head, err = e.uploadDesc(&hop, int(unsafe.Sizeof(hop)), "lm_head descriptor"); err != nil {
		return err
	}
	lora := len(m.Adapters) > 0
	slot := func(s int) int {
		if lora {
			return s
		}
		return -1
	}
	e.layers = make([]layerDesc, c.Layers)
	for i := range m.Layers {
		l, ld := &m.Layers[i], &e.layers[i]
		if ld.inNorm, err = uploadTo(e, l.InputLayernorm, "input_layernorm"); err != nil {
			return err
		}
		if ld.postNorm, err = uploadTo(e, l.PostAttentionLayernorm, "post_attention_layernorm"); err != nil {
			return err
		}
		base := gemvOp{Rows: uint64(e.meta.Ptr), Rope: uint64(e.rope.Ptr), Layer: int32(i), HeadDim: int32(c.HeadDim), KVDim: int32(kvDim),
			RopeTheta: c.RopeTheta, Rmax: int32(e.rmax)}
		build := func(ls []*qwen.Linear, mode int, x, y, t Buf, ldy int, what string) (Buf, int, int64, error) {
			op := base
			op.Nmat, op.Mode, op.X, op.Y, op.T, op.Ldy = int32(len(ls)), int32(mode), uint64(x.Ptr), uint64(y.Ptr), uint64(t.Ptr), int32(ldy)
			op.TStride = int32(len(ls) * e.rmax)
			kind := -1
			var bytes int64
			for s, lin := range ls {
				mt, k, n, err := e.uploadMat(lin, slot(s))
				if err != nil {
					return Buf{}, 0, 0, err
				}
				if kind >= 0 && k != kind {
					return Buf{}, 0, 0, fmt.Errorf("cuda: %s mixes matrix formats (NF4, 16-bit, tensor-core layouts) that one fused launch cannot serve", what)
				}
				kind, op.Mat[s], bytes = k, mt, bytes+n
			}
			b, err := e.uploadDesc(&op, int(unsafe.Sizeof(op)), what+" descriptor")
			return b, kind, bytes, err
		}
		att, mlp := &l.SelfAttn, &l.MLP
		if ld.qkv, ld.qkvFmt, ld.qkvBytes, err = build([]*qwen.Linear{att.QProj, att.KProj, att.VProj}, modeQKV, e.xn, e.q, e.tQKV, qDim, "q/k/v"); err != nil {
			return err
		}
		if ld.o, ld.oFmt, ld.oBytes, err = build([]*qwen.Linear{att.OProj}, modeResid, e.att, e.x, e.tO, c.Hidden, "o_proj"); err != nil {
			return err
		}
		if ld.gateup, ld.guFmt, ld.guBytes, err = build([]*qwen.Linear{mlp.GateProj, mlp.UpProj}, modeGateUp, e.xn, e.act, e.tGU, c.Intermediate, "gate/up"); err != nil {
			return err
		}
		if ld.down, ld.dFmt, ld.dBytes, err = build([]*qwen.Linear{mlp.DownProj}, modeResid, e.act, e.x, e.tD, c.Hidden, "down_proj"); err != nil {
			return err
		}
		if lora {
			if ld.shQKV, err = e.shrinkFor([]*qwen.Linear{att.QProj, att.KProj, att.VProj}, e.xn, e.tQKV, c.Hidden); err != nil {
				return err
			}
			ld.shQKVBytes = shrinkBytes([]*qwen.Linear{att.QProj, att.KProj, att.VProj})
			ld.shOBytes = shrinkBytes([]*qwen.Linear{att.OProj})
			ld.shGUBytes = shrinkBytes([]*qwen.Linear{mlp.GateProj, mlp.UpProj})
			ld.shDBytes = shrinkBytes([]*qwen.Linear{mlp.DownProj})
			if ld.shO, err = e.shrinkFor([]*qwen.Linear{att.OProj}, e.att, e.tO, qDim); err != nil {
				return err
			}
			if ld.shGU, err = e.shrinkFor([]*qwen.Linear{mlp.GateProj, mlp.UpProj}, e.xn, e.tGU, c.Hidden); err != nil {
				return err
			}
			if ld.shD, err = e.shrinkFor([]*qwen.Linear{mlp.DownProj}, e.act, e.tD, c.Intermediate); err != nil {
				return err
			}
		}
	}
	return nil
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

// prepare fills the host-side row metadata and head-row list; it returns the
// rows, the head rows and the attention splits.
func (e *Engine) prepare(seqs []*qwen.Seq, tokens [][]int, all bool) (rows, nHead, splits int, err error) {
	c := e.cfg
	if len(seqs) != len(tokens) {
		return 0, 0, 0, fmt.Errorf("forward: %d sequences, %d token lists", len(seqs), len(tokens))
	}
	e.hostMeta, e.hostIdx = e.hostMeta[:0], e.hostIdx[:0]
	maxLen := 0
	for i, s := range seqs {
		ds, ok := s.Handle.(*devSeq)
		if !ok || ds.k.Ptr == 0 {
			return 0, 0, 0, fmt.Errorf("forward: sequence %d was not made by this engine", i)
		}
		if len(tokens[i]) == 0 || s.Len+len(tokens[i]) > s.Cap {
			return 0, 0, 0, fmt.Errorf("forward: sequence %d: %d new tokens at length %d, capacity %d", i, len(tokens[i]), s.Len, s.Cap)
		}
		if s.Adapter >= len(e.m.Adapters) {
			return 0, 0, 0, fmt.Errorf("forward: adapter index %d, the model has %d adapters", s.Adapter, len(e.m.Adapters))
		}
		for j, t := range tokens[i] {
			if t < 0 || t >= c.Vocab {
				return 0, 0, 0, fmt.Errorf("forward: token id %d outside the vocabulary [0,%d)", t, c.Vocab)
			}
			e.hostMeta = append(e.hostMeta, rowMeta{Tok: int32(t), Pos: int32(s.Len + j), Adapter: int32(s.Adapter), Cap: int32(s.Cap),
				K: uint64(ds.k.Ptr), V: uint64(ds.v.Ptr)})
			if all || j == len(tokens[i])-1 {
				e.hostIdx = append(e.hostIdx, int32(len(e.hostMeta)-1))
			}
		}
		maxLen = max(maxLen, s.Len+len(tokens[i]))
	}
	rows, nHead = len(e.hostMeta), len(e.hostIdx)
	if rows > e.MaxRows {
		return 0, 0, 0, fmt.Errorf("forward: %d rows in one pass, the engine holds %d", rows, e.MaxRows)
	}
	if nHead > e.maxHead {
		return 0, 0, 0, fmt.Errorf("forward: logits for %d rows in one pass, the engine returns at most %d", nHead, e.maxHead)
	}
	return rows, nHead, (maxLen + attnChunk - 1) / attnChunk, nil
}

const attnChunk = 32 // CHUNK in attention.cu

// stage sizes the attention scratch and copies the host-side row metadata
// and head-row list of the pass prepare made to the device (on its thread).
func (e *Engine) stage(rows, splits int) error {
	if err := e.ensurePart(rows, splits); err != nil {
		return err
	}
	if err := Write(e.meta, e.hostMeta); err != nil {
		return err
	}
	return Write(e.headIdx, e.hostIdx)
}

// ensurePart sizes the split-attention scratch (outside any capture).
func (e *Engine) ensurePart(rows, splits int) error {
	c := e.cfg
	need := int64(rows) * int64(c.Heads) * int64(splits) * int64(c.HeadDim+2) * 4
	if need <= e.part.Bytes {
		return nil
	}
	if e.part.Ptr != 0 {
		e.Dev.Free(&e.part)
	}
	for k, g := range e.Dev.graphs { // they hold the old address
		g.destroy()
		delete(e.Dev.graphs, k)
	}
	var err error
	e.part, err = e.Dev.Alloc(need, "attention partials")
	return err
}

// record launches one forward pass of rows rows whose metadata is on the
// device, ending with logits of nHead rows (and their argmax when argmax).
// Each launch carries a label and the bytes it must move, for the profile.
func (e *Engine) record(rows, nHead, splits int, argmax bool) error {
	c := e.cfg
	eps := c.RMSEps
	qDim, kvDim := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	R, H, I := int64(rows), int64(c.Hidden), int64(c.Intermediate)
	embedFlag := 0
	if e.embedB16 {
		embedFlag = 1
	}
	var err error
	k := func(label string, bytes int64, name string, grid [3]int, block int, args ...any) {
		if err == nil {
			err = e.kernel(label, bytes, name, grid, block, args...)
		}
	}
	gemv := func(label string, bytes int64, kind, m, pairs, K int, op Buf) {
		name, grid, w := e.Dev.gemvLaunch(kind, m, pairs, K)
		k(label, bytes, name, grid, 256, op, m, w)
	}
	k("embed+rope table", R*H*6+R*int64(c.HeadDim)*4, "embed", [3]int{rows}, 256, e.x, e.embed, embedFlag, e.meta, c.Hidden, e.rope, e.invFreq, c.HeadDim/2)
	lora := len(e.m.Adapters) > 0
	shrink := func(label string, op Buf, slots int, bytes, kdim int64) {
		if lora {
			k(label, bytes+R*kdim*4, "lora_shrink", [3]int{e.rmax, slots, rows}, 256, op, rows)
		}
	}
	normBytes := 8*R*H + 4*H
	// RMSNorm, with the LoRA shrink of the modules reading its output fused in
	// as extra blocks when the model has adapters.
	norm := func(label string, w, sh Buf, slots int, bytes int64) {
		if !lora {
			k("rmsnorm", normBytes, "rmsnorm", [3]int{rows}, 256, e.xn, e.x, w, 0, c.Hidden, eps)
			return
		}
		k(label, normBytes+bytes+int64(slots*e.rmax)*R*H*4, "rmsnorm_lora", [3]int{rows, 1 + slots*e.rmax}, 256, e.xn, e.x, w, c.Hidden, eps, sh)
	}
	for i := range e.layers {
		ld := &e.layers[i]
		norm("rmsnorm(+lora_shrink q/k/v)", ld.inNorm, ld.shQKV, 3, ld.shQKVBytes)
		gemv("gemv q/k/v+rope", ld.qkvBytes+R*H*4+R*int64(qDim+2*kvDim)*4, ld.qkvFmt, rows, (qDim+2*kvDim)/2, c.Hidden, ld.qkv)
		k("attention", e.attnBytes(), "attn_split", [3]int{c.Heads, rows, splits}, 128, e.part, e.q, e.meta, i, c.Heads, c.KVHeads, c.HeadDim, splits)
		k("attention combine", R*int64(c.Heads*splits*(c.HeadDim+2)+qDim)*4, "attn_combine", [3]int{c.Heads, rows}, 128, e.att, e.part, c.Heads, c.HeadDim, splits)
		shrink("lora_shrink o", ld.shO, 1, ld.shOBytes, int64(qDim))
		gemv("gemv o_proj+residual", ld.oBytes+R*int64(qDim)*4+2*R*H*4, ld.oFmt, rows, (c.Hidden+1)/2, qDim, ld.o)
		norm("rmsnorm(+lora_shrink gate/up)", ld.postNorm, ld.shGU, 2, ld.shGUBytes)
		gemv("gemv gate/up+silu", ld.guBytes+R*H*4+R*I*4, ld.guFmt, rows, c.Intermediate, c.Hidden, ld.gateup)
		shrink("lora_shrink down", ld.shD, 1, ld.shDBytes, I)
		gemv("gemv down+residual", ld.dBytes+R*I*4+2*R*H*4, ld.dFmt, rows, (c.Hidden+1)/2, c.Intermediate, ld.down)
	}
	NH := int64(nHead)
	k("rmsnorm", 8*NH*H+4*H, "rmsnorm", [3]int{nHead}, 256, e.xnHead, e.x, e.norm, e.headIdx, c.Hidden, eps)
	gemv("gemv lm_head", e.headBytes+NH*H*4+NH*int64(c.Vocab)*4, e.headFmt, nHead, (c.Vocab+1)/2, c.Hidden, e.head)
	if argmax {
		k("argmax", NH*int64(c.Vocab)*4, "argmax", [3]int{nHead}, 1024, e.ids, e.logits, c.Vocab)
	}
	return err
}

// attnBytes is what one attn_split launch must read: each row's K and V up
// to its position, once per KV head (from the host copy of the metadata).
func (e *Engine) attnBytes() int64 {
	var b int64
	kvDim := int64(e.cfg.KVHeads * e.cfg.HeadDim)
	for _, r := range e.hostMeta {
		b += 2 * int64(r.Pos+1) * kvDim * 4
	}
	return b
}

// kernel launches one kernel, or records it when profiling.
func (e *Engine) kernel(label string, bytes int64, name string, grid [3]int, block int, args ...any) error {
	if e.prof != nil {
		e.prof.launches = append(e.prof.launches, recorded{label, name, bytes, grid, block, args})
		return nil
	}
	return e.Dev.launch(name, grid, block, 0, args...)
}

// run uploads the metadata and runs one pass: a replayed graph for decode
// steps, direct launches otherwise.
func (e *Engine) run(seqs []*qwen.Seq, tokens [][]int, all, argmax bool) (nHead int, err error) {
	rows, nHead, splits, err := e.prepare(seqs, tokens, all)
	if err != nil {
		return 0, err
	}
	decode := !all && rows == len(seqs)
	if decode { // a graph is keyed by rows and splits: size splits by capacity so it survives the whole generation
		maxCap := 0
		for _, s := range seqs {
			maxCap = max(maxCap, s.Cap)
		}
		splits = (maxCap + attnChunk - 1) / attnChunk
	}
	err = e.Dev.Do(func() error {
		if err := e.stage(rows, splits); err != nil {
			return err
		}
		if !decode {
			if err := e.record(rows, nHead, splits, argmax); err != nil {
				return err
			}
			return e.Dev.Sync()
		}
		key := graphKey{rows, splits}
		g := e.Dev.graphs[key]
		if g == nil {
			var err error
			if g, err = e.Dev.Capture(func() error { return e.record(rows, nHead, splits, true) }); err != nil {
				return err
			}
			e.Dev.graphs[key] = g
		}
		if err := e.Dev.Launch(g); err != nil {
			return err
		}
		return e.Dev.Sync()
	})
	if err != nil {
		return 0, err
	}
	for i, s := range seqs {
		s.Len += len(tokens[i])
	}
	return nHead, nil
}

// Forward implements qwen.Engine.
func (e *Engine) Forward(seqs []*qwen.Seq, tokens [][]int, all bool) ([]float32, error) {
	n, err := e.run(seqs, tokens, all, false)
	if err != nil {
		return nil, err
	}
	V := e.cfg.Vocab
	if cap(e.out) < n*V {
		e.out = make([]float32, n*V)
	}
	out := e.out[:n*V]
	err = e.Dev.Do(func() error { return Read(out, e.logits) })
	return out, err
}

// TargetLogProbs implements qwen.LogProbEngine: it appends tokens to s and
// returns, for each new position i, log p(targets[i] | the sequence up to
// and including tokens[i]), computed on the device so only the numbers come
// back.
func (e *Engine) TargetLogProbs(s *qwen.Seq, tokens, targets []int) ([]float64, error) {
	if len(targets) != len(tokens) {
		return nil, fmt.Errorf("logprobs: %d tokens, %d targets", len(tokens), len(targets))
	}
	for _, t := range targets {
		if t < 0 || t >= e.cfg.Vocab {
			return nil, fmt.Errorf("logprobs: target id %d outside the vocabulary", t)
		}
	}
	n, err := e.run([]*qwen.Seq{s}, [][]int{tokens}, true, false)
	if err != nil {
		return nil, err
	}
	tg := make([]int32, n)
	for i, t := range targets {
		tg[i] = int32(t)
	}
	lp := make([]float32, n)
	err = e.Dev.Do(func() error {
		if err := Write(e.ids, tg); err != nil {
			return err
		}
		if err := e.Dev.launch("target_logprob", [3]int{n}, 1024, 0, e.lp, e.logits, e.ids, e.cfg.Vocab); err != nil {
			return err
		}
		return Read(lp, e.lp)
	})
	out := make([]float64, n)
	for i, v := range lp {
		out[i] = float64(v)
	}
	return out, err
}

// ForwardArgmax implements qwen.GreedyEngine: only the ids come back.
func (e *Engine) ForwardArgmax(seqs []*qwen.Seq, tokens [][]int) ([]int, error) {
	n, err := e.run(seqs, tokens, false, true)
	if err != nil {
		return nil, err
	}
	if cap(e.hostIDs) < n {
		e.hostIDs = make([]int32, n)
	}
	ids := e.hostIDs[:n]
	if err := e.Dev.Do(func() error { return Read(ids, e.ids) }); err != nil {
		return nil, err
	}
	out := make([]int, n)
	for i, v := range ids {
		out[i] = int(v)
	}
	return out, nil
}
