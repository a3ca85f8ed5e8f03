package qwen

import (
	"math/rand/v2"

	"github.com/qbench/qbench/tensor"
	"testing"
)

// Qwen05B is the Qwen2.5-0.5B architecture.
var Qwen05B = Shapes["qwen2.5-0.5b"]

// benchDecode prefills 32 tokens, then times one-token decode steps; it
// reports tok/s. Weights are random (uniform, not zeros).
func benchDecode(b *testing.B, m *Model) {
	r := NewRunner(m)
	s := m.NewSeq(32+b.N+1, -1)
	prompt := make([]int, 32)
	for i := range prompt {
		prompt[i] = (i * 7919) % m.Config.Vocab
	}
	if _, err := r.Forward([]*Seq{s}, [][]int{prompt}, false); err != nil {
		b.Fatal(err)
	}
	tok := [][]int{{42}}
	seqs := []*Seq{s}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		logits, err := r.Forward(seqs, tok, false)
		if err != nil {
			b.Fatal(err)
		}
		tok[0][0] = Argmax(logits)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
}

func BenchmarkDecodeTiny(b *testing.B) {
	m, err := Load(tinyDir, LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	benchDecode(b, m)
}

func BenchmarkDecode05B(b *testing.B) {
	benchDecode(b, fastRandomModel(Qwen05B, 1))
}

// fastRandomModel fills a model of cfg with uniform random weights scaled
// like a trained model's (±1/√in), quickly enough for a 0.5B shape.
func fastRandomModel(cfg *Config, seed uint64) *Model {
	rng := rand.New(rand.NewPCG(seed, 2))
	vec := func(n int, scale float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = (rng.Float32()*2 - 1) * scale
		}
		return v
	}
	m := &Model{Config: cfg, Gen: &GenerationConfig{}, Embed: &Linear{Name: "embed", Out: cfg.Vocab, In: cfg.Hidden, W: vec(cfg.Vocab*cfg.Hidden, 0.05)},
		Norm: vec(cfg.Hidden, 1), Layers: make([]DecoderLayer, cfg.Layers)}
	m.LMHead = m.Embed
	for i := range m.Layers {
		l := &m.Layers[i]
		l.InputLayernorm, l.PostAttentionLayernorm = vec(cfg.Hidden, 1), vec(cfg.Hidden, 1)
		for j, p := range []**Linear{&l.SelfAttn.QProj, &l.SelfAttn.KProj, &l.SelfAttn.VProj, &l.SelfAttn.OProj,
			&l.MLP.GateProj, &l.MLP.UpProj, &l.MLP.DownProj} {
			out, in := cfg.ProjShape(j)
			*p = &Linear{Name: ProjNames[j], Out: out, In: in, W: vec(out*in, 1/float32(in))}
			if j < 3 {
				(*p).Bias = vec(out, 0.1)
			}
		}
	}
	return m
}

// TestDecodeAllocations: a steady-state decode step allocates nothing.
func TestDecodeAllocations(t *testing.T) {
	m := load(t, tinyDir, LoadOptions{Adapters: []string{loraDir}})
	r := NewRunner(m)
	s := m.NewSeq(200, 0)
	if _, err := r.Forward([]*Seq{s}, [][]int{{1, 2, 3}}, false); err != nil {
		t.Fatal(err)
	}
	seqs, tok := []*Seq{s}, [][]int{{5}}
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := r.Forward(seqs, tok, false); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%.0f allocations per decode step, want 0", allocs)
	}
}

// BenchmarkDecode05BNF4 decodes the 0.5B shape with its projections in NF4
// (double quantisation): "packed" decodes the codes block by block as it
// computes (0.5 byte a weight held and read), "fp32" runs on the dequantised
// fp32 copy (Weights; 4 bytes a weight) — the CPU path before packed NF4.
func BenchmarkDecode05BNF4(b *testing.B) {
	m := fastRandomModel(Qwen05B, 1)
	for i := range m.Layers {
		for _, l := range m.Layers[i].Linears() {
			for k := range l.W {
				l.W[k] = tensor.RoundBF16(l.W[k])
			}
			q, err := tensor.QuantizeNF4(l.W, []int{l.Out, l.In}, tensor.BF16, true)
			if err != nil {
				b.Fatal(err)
			}
			l.Quant, l.W = q, nil
		}
	}
	b.Run("packed", func(b *testing.B) { benchDecode(b, m) })
	b.Run("fp32", func(b *testing.B) { benchDecodeWidened(b, m) })
}

// BenchmarkDecode05BBF16 decodes the 0.5B shape with bf16 projections:
// "bf16" reads them as 16-bit values (W16, how a bf16 checkpoint loads),
// "fp32" their widened copy (4 bytes a weight; the CPU path before W16).
func BenchmarkDecode05BBF16(b *testing.B) {
	m := fastRandomModel(Qwen05B, 1)
	for i := range m.Layers {
		for _, l := range m.Layers[i].Linears() {
			l.W16 = make([]uint16, len(l.W))
			for k, v := range l.W {
				l.W16[k] = tensor.F32ToBF16(v)
			}
			l.W = nil
		}
	}
	b.Run("bf16", func(b *testing.B) { benchDecode(b, m) })
	b.Run("fp32", func(b *testing.B) { benchDecodeWidened(b, m) })
}

// benchDecodeWidened decodes with every projection's fp32 copy made first
// (Weights), which the forward pass then reads: the 4-byte baseline.
func benchDecodeWidened(b *testing.B, m *Model) {
	for i := range m.Layers {
		for _, l := range m.Layers[i].Linears() {
			l.Weights()
		}
	}
	benchDecode(b, m)
}
