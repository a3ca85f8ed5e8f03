package qwen

import (
	"sync"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/tensor"
)

// Linear is one projection: y = W·x + b, plus scale·B(A·x) for rows whose
// adapter touches this module. W is held widened to fp32; where the checkpoint
// is NF4, Quant keeps the packed form (for the GPU and for inspect) and W, its
// exact bitsandbytes dequantisation, is made on first use by the CPU path
// (Weights), so a model that only runs on the GPU never holds it.
type Linear struct {
	Name    string
	Out, In int
	W       []float32      // [Out, In]; nil until Weights for an NF4 module
	Bias    []float32      // [Out], or nil
	Quant   *tensor.NF4    // packed NF4 weight, or nil for a 16-bit module
	LoRA    []*lora.Module // indexed by adapter; nil where that adapter leaves this module alone
	DType   tensor.DType   // dtype the weight was stored in: the GPU engine keeps a BF16 module in bf16, others in fp32
	once    sync.Once
}

// Weights returns W, dequantising an NF4 module on first use.
func (l *Linear) Weights() []float32 {
	l.once.Do(func() {
		if l.W == nil && l.Quant != nil {
			l.W = l.Quant.Dequantize()
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
	for o := lo; o < hi; o++ {
		w := l.W[o*in : (o+1)*in]
		var b float32
		if l.Bias != nil {
			b = l.Bias[o]
		}
		for r := 0; r < j.rows; r++ {
			j.y[r*out+o] = dot(w, j.x[r*in:(r+1)*in]) + b
		}
	}
}

// Forward computes y[r] = W·x[r] + b (+ the LoRA delta of adapters[r]) for
// rows r of x [rows, In] into y [rows, Out]. adapters may be nil (all base).
func (l *Linear) Forward(y, x []float32, rows int, adapters []int, ws *Workspace) {
	in, out := l.In, l.Out
	l.Weights()
	ws.mv.l, ws.mv.y, ws.mv.x, ws.mv.rows = l, y, x, rows
	parallelFor(out, 16, &ws.mv)
	for r := 0; r < rows; r++ {
		if adapters == nil || adapters[r] < 0 || adapters[r] >= len(l.LoRA) || l.LoRA[adapters[r]] == nil {
			continue
		}
		m := l.LoRA[adapters[r]]
		m.Apply(y[r*out:(r+1)*out], x[r*in:(r+1)*in], ws.loraTmp[:m.Rank])
	}
}

// dot is Σ a[i]·b[i] in fp32, four partial sums to shorten the dependency chain.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}
