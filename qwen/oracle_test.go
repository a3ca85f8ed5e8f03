//go:build !cuda

// gorgonia built with -tags cuda wants cuDNN; the oracle is a CPU test and runs in the default build.

package qwen

import (
	"math"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestLayerAgainstGorgonia builds one decoder layer's math as a gorgonia
// ExprGraph in float64 — an implementation that shares no code with ours —
// and compares it with the CPU layer on fresh random inputs each run:
// RMSNorm, q/k/v with bias, RoPE (rotate_half as a matrix), causal GQA
// softmax attention, o_proj, residual, RMSNorm, SwiGLU MLP, residual.
func TestLayerAgainstGorgonia(t *testing.T) {
	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)
	cfg := &Config{Hidden: 64, Intermediate: 96, Layers: 1, Heads: 4, KVHeads: 2, HeadDim: 16, Vocab: 8,
		RMSEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true}
	T := 7 // a prefill of 7 tokens at positions 0..6
	m := randomModel(cfg, rng)
	r := NewRunner(m)
	s := m.NewSeq(T, -1)
	toks := make([]int, T)
	r.reserve(T, T)
	r.embed([]*Seq{s}, [][]int{toks})
	x0 := randVec(rng, T*cfg.Hidden, 1)
	copy(r.x, x0)
	r.layer(0, []*Seq{s}, T)
	got := r.x[:T*cfg.Hidden]

	want := gorgoniaLayer(t, cfg, &m.Layers[0], x0, T)
	var maxDiff, maxRef float64
	for i := range want {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-want[i]))
		maxRef = math.Max(maxRef, math.Abs(want[i]))
	}
	if rel := maxDiff / maxRef; rel > 1e-5 || math.IsNaN(rel) {
		t.Errorf("layer output: max |Δ| / max |ref| = %.3g > 1e-5 (seed %d)", rel, seed)
	} else {
		t.Logf("max |Δ| / max |ref| = %.3g", rel)
	}
}

func randVec(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return v
}

// randomModel makes a model of cfg with Gaussian weights (biases included).
func randomModel(cfg *Config, rng *rand.Rand) *Model {
	m := &Model{Config: cfg, Gen: &GenerationConfig{}, Embed: &Linear{Name: "embed", Out: cfg.Vocab, In: cfg.Hidden, W: randVec(rng, cfg.Vocab*cfg.Hidden, 1)},
		Norm: randVec(rng, cfg.Hidden, 1), Layers: make([]DecoderLayer, cfg.Layers)}
	m.LMHead = m.Embed
	for i := range m.Layers {
		l := &m.Layers[i]
		l.InputLayernorm = randVec(rng, cfg.Hidden, 1)
		l.PostAttentionLayernorm = randVec(rng, cfg.Hidden, 1)
		ptrs := []**Linear{&l.SelfAttn.QProj, &l.SelfAttn.KProj, &l.SelfAttn.VProj, &l.SelfAttn.OProj,
			&l.MLP.GateProj, &l.MLP.UpProj, &l.MLP.DownProj}
		for j, p := range ptrs {
			out, in := cfg.ProjShape(j)
			*p = &Linear{Name: ProjNames[j], Out: out, In: in, W: randVec(rng, out*in, 1/math.Sqrt(float64(in)))}
			if j < 3 {
				(*p).Bias = randVec(rng, out, 0.5)
			}
		}
	}
	return m
}

func gorgoniaLayer(t *testing.T, cfg *Config, l *DecoderLayer, x0 []float32, T int) []float64 {
	g := G.NewGraph()
	must := func(n *G.Node, err error) *G.Node {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	c64 := func(v []float32) []float64 {
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	mat := func(name string, rows, cols int, data []float64) *G.Node {
		return G.NewMatrix(g, tensor.Float64, G.WithShape(rows, cols), G.WithName(name),
			G.WithValue(tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(data))))
	}
	fill := func(name string, rows, cols int, v float64) *G.Node {
		d := make([]float64, rows*cols)
		for i := range d {
			d[i] = v
		}
		return mat(name, rows, cols, d)
	}
	H, hd := cfg.Hidden, cfg.HeadDim
	onesT1 := fill("onesT", T, 1, 1)
	// rmsnorm: x / sqrt(mean(x²) + eps) ⊙ w, broadcasts written as outer products.
	rms := func(name string, x *G.Node, w []float32) *G.Node {
		ms := must(G.Mul(must(G.Square(x)), fill(name+"avg", H, 1, 1/float64(H))))
		inv := must(G.Inverse(must(G.Sqrt(must(G.Add(ms, fill(name+"eps", T, 1, float64(cfg.RMSEps))))))))
		scaled := must(G.HadamardProd(x, must(G.Mul(inv, fill(name+"ones1H", 1, H, 1)))))
		return must(G.HadamardProd(scaled, must(G.Mul(onesT1, mat(name+"w", 1, H, c64(w))))))
	}
	// linear: x·Wᵀ (+ 1·bᵀ).
	linear := func(x *G.Node, lin *Linear) *G.Node {
		wt, w := make([]float64, lin.In*lin.Out), lin.Weights()
		for o := 0; o < lin.Out; o++ {
			for i := 0; i < lin.In; i++ {
				wt[i*lin.Out+o] = float64(w[o*lin.In+i])
			}
		}
		y := must(G.Mul(x, mat(lin.Name+"Wt", lin.In, lin.Out, wt)))
		if lin.Bias != nil {
			y = must(G.Add(y, must(G.Mul(onesT1, mat(lin.Name+"b", 1, lin.Out, c64(lin.Bias))))))
		}
		return y
	}
	// RoPE: y = x ⊙ COS + (x·R) ⊙ SIN, R the signed permutation of rotate_half, per head.
	rope := func(name string, x *G.Node, heads int) *G.Node {
		d := heads * hd
		cos, sin, rot := make([]float64, T*d), make([]float64, T*d), make([]float64, d*d)
		half := hd / 2
		for p := 0; p < T; p++ {
			for h := 0; h < heads; h++ {
				for j := 0; j < hd; j++ {
					inv := 1 / math.Pow(cfg.RopeTheta, float64(2*(j%half))/float64(hd))
					cos[p*d+h*hd+j], sin[p*d+h*hd+j] = math.Cos(float64(p)*inv), math.Sin(float64(p)*inv)
				}
			}
		}
		for h := 0; h < heads; h++ {
			for j := 0; j < half; j++ {
				rot[(h*hd+j+half)*d+h*hd+j] = -1 // out[j] = −x[j+half]
				rot[(h*hd+j)*d+h*hd+j+half] = 1  // out[j+half] = x[j]
			}
		}
		xr := must(G.Mul(x, mat(name+"R", d, d, rot)))
		return must(G.Add(must(G.HadamardProd(x, mat(name+"cos", T, d, cos))), must(G.HadamardProd(xr, mat(name+"sin", T, d, sin)))))
	}
	x := mat("x", T, H, c64(x0))
	xn := rms("n1", x, l.InputLayernorm)
	q := rope("q", linear(xn, l.SelfAttn.QProj), cfg.Heads)
	k := rope("k", linear(xn, l.SelfAttn.KProj), cfg.KVHeads)
	v := linear(xn, l.SelfAttn.VProj)
	mask := make([]float64, T*T)
	for i := 0; i < T; i++ {
		for j := i + 1; j < T; j++ {
			mask[i*T+j] = -1e9 // exp → 0: position i sees 0..i
		}
	}
	maskN := mat("mask", T, T, mask)
	scale := fill("scale", T, T, 1/math.Sqrt(float64(hd)))
	var heads []*G.Node
	for h := 0; h < cfg.Heads; h++ {
		kvh := h / (cfg.Heads / cfg.KVHeads)
		qh := must(G.Slice(q, nil, G.S(h*hd, (h+1)*hd)))
		kh := must(G.Slice(k, nil, G.S(kvh*hd, (kvh+1)*hd)))
		vh := must(G.Slice(v, nil, G.S(kvh*hd, (kvh+1)*hd)))
		scores := must(G.Add(must(G.HadamardProd(must(G.Mul(qh, must(G.Transpose(kh)))), scale)), maskN))
		e := must(G.Exp(scores))
		rowsum := must(G.Mul(e, fill("onesTT1", T, 1, 1)))
		p := must(G.HadamardProd(e, must(G.Mul(must(G.Inverse(rowsum)), fill("ones1T", 1, T, 1)))))
		heads = append(heads, must(G.Mul(p, vh)))
	}
	att := must(G.Concat(1, heads...))
	x1 := must(G.Add(x, linear(att, l.SelfAttn.OProj)))
	xn2 := rms("n2", x1, l.PostAttentionLayernorm)
	gate := linear(xn2, l.MLP.GateProj)
	act := must(G.HadamardProd(must(G.HadamardProd(gate, must(G.Sigmoid(gate)))), linear(xn2, l.MLP.UpProj)))
	out := must(G.Add(x1, linear(act, l.MLP.DownProj)))
	var val G.Value
	G.Read(out, &val)
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	return append([]float64(nil), val.Data().([]float64)...)
}
