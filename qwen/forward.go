package qwen

import (
	"fmt"
	"math"

	"github.com/qbench/qbench/tensor"
)

// Seq is one sequence being decoded: its adapter and its KV cache.
//
// The contract every Engine keeps: a forward pass writes the keys and values
// of positions Len … Len+n−1 and then advances Len by n; attention reads
// positions 0 … Len+n−1. So a caller may lower Len to reuse a prefix of the
// cache (eval does: after the teacher-forced pass over prompt + reference it
// sets Len back to the prompt's length less one, and generation overwrites
// the rest). Raising Len past what was written is an error nobody checks.
type Seq struct {
	Adapter int       // index into Model.Adapters, −1 = base model
	Len     int       // tokens already in the cache
	Cap     int       // cache capacity in tokens
	K, V    []float32 // CPU engine only: [layers, Cap, kvHeads*headDim]; nil on other engines
	Handle  any       // engine-owned state, e.g. the GPU engine's device cache
}

// firstNonFinite is the index of the first NaN or infinity in v, or −1.
func firstNonFinite(v []float32) int {
	for i, x := range v {
		if x-x != 0 { // NaN and ±Inf give NaN
			return i
		}
	}
	return -1
}

// CheckFinite reports logits [rows, vocab] that hold a NaN or infinity,
// naming the first such row.
func CheckFinite(logits []float32, vocab int) error {
	if i := firstNonFinite(logits); i >= 0 {
		return fmt.Errorf("forward: non-finite logits at row %d of the pass (NaN or infinite weights in the checkpoint?)", i/vocab)
	}
	return nil
}

// RopeInvFreq is RoPE's inverse frequencies [headDim/2], 1/θ^(2j/d) with
// each step in fp32 as transformers computes them; every engine uses these.
func RopeInvFreq(c *Config) []float32 {
	inv := make([]float32, c.HeadDim/2)
	for j := range inv {
		e := float32(2*j) / float32(c.HeadDim)
		inv[j] = 1 / float32(math.Pow(c.RopeTheta, float64(e)))
	}
	return inv
}

// CheckBatch validates the arguments of one forward pass as every engine
// must: one non-empty token list per sequence, each fitting its cache, the
// adapter and every token id in range. It returns the pass's rows (new tokens
// summed over the sequences).
func (m *Model) CheckBatch(seqs []*Seq, tokens [][]int) (rows int, err error) {
	c := m.Config
	if len(seqs) != len(tokens) {
		return 0, fmt.Errorf("forward: %d sequences, %d token lists", len(seqs), len(tokens))
	}
	for i, s := range seqs {
		if len(tokens[i]) == 0 {
			return 0, fmt.Errorf("forward: sequence %d has no new tokens", i)
		}
		if s.Len+len(tokens[i]) > s.Cap {
			return 0, fmt.Errorf("forward: sequence %d needs %d positions, its cache holds %d", i, s.Len+len(tokens[i]), s.Cap)
		}
		if s.Adapter >= len(m.Adapters) {
			return 0, fmt.Errorf("forward: adapter index %d, the model has %d adapters", s.Adapter, len(m.Adapters))
		}
		for _, t := range tokens[i] {
			if t < 0 || t >= c.Vocab {
				return 0, fmt.Errorf("forward: token id %d outside the vocabulary [0,%d)", t, c.Vocab)
			}
		}
		rows += len(tokens[i])
	}
	return rows, nil
}

// NewSeq makes a sequence whose cache holds capacity tokens.
func (m *Model) NewSeq(capacity, adapter int) *Seq {
	c := m.Config
	n := c.Layers * capacity * c.KVHeads * c.HeadDim
	return &Seq{Adapter: adapter, Cap: capacity, K: make([]float32, n), V: make([]float32, n)}
}

// Runner holds the scratch buffers of forward passes; reusing one Runner
// makes steady-state decoding allocation-free. Not safe for concurrent use.
type Runner struct {
	m    *Model
	rows int // capacity of the row buffers

	x, xn     []float32 // [rows, hidden] residual stream, normed input
	q, att    []float32 // [rows, heads*headDim]
	k, v      []float32 // [rows, kvHeads*headDim]
	o         []float32 // [rows, hidden]
	gate, up  []float32 // [rows, intermediate]
	cos, sin  []float32 // [rows, headDim/2]
	ws        Workspace
	att1      attentionJob
	scores    []float32 // [heads, ctx]
	rowSeq    []int     // [rows] which sequence each row belongs to
	rowPos    []int     // [rows] position of each row in its sequence
	adapters  []int     // [rows] adapter index per row
	headRows  []float32 // [rows, hidden] final-normed rows that get logits
	logits    []float32 // [rows, vocab]
	invFreq   []float32 // [headDim/2] RoPE inverse frequencies
	scoresCap int
}

// NewRunner makes a Runner for m.
func NewRunner(m *Model) *Runner {
	return &Runner{m: m, invFreq: RopeInvFreq(m.Config)}
}

func (r *Runner) reserve(rows, ctx int) {
	c := r.m.Config
	if rows > r.rows {
		r.rows = rows
		qDim, kvDim := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
		r.x, r.xn, r.o = make([]float32, rows*c.Hidden), make([]float32, rows*c.Hidden), make([]float32, rows*c.Hidden)
		r.q, r.att = make([]float32, rows*qDim), make([]float32, rows*qDim)
		r.k, r.v = make([]float32, rows*kvDim), make([]float32, rows*kvDim)
		r.gate, r.up = make([]float32, rows*c.Intermediate), make([]float32, rows*c.Intermediate)
		r.cos, r.sin = make([]float32, rows*c.HeadDim/2), make([]float32, rows*c.HeadDim/2)
		r.rowSeq, r.rowPos, r.adapters = make([]int, rows), make([]int, rows), make([]int, rows)
	}
	if ctx > r.scoresCap {
		r.scoresCap = ctx
		r.scores = make([]float32, c.Heads*ctx)
	}
	if n := r.m.MaxRank(); len(r.ws.loraTmp) < n {
		r.ws.loraTmp = make([]float32, n)
	}
}

func (r *Runner) reserveLogits(rows int) {
	c := r.m.Config
	if len(r.logits) < rows*c.Vocab {
		r.logits = make([]float32, rows*c.Vocab)
		r.headRows = make([]float32, rows*c.Hidden)
	}
}

// Forward appends tokens[i] to seqs[i] (prefill: many tokens; decode: one)
// and returns logits [n, vocab]: for every new token when all is set, else
// for the last new token of each sequence. The slice is reused by the next call.
func (r *Runner) Forward(seqs []*Seq, tokens [][]int, all bool) ([]float32, error) {
	m, c := r.m, r.m.Config
	rows, err := m.CheckBatch(seqs, tokens)
	if err != nil {
		return nil, err
	}
	ctx := 0
	for _, s := range seqs {
		ctx = max(ctx, s.Cap) // size the scores by capacity: no reallocation as a sequence grows
	}
	r.reserve(rows, ctx)
	r.embed(seqs, tokens)
	for li := range m.Layers {
		r.layer(li, seqs, rows)
		if i := firstNonFinite(r.x[:rows*c.Hidden]); i >= 0 {
			row := i / c.Hidden
			return nil, fmt.Errorf("forward: non-finite activations first appear in layer %d, at position %d of sequence %d (NaN or infinite weights in the checkpoint?)",
				li, r.rowPos[row], r.rowSeq[row])
		}
	}
	for i, s := range seqs {
		s.Len += len(tokens[i])
	}
	H, x := c.Hidden, r.x[:rows*c.Hidden]
	// Final norm on the rows that need logits, then lm_head.
	n := len(seqs)
	if all {
		n = rows
	}
	r.reserveLogits(n)
	for i, end := 0, 0; i < len(seqs); i++ {
		end += len(tokens[i])
		if !all {
			copy(r.headRows[i*H:(i+1)*H], x[(end-1)*H:end*H])
		}
	}
	if all {
		copy(r.headRows, x)
	}
	hr := r.headRows[:n*H]
	rmsNorm(hr, hr, m.Norm, c.RMSEps)
	m.LMHead.Forward(r.logits, hr, n, nil, &r.ws)
	return r.logits[:n*c.Vocab], CheckFinite(r.logits[:n*c.Vocab], c.Vocab)
}

// embed fills each new row's embedding, sequence, position, adapter and
// RoPE angles (the token ids were checked by CheckBatch).
func (r *Runner) embed(seqs []*Seq, tokens [][]int) {
	m, c := r.m, r.m.Config
	H, half := c.Hidden, c.HeadDim/2
	row := 0
	for i, s := range seqs {
		for j, tok := range tokens[i] {
			m.Embed.Row(r.x[row*H:(row+1)*H], tok)
			r.rowSeq[row], r.rowPos[row], r.adapters[row] = i, s.Len+j, s.Adapter
			for f, inv := range r.invFreq {
				angle := float32(r.rowPos[row]) * inv
				r.cos[row*half+f] = float32(math.Cos(float64(angle)))
				r.sin[row*half+f] = float32(math.Sin(float64(angle)))
			}
			row++
		}
	}
}

// layer runs decoder layer li on the residual stream r.x of rows rows.
func (r *Runner) layer(li int, seqs []*Seq, rows int) {
	c := r.m.Config
	l := &r.m.Layers[li]
	H, hd, half := c.Hidden, c.HeadDim, c.HeadDim/2
	qDim, kvDim := c.Heads*hd, c.KVHeads*hd
	x, xn := r.x[:rows*H], r.xn[:rows*H]
	// Attention block: norm, q/k/v with bias, RoPE, append to the cache.
	rmsNorm(xn, x, l.InputLayernorm, c.RMSEps)
	l.SelfAttn.QProj.Forward(r.q, xn, rows, r.adapters, &r.ws)
	l.SelfAttn.KProj.Forward(r.k, xn, rows, r.adapters, &r.ws)
	l.SelfAttn.VProj.Forward(r.v, xn, rows, r.adapters, &r.ws)
	for i := 0; i < rows; i++ {
		cos, sin := r.cos[i*half:(i+1)*half], r.sin[i*half:(i+1)*half]
		for h := 0; h < c.Heads; h++ {
			rope(r.q[i*qDim+h*hd:i*qDim+(h+1)*hd], cos, sin)
		}
		for h := 0; h < c.KVHeads; h++ {
			rope(r.k[i*kvDim+h*hd:i*kvDim+(h+1)*hd], cos, sin)
		}
		s := seqs[r.rowSeq[i]]
		at := (li*s.Cap + r.rowPos[i]) * kvDim
		copy(s.K[at:at+kvDim], r.k[i*kvDim:(i+1)*kvDim])
		copy(s.V[at:at+kvDim], r.v[i*kvDim:(i+1)*kvDim])
	}
	// Causal grouped-query attention over each row's cache, then o_proj and the residual.
	r.attention(seqs, li, rows)
	l.SelfAttn.OProj.Forward(r.o, r.att, rows, r.adapters, &r.ws)
	add(x, r.o[:rows*H])
	// MLP block: norm, down(silu(gate)·up), residual.
	rmsNorm(xn, x, l.PostAttentionLayernorm, c.RMSEps)
	l.MLP.GateProj.Forward(r.gate, xn, rows, r.adapters, &r.ws)
	l.MLP.UpProj.Forward(r.up, xn, rows, r.adapters, &r.ws)
	g, u := r.gate[:rows*c.Intermediate], r.up[:rows*c.Intermediate]
	for i := range g {
		g[i] = silu(g[i]) * u[i]
	}
	l.MLP.DownProj.Forward(r.o, g, rows, r.adapters, &r.ws)
	add(x, r.o[:rows*H])
}

// attention computes, for every row i and head h, softmax(q·Kᵀ/√d)·V over
// positions 0..pos(i) of the row's sequence; query head h reads KV head
// h/(heads/kvHeads). The heads run in parallel.
func (r *Runner) attention(seqs []*Seq, layer, rows int) {
	j := &r.att1
	j.r, j.seqs, j.layer, j.rows = r, seqs, layer, rows
	parallelFor(r.m.Config.Heads, 1, j)
}

type attentionJob struct {
	jobGroup
	r           *Runner
	seqs        []*Seq
	layer, rows int
}

func (j *attentionJob) run(lo, hi int) {
	r, c := j.r, j.r.m.Config
	hd, qDim, kvDim := c.HeadDim, c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	group := c.Heads / c.KVHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	for h := lo; h < hi; h++ {
		g := h / group
		scores := r.scores[h*r.scoresCap : (h+1)*r.scoresCap]
		for i := 0; i < j.rows; i++ {
			s := j.seqs[r.rowSeq[i]]
			n := r.rowPos[i] + 1
			q := r.q[i*qDim+h*hd : i*qDim+(h+1)*hd]
			base := j.layer * s.Cap * kvDim
			maxv := float32(math.Inf(-1))
			for t := 0; t < n; t++ {
				k := s.K[base+t*kvDim+g*hd : base+t*kvDim+(g+1)*hd]
				scores[t] = tensor.Dot(q, k) * scale
				maxv = max(maxv, scores[t])
			}
			var sum float32
			for t := 0; t < n; t++ {
				scores[t] = float32(math.Exp(float64(scores[t] - maxv)))
				sum += scores[t]
			}
			out := r.att[i*qDim+h*hd : i*qDim+(h+1)*hd]
			clear(out)
			for t := 0; t < n; t++ {
				p := scores[t] / sum
				v := s.V[base+t*kvDim+g*hd : base+t*kvDim+(g+1)*hd]
				for d := range out {
					out[d] += p * v[d]
				}
			}
		}
	}
}

// rmsNorm computes dst = x / √(mean(x²) + eps) · w per row of width len(w),
// as Qwen2RMSNorm: the mean in float64 (one rounding), the rest in fp32.
// dst may alias x.
func rmsNorm(dst, x, w []float32, eps float32) {
	n := len(w)
	for r := 0; r < len(x)/n; r++ {
		row := x[r*n : (r+1)*n]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		inv := 1 / float32(math.Sqrt(float64(float32(ss/float64(n))+eps)))
		out := dst[r*n : (r+1)*n]
		for i, v := range row {
			out[i] = w[i] * (v * inv)
		}
	}
}

// rope rotates one head in place: x·cos + rotate_half(x)·sin, where
// rotate_half(x) = [−x2, x1] for the halves x1, x2.
func rope(x, cos, sin []float32) {
	half := len(x) / 2
	for j := 0; j < half; j++ {
		a, b := x[j], x[j+half]
		x[j] = a*cos[j] - b*sin[j]
		x[j+half] = b*cos[j] + a*sin[j]
	}
}

// silu is x·sigmoid(x).
func silu(x float32) float32 { return x * (1 / (1 + float32(math.Exp(float64(-x))))) }

func add(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}
