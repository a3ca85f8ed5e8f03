package qwen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/tensor"
)

// Model is a loaded Qwen2 checkpoint; fields mirror the safetensors keys.
type Model struct {
	Config   *Config
	Gen      *GenerationConfig
	Dir      string
	Quant    string         // "bf16" (16-bit as stored), "nf4" or "nf4-dq"
	Embed    *Linear        // model.embed_tokens.weight [vocab, hidden]: rows looked up (Row), not multiplied
	Layers   []DecoderLayer // model.layers.{i}
	Norm     []float32      // [hidden] model.norm.weight
	LMHead   *Linear        // lm_head.weight; the same Linear as Embed when tied
	Adapters []*lora.Adapter
}

// DecoderLayer is model.layers.{i}.
type DecoderLayer struct {
	InputLayernorm         []float32 // [hidden]
	SelfAttn               Attention
	PostAttentionLayernorm []float32 // [hidden]
	MLP                    MLP
}

// Attention is model.layers.{i}.self_attn.
type Attention struct {
	QProj *Linear // [heads*headDim, hidden], with bias
	KProj *Linear // [kvHeads*headDim, hidden], with bias
	VProj *Linear // [kvHeads*headDim, hidden], with bias
	OProj *Linear // [hidden, heads*headDim]
}

// MLP is model.layers.{i}.mlp.
type MLP struct {
	GateProj *Linear // [intermediate, hidden]
	UpProj   *Linear // [intermediate, hidden]
	DownProj *Linear // [hidden, intermediate]
}

// Linears lists the seven projections of a layer in checkpoint order: q, k,
// v, o, gate, up, down (the GPU engine groups them by this order).
func (l *DecoderLayer) Linears() []*Linear {
	return []*Linear{l.SelfAttn.QProj, l.SelfAttn.KProj, l.SelfAttn.VProj, l.SelfAttn.OProj,
		l.MLP.GateProj, l.MLP.UpProj, l.MLP.DownProj}
}

// Quantisation modes for LoadOptions.Quant.
const (
	QuantNone  = ""       // as stored: 16-bit stays 16-bit, a bitsandbytes checkpoint stays NF4
	QuantBF16  = "bf16"   // 16-bit weights, computed in fp32
	QuantNF4   = "nf4"    // quantise q/k/v/o/gate/up/down at load, fp32 absmax
	QuantNF4DQ = "nf4-dq" // as nf4, with double-quantised absmax
)

// LoadOptions select quantisation at load and the LoRA adapters to attach.
type LoadOptions struct {
	Quant    string
	Adapters []string // PEFT adapter directories; adapter index i is Adapters[i]
	// Progress, if set, is called (from several goroutines, in no order) with
	// the bytes of the checkpoint loaded so far and the total, as the
	// embedding, the head and each layer are bound.
	Progress func(done, total int64)
	// QuantizeBF16, if set, quantises the bf16 weights of --quant nf4 and
	// nf4-dq in place of tensor.QuantizeNF4, straight from the checkpoint's
	// mapped bytes: the GPU's quantiser (kernels.Quantizer), the same bits.
	QuantizeBF16 func(w []byte, shape []int, double bool) (*tensor.NF4, error)
}

// ProjNames are the seven projection module names of a Qwen2 layer, in the
// order Linears returns them.
var ProjNames = []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

// ProjShape is the [out, in] shape of projection ProjNames[j].
func (c *Config) ProjShape(j int) (out, in int) {
	qDim, kvDim := c.Heads*c.HeadDim, c.KVHeads*c.HeadDim
	shapes := [7][2]int{{qDim, c.Hidden}, {kvDim, c.Hidden}, {kvDim, c.Hidden}, {c.Hidden, qDim},
		{c.Intermediate, c.Hidden}, {c.Intermediate, c.Hidden}, {c.Hidden, c.Intermediate}}
	return shapes[j][0], shapes[j][1]
}

// Load reads a Hugging Face Qwen2 model directory (config.json,
// generation_config.json, model.safetensors or shards).
func Load(dir string, opt LoadOptions) (*Model, error) {
	switch opt.Quant {
	case QuantNone, QuantBF16, QuantNF4, QuantNF4DQ:
	default:
		return nil, fmt.Errorf("unknown quantisation %q (want bf16, nf4 or nf4-dq)", opt.Quant)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	gen, err := LoadGenerationConfig(dir, cfg.EosIDs)
	if err != nil {
		return nil, err
	}
	ck, err := tensor.OpenCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()                  // every weight is copied out below
	for _, name := range ck.Names() { // weights the config would silently leave out
		var i int
		if n, _ := fmt.Sscanf(name, "model.layers.%d.", &i); n == 1 && i >= cfg.Layers {
			return nil, fmt.Errorf("%s: the checkpoint holds %s but config.json has num_hidden_layers = %d", dir, name, cfg.Layers)
		}
	}
	m := &Model{Config: cfg, Gen: gen, Dir: dir}
	ld := loader{ck: ck, cfg: cfg, quant: opt.Quant, quantize: opt.QuantizeBF16}
	// Progress in bytes: each part's tensors, counted as the part is bound.
	var total int64
	partBytes := map[string]int64{} // "layer i" or "" (everything else)
	for _, name := range ck.Names() {
		t, _ := ck.Get(name)
		n := int64(len(t.Data))
		total += n
		var i int
		if k, _ := fmt.Sscanf(name, "model.layers.%d.", &i); k == 1 {
			partBytes[fmt.Sprint("layer ", i)] += n
		} else {
			partBytes[""] += n
		}
	}
	var loaded atomic.Int64
	done := func(part string) {
		if opt.Progress != nil {
			opt.Progress(loaded.Add(partBytes[part]), total)
		}
	}
	if m.Embed, err = ld.dense("model.embed_tokens", cfg.Vocab, cfg.Hidden, false); err != nil {
		return nil, err
	}
	if m.Norm, err = ld.vector("model.norm.weight", cfg.Hidden); err != nil {
		return nil, err
	}
	if cfg.TieEmbeddings {
		m.LMHead = m.Embed
	} else if m.LMHead, err = ld.dense("lm_head", cfg.Vocab, cfg.Hidden, false); err != nil {
		return nil, err
	}
	// Layers in parallel: quantising at load (or widening 16-bit weights) is
	// most of the time of loading a large model.
	m.Layers = make([]DecoderLayer, cfg.Layers)
	errs := make([]error, cfg.Layers)
	var wg sync.WaitGroup
	par := runtime.GOMAXPROCS(0)
	if ld.quantize != nil && (ld.quant == QuantNF4 || ld.quant == QuantNF4DQ) {
		// The device quantises a matrix at a time; a few layers in flight
		// keep it fed, each holding its mapped 16-bit pages until its turn.
		par = min(par, 4)
	}
	sem := make(chan struct{}, par)
	for i := range m.Layers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = ld.layer(&m.Layers[i], i)
			done(fmt.Sprint("layer ", i))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	done("") // the embedding, norm and head (bound first; counted last)
	m.Quant = quantMode(m)
	for _, a := range opt.Adapters {
		if err := m.AttachAdapter(a); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// layer binds model.layers.{i}.
func (ld *loader) layer(l *DecoderLayer, i int) error {
	cfg := ld.cfg
	pre := fmt.Sprintf("model.layers.%d.", i)
	var err error
	if l.InputLayernorm, err = ld.vector(pre+"input_layernorm.weight", cfg.Hidden); err != nil {
		return err
	}
	if l.PostAttentionLayernorm, err = ld.vector(pre+"post_attention_layernorm.weight", cfg.Hidden); err != nil {
		return err
	}
	ptrs := []**Linear{&l.SelfAttn.QProj, &l.SelfAttn.KProj, &l.SelfAttn.VProj, &l.SelfAttn.OProj,
		&l.MLP.GateProj, &l.MLP.UpProj, &l.MLP.DownProj}
	for j, p := range ptrs {
		out, in := cfg.ProjShape(j)
		if *p, err = ld.linear(pre+ProjNames[j], out, in, j < 3); err != nil { // q, k, v have biases
			return err
		}
	}
	return nil
}

// quantMode names the model's quantisation from its projections.
func quantMode(m *Model) string {
	nf4, dq := 0, 0
	for i := range m.Layers {
		for _, l := range m.Layers[i].Linears() {
			if l.Quant != nil {
				nf4++
				if l.Quant.Double() {
					dq++
				}
			}
		}
	}
	switch {
	case nf4 == 0:
		return QuantBF16
	case dq == nf4:
		return QuantNF4DQ
	default:
		return QuantNF4
	}
}

// AttachAdapter loads a PEFT adapter directory and gives it the next adapter index.
func (m *Model) AttachAdapter(dir string) error {
	a, err := lora.Load(dir)
	if err != nil {
		return err
	}
	idx := len(m.Adapters)
	seen := 0
	for i := range m.Layers {
		for j, l := range m.Layers[i].Linears() {
			name := fmt.Sprintf("model.layers.%d.%s", i, ProjNames[j])
			mod := a.Modules[name]
			for len(l.LoRA) <= idx {
				l.LoRA = append(l.LoRA, nil)
			}
			if mod == nil {
				continue
			}
			if mod.In != l.In || mod.Out != l.Out {
				return fmt.Errorf("%s: %s is [%d→%d] in the adapter but [%d→%d] in the model %s", a.File, name, mod.In, mod.Out, l.In, l.Out, m.Dir)
			}
			l.LoRA[idx] = mod
			seen++
		}
	}
	if seen != len(a.Modules) {
		for name := range a.Modules {
			if !m.hasLinear(name) {
				return fmt.Errorf("%s: adapter module %s does not exist in the model %s (%d layers)", a.File, name, m.Dir, len(m.Layers))
			}
		}
	}
	m.Adapters = append(m.Adapters, a)
	return nil
}

func (m *Model) hasLinear(name string) bool {
	for i := range m.Layers {
		for _, p := range ProjNames {
			if name == fmt.Sprintf("model.layers.%d.%s", i, p) {
				return true
			}
		}
	}
	return false
}

// MaxRank is the largest LoRA rank over all attached adapters (0 without any).
func (m *Model) MaxRank() int {
	r := 0
	for _, a := range m.Adapters {
		for _, mod := range a.Modules {
			r = max(r, mod.Rank)
		}
	}
	return r
}

// loader binds checkpoint tensors to model fields, checking shapes. Its
// methods are safe for concurrent use (the checkpoint is only read).
type loader struct {
	ck       *tensor.Checkpoint
	cfg      *Config
	quant    string
	quantize func(w []byte, shape []int, double bool) (*tensor.NF4, error) // LoadOptions.QuantizeBF16
}

func (ld *loader) tensor(name string, shape ...int) (*tensor.Tensor, error) {
	t, err := ld.ck.Get(name)
	if errors.Is(err, tensor.ErrNotFound) {
		return nil, fmt.Errorf("%s: missing tensor %s", ld.ck.Dir, name)
	} else if err != nil {
		return nil, err
	}
	t.Populate() // read below: mapped in one call, not a fault a page
	if !sameShape(t.Shape, shape) {
		return nil, fmt.Errorf("%s: tensor %s has shape %v, config.json implies %v", t.File, name, t.Shape, shape)
	}
	switch t.DType {
	case tensor.F32, tensor.BF16, tensor.F16:
	default:
		return nil, fmt.Errorf("%s: tensor %s has dtype %v, want F32, BF16 or F16", t.File, name, t.DType)
	}
	return t, nil
}

func (ld *loader) vector(name string, shape ...int) ([]float32, error) {
	t, err := ld.tensor(name, shape...)
	if err != nil {
		return nil, err
	}
	defer t.Release() // copied out: the checkpoint's pages may go
	return finiteF32(t)
}

// finiteF32 widens a tensor to fp32, refusing NaN or infinite values: they
// would turn every output into garbage (and the GPU path into token 0), so a
// checkpoint holding one is named at load.
func finiteF32(t *tensor.Tensor) ([]float32, error) {
	v := t.F32()
	if i := firstNonFinite(v); i >= 0 {
		return nil, fmt.Errorf("%s: tensor %s: value %d is %v", t.File, t.Name, i, v[i])
	}
	return v, nil
}

// dense loads a 16-bit projection as is.
func (ld *loader) dense(module string, out, in int, bias bool) (*Linear, error) {
	w, err := ld.tensor(module+".weight", out, in)
	if err != nil {
		return nil, err
	}
	defer w.Release() // copied out: the checkpoint's pages may go
	l := &Linear{Name: module, Out: out, In: in, DType: w.DType}
	if w.DType == tensor.BF16 { // kept as 2 bytes a weight (the checkpoint is closed after load: a copy)
		l.W16 = make([]uint16, w.Len())
		var mu sync.Mutex
		// On every core (the embedding: 311 M values at the 3B shape); the
		// first NaN or infinity is reported.
		bad := len(l.W16)
		tensor.ForChunks(len(l.W16), 1<<20, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				b := binary.LittleEndian.Uint16(w.Data[2*i:])
				if b&0x7f80 == 0x7f80 { // exponent all ones: NaN or infinity
					mu.Lock()
					bad = min(bad, i)
					mu.Unlock()
					return
				}
				l.W16[i] = b
			}
		})
		if bad < len(l.W16) {
			return nil, fmt.Errorf("%s: tensor %s: value %d is %v", w.File, w.Name, bad, tensor.BF16ToF32(binary.LittleEndian.Uint16(w.Data[2*bad:])))
		}
	} else if l.W, err = finiteF32(w); err != nil {
		return nil, err
	}
	if bias {
		if l.Bias, err = ld.vector(module+".bias", out); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// linear loads a projection: NF4 from a bitsandbytes checkpoint, quantised now
// if asked, or 16-bit.
func (ld *loader) linear(module string, out, in int, bias bool) (*Linear, error) {
	var q *tensor.NF4
	var err error
	if ld.ck.Has(module + ".weight" + BnbStateSuffix) {
		if ld.quant != QuantNone {
			return nil, fmt.Errorf("%s: the checkpoint is already quantised by bitsandbytes; leave out --quant (got %q)", ld.ck.Dir, ld.quant)
		}
		if q, err = readBnb(ld.ck, module, out, in); err != nil {
			return nil, err
		}
	} else if ld.cfg.Quantization != nil && ld.cfg.Quantization.LoadIn4Bit && !skipped(ld.cfg.Quantization.SkipModules, module) {
		return nil, fmt.Errorf("%s: config.json says load_in_4bit but %s has no %s entry", ld.ck.Dir, module+".weight", BnbStateSuffix)
	}
	if q == nil && ld.quantize != nil && (ld.quant == QuantNF4 || ld.quant == QuantNF4DQ) {
		if q, err = ld.quantizeBF16(module, out, in); err != nil {
			return nil, err
		}
	}
	var l *Linear
	if q != nil {
		l = &Linear{Name: module, Out: out, In: in, Quant: q, DType: tensor.U8}
		if bias {
			if l.Bias, err = ld.vector(module+".bias", out); err != nil {
				return nil, err
			}
		}
	} else {
		if l, err = ld.dense(module, out, in, bias); err != nil {
			return nil, err
		}
		if ld.quant == QuantNF4 || ld.quant == QuantNF4DQ {
			w := l.W // not Weights: its once must stay free for the dequantised copy
			if w == nil {
				w = widenBF16(l.W16)
			}
			if l.DType == tensor.F32 { // bitsandbytes quantises the weight as loaded in the compute dtype
				for i := range w {
					w[i] = tensor.RoundBF16(w[i])
				}
			}
			if l.Quant, err = tensor.QuantizeNF4(w, []int{out, in}, tensor.BF16, ld.quant == QuantNF4DQ); err != nil {
				return nil, fmt.Errorf("%s: %v", module, err)
			}
			l.W, l.W16 = nil, nil // the packed form serves from here (Weights dequantises on demand)
		}
	}
	return l, nil
}

// quantizeBF16 quantises a bf16 weight with the loader's quantiser, from the
// checkpoint's mapped pages (no host copy); nil for another dtype (the CPU
// path quantises those).
func (ld *loader) quantizeBF16(module string, out, in int) (*tensor.NF4, error) {
	w, err := ld.tensor(module+".weight", out, in)
	if err != nil || w.DType != tensor.BF16 {
		return nil, err
	}
	defer w.Release() // quantised: the 16-bit pages may go
	q, err := ld.quantize(w.Data, []int{out, in}, ld.quant == QuantNF4DQ)
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %s: %v", w.File, w.Name, err)
	}
	return q, nil
}

// skipped reports whether transformers would leave module unquantised:
// llm_int8_skip_modules entries match as substrings of the module name.
func skipped(skip []string, module string) bool {
	for _, s := range skip {
		if s != "" && strings.Contains(module, s) {
			return true
		}
	}
	return false
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
