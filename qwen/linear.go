package qwen

import (
	"math"
	"sync"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/tensor"
)

// Linear is one projection: y = W·x + b, plus scale·B(A·x) for rows whose
// adapter touches this module. A bf16 weight is held as its 16-bit values in
// W16 (widened exactly as the dot product runs), an f16 or fp32 one widened
// to fp32 in W. An NF4 weight stays packed in Quant (0.5 byte a weight):
// Forward decodes it block by block as it computes, to exactly bitsandbytes'
// dequantised values, so a 3B model runs on the CPU in ~2–3 GB; Weights
// materialises the fp32 W for the code that wants it whole (the oracle tests,
// the GPU tests' references).
type Linear struct {
	Name    string
	Out, In int
	W       []float32      // [Out, In]; for an NF4 or bf16 module nil unless Weights was called
	W16     []uint16       // [Out, In] bf16 bits of a bf16-stored weight, or nil
	Bias    []float32      // [Out], or nil
	Quant   *tensor.NF4    // packed NF4 weight, or nil for a 16-bit module
	LoRA    []*lora.Module // indexed by adapter; nil where that adapter leaves this module alone
	DType   tensor.DType   // dtype the weight was stored in: the GPU engine keeps a BF16 module in bf16, others in fp32
	once    sync.Once
}

// Weights returns W, made on first use from the packed NF4 or bf16 weight.
func (l *Linear) Weights() []float32 {
	l.once.Do(func() {
		switch {
		case l.W != nil:
		case l.Quant != nil:
			l.W = l.Quant.Dequantize()
		case l.W16 != nil:
			l.W = widenBF16(l.W16)
		}
	})
	return l.W
}

// Workspace is the scratch a Linear needs; one per Runner.
type Workspace struct {
	loraTmp []float32 // [maxRank] A·x between the two LoRA steps
	mv      matvec
}

// matvec is the parallel part of Linear.Forward, kept in the workspace so
// that dispatching it allocates nothing.
type matvec struct {
	jobGroup
	l    *Linear
	y, x []float32
	rows int
}

func (j *matvec) run(lo, hi int) {
	l, in, out := j.l, j.l.In, j.l.Out
	if l.W == nil && l.Quant != nil {
		j.runNF4(lo, hi)
		return
	}
	if l.W == nil && l.W16 != nil {
		for o := lo; o < hi; o++ {
			w := l.W16[o*in : (o+1)*in]
			var b float32
			if l.Bias != nil {
				b = l.Bias[o]
			}
			for r := 0; r < j.rows; r++ {
				j.y[r*out+o] = tensor.DotBF16(w, j.x[r*in:(r+1)*in]) + b
			}
		}
		return
	}
	for o := lo; o < hi; o++ {
		w := l.W[o*in : (o+1)*in]
		var b float32
		if l.Bias != nil {
			b = l.Bias[o]
		}
		for r := 0; r < j.rows; r++ {
			j.y[r*out+o] = tensor.Dot(w, j.x[r*in:(r+1)*in]) + b
		}
	}
}

// runNF4 is run for a packed NF4 weight: for each block (64 weights; a block
// may straddle two rows) the 16 values round(NF4[i]·scale) are made once and
// the block's codes index them; every batch row takes the dot product of up
// to maxNF4Block decoded weights at once: the weights are bitsandbytes' to
// the bit, only 0.5 byte each is read, and no fp32 copy is held.
func (j *matvec) runNF4(lo, hi int) {
	l, in, out := j.l, j.l.In, j.l.Out
	q := l.Quant
	bs := q.BlockSize
	round, bf16 := roundFor(q.Compute), q.Compute == tensor.BF16
	var wbuf [maxNF4Block]float32
	for o := lo; o < hi; o++ {
		for r := 0; r < j.rows; r++ {
			j.y[r*out+o] = 0
		}
		// Blocks are decoded into wbuf until it is full or the row ends; then
		// every batch row takes one dot product over them (long dots: the
		// vector unit's calls and sums paid once a chunk, not once a block).
		w, k0 := wbuf[:0], 0
		for k := 0; k < in; {
			e := o*in + k // flat element index
			b := e / bs
			n := min((b+1)*bs-e, in-k) // this block's part of the row
			s := q.ScaleOf(b)
			var t [16]float32
			if bf16 {
				for i := range t { // round to nearest even, as tensor.RoundBF16 for the finite values a table holds
					u := math.Float32bits(tensor.NF4Table[i] * s)
					t[i] = math.Float32frombits((u + 0x7fff + (u >> 16 & 1)) &^ 0xffff)
				}
			} else {
				for i := range t {
					t[i] = round(tensor.NF4Table[i] * s)
				}
			}
			if j.rows == 1 && e%2 == 0 && n%16 == 0 { // decode: codes straight into the dot product
				j.dotRows(o, w, k0) // what an earlier odd block left in the buffer
				j.y[o] += tensor.DotNF4(&t, q.Packed[e/2:e/2+n/2], j.x[k:k+n])
				k += n
				w, k0 = wbuf[:0], k
				continue
			}
			if len(w)+n > len(wbuf) {
				j.dotRows(o, w, k0)
				w, k0 = wbuf[:0], k
			}
			d := wbuf[len(w) : len(w)+n]
			i := 0
			if e%2 == 1 { // a row that starts in the middle of a byte
				d[0] = t[q.Packed[e/2]&15]
				i = 1
			}
			for ; i+1 < n; i += 2 {
				c := q.Packed[(e+i)/2]
				d[i], d[i+1] = t[c>>4], t[c&15]
			}
			if i < n {
				d[i] = t[q.Packed[(e+i)/2]>>4]
			}
			w = wbuf[:len(w)+n]
			k += n
		}
		j.dotRows(o, w, k0)
		if l.Bias != nil {
			for r := 0; r < j.rows; r++ {
				j.y[r*out+o] += l.Bias[o]
			}
		}
	}
}

// dotRows adds w·x[r, k0 : k0+len(w)] to output o of every batch row r.
func (j *matvec) dotRows(o int, w []float32, k0 int) {
	if len(w) == 0 {
		return
	}
	in, out := j.l.In, j.l.Out
	for r := 0; r < j.rows; r++ {
		j.y[r*out+o] += tensor.Dot(w, j.x[r*in+k0:r*in+k0+len(w)])
	}
}

// Row writes row o of the weight (exact fp32 values) to dst: the embedding
// lookup.
func (l *Linear) Row(dst []float32, o int) {
	switch {
	case l.W != nil:
		copy(dst, l.W[o*l.In:(o+1)*l.In])
	case l.W16 != nil:
		for i, b := range l.W16[o*l.In : (o+1)*l.In] {
			dst[i] = tensor.BF16ToF32(b)
		}
	default:
		copy(dst, l.Weights()[o*l.In:(o+1)*l.In])
	}
}

// widenBF16 returns bf16 bits as fp32 values (exact).
func widenBF16(bits []uint16) []float32 {
	w := make([]float32, len(bits))
	for i, b := range bits {
		w[i] = tensor.BF16ToF32(b)
	}
	return w
}

// maxNF4Block is the largest NF4 block size the CPU path decodes (bitsandbytes
// offers 64 … 4096).
const maxNF4Block = 4096

// roundFor is the rounding of dequantised weights to a compute dtype.
func roundFor(d tensor.DType) func(float32) float32 {
	switch d {
	case tensor.F16:
		return tensor.RoundF16
	case tensor.F32:
		return func(f float32) float32 { return f }
	}
	return tensor.RoundBF16
}

// Forward computes y[r] = W·x[r] + b (+ the LoRA delta of adapters[r]) for
// rows r of x [rows, In] into y [rows, Out]. adapters may be nil (all base).
func (l *Linear) Forward(y, x []float32, rows int, adapters []int, ws *Workspace) {
	in, out := l.In, l.Out
	if l.Quant != nil && l.Quant.BlockSize > maxNF4Block {
		l.Weights()
	}
	bx := x
	if baseInput != nil {
		bx = baseInput(x)
	}
	ws.mv.l, ws.mv.y, ws.mv.x, ws.mv.rows = l, y, bx, rows
	parallelFor(out, 16, &ws.mv)
	for r := 0; r < rows; r++ {
		if adapters == nil || adapters[r] < 0 || adapters[r] >= len(l.LoRA) || l.LoRA[adapters[r]] == nil {
			continue
		}
		m := l.LoRA[adapters[r]]
		m.Apply(y[r*out:(r+1)*out], x[r*in:(r+1)*in], ws.loraTmp[:m.Rank])
	}
}

// baseInput, set by a test only, replaces the input of every base product
// (not the LoRA path's): what an approximation of x on the GPU (its split
// into bf16 parts for the tensor cores) would cost, measured on the fixtures.
var baseInput func(x []float32) []float32
