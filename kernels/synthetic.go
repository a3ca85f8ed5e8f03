package kernels

import (
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// SyntheticModel builds a model of cfg whose projections are NF4 with double
// quantisation filled with random codes and scales (not zeros: timing on
// zeros flatters), for benchmarks without a download. The fp32 weights are
// left empty, so only the GPU engine can run it.
func SyntheticModel(cfg *qwen.Config, seed uint64) *qwen.Model {
	rng := rand.New(rand.NewPCG(seed, 11))
	vec := func(n int, scale float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = (rng.Float32()*2 - 1) * scale
		}
		return v
	}
	bf16 := func(v []float32) []float32 { // real checkpoints store these in bf16
		for i := range v {
			v[i] = tensor.RoundBF16(v[i])
		}
		return v
	}
	m := &qwen.Model{Config: cfg, Gen: &qwen.GenerationConfig{}, Quant: qwen.QuantNF4DQ,
		Embed: &qwen.Linear{Name: "model.embed_tokens", Out: cfg.Vocab, In: cfg.Hidden, W: bf16(vec(cfg.Vocab*cfg.Hidden, 0.05)), DType: tensor.BF16}, Norm: vec(cfg.Hidden, 1), Layers: make([]qwen.DecoderLayer, cfg.Layers)}
	m.LMHead = m.Embed
	if !cfg.TieEmbeddings {
		m.LMHead = &qwen.Linear{Name: "lm_head", Out: cfg.Vocab, In: cfg.Hidden, W: bf16(vec(cfg.Vocab*cfg.Hidden, 0.05)), DType: tensor.BF16}
	}
	var wg sync.WaitGroup
	for i := range m.Layers {
		l := &m.Layers[i]
		l.InputLayernorm, l.PostAttentionLayernorm = vec(cfg.Hidden, 1), vec(cfg.Hidden, 1)
		ptrs := []**qwen.Linear{&l.SelfAttn.QProj, &l.SelfAttn.KProj, &l.SelfAttn.VProj, &l.SelfAttn.OProj,
			&l.MLP.GateProj, &l.MLP.UpProj, &l.MLP.DownProj}
		for j, p := range ptrs {
			out, in := cfg.ProjShape(j)
			lin := &qwen.Linear{Name: fmt.Sprintf("model.layers.%d.%s", i, qwen.ProjNames[j]), Out: out, In: in, DType: tensor.U8}
			if j < 3 {
				lin.Bias = vec(out, 0.1)
			}
			*p = lin
			wg.Add(1)
			go func(seed uint64) { // the codes are most of the bytes: fill them in parallel
				defer wg.Done()
				lin.Quant = randomNF4(out, in, seed)
			}(rng.Uint64())
		}
	}
	wg.Wait()
	return m
}

func randomNF4(out, in int, seed uint64) *tensor.NF4 {
	r := rand.New(rand.NewPCG(seed, 12))
	n := out * in
	blocks := n / tensor.NF4BlockSize
	fill := func(b []byte) {
		for i := 0; i+8 <= len(b); i += 8 {
			u := r.Uint64()
			for k := 0; k < 8; k++ {
				b[i+k] = byte(u >> (8 * k))
			}
		}
	}
	q := &tensor.NF4{Shape: []int{out, in}, Packed: make([]byte, n/2), BlockSize: tensor.NF4BlockSize, Compute: tensor.BF16,
		QAbsmax: make([]byte, blocks), NestedCode: tensor.DynamicMap8(), NestedBlockSize: tensor.NestedBlockSize, Offset: 0.02}
	fill(q.Packed)
	fill(q.QAbsmax)
	q.NestedAbsmax = make([]float32, (blocks+tensor.NestedBlockSize-1)/tensor.NestedBlockSize)
	for i := range q.NestedAbsmax {
		q.NestedAbsmax[i] = 0.01 + 0.01*r.Float32()
	}
	return q
}

// AddSyntheticAdapter attaches a random LoRA adapter of the given rank on all
// seven projections of every layer.
func AddSyntheticAdapter(m *qwen.Model, rank int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 13))
	vec := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = (rng.Float32()*2 - 1) * 0.02
		}
		return v
	}
	a := &lora.Adapter{Name: fmt.Sprintf("synthetic-r%d", rank), Modules: map[string]*lora.Module{}}
	a.Config.R, a.Config.Alpha = rank, float64(2*rank)
	idx := len(m.Adapters)
	for i := range m.Layers {
		for j, l := range m.Layers[i].Linears() {
			mod := &lora.Module{Rank: rank, In: l.In, Out: l.Out, A: vec(rank * l.In), B: vec(l.Out * rank), Scale: 2}
			a.Modules[fmt.Sprintf("model.layers.%d.%s", i, qwen.ProjNames[j])] = mod
			for len(l.LoRA) <= idx {
				l.LoRA = append(l.LoRA, nil)
			}
			l.LoRA[idx] = mod
		}
	}
	m.Adapters = append(m.Adapters, a)
}
