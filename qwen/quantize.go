package qwen

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/qbench/qbench/tensor"
)

// projWeight matches the weights bitsandbytes quantises in a Qwen2 model.
var projWeight = regexp.MustCompile(`^(model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.weight$`)

// quantizeTensor returns the tensors a checkpoint tensor becomes: a
// projection weight's NF4 tensors, anything else itself.
func quantizeTensor(ck *tensor.Checkpoint, name string, double bool) ([]*tensor.Tensor, error) {
	t, _ := ck.Get(name)
	m := projWeight.FindStringSubmatch(name)
	if m == nil {
		return []*tensor.Tensor{t}, nil
	}
	if t.DType != tensor.BF16 && t.DType != tensor.F16 && t.DType != tensor.F32 {
		return nil, fmt.Errorf("%s: tensor %s has dtype %v, cannot quantise", t.File, name, t.DType)
	}
	w := t.F32()
	compute := tensor.BF16
	if t.DType == tensor.F16 {
		compute = tensor.F16
	}
	for j := range w { // bitsandbytes quantises the weight in the compute dtype
		if compute == tensor.BF16 {
			w[j] = tensor.RoundBF16(w[j])
		} else {
			w[j] = tensor.RoundF16(w[j])
		}
	}
	q, err := tensor.QuantizeNF4(w, t.Shape, compute, double)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %v", t.File, name, err)
	}
	t.Release() // quantised: the 16-bit pages may go
	return BnbTensors(m[1], q), nil
}

// Quantize writes to outDir a copy of the 16-bit model in srcDir whose
// q/k/v/o/gate/up/down weights are NF4 (double-quantised with double), in
// bitsandbytes' own layout: the tensors, dtypes, shapes and JSON blob that
// transformers writes for a load_in_4bit model, and quantization_config in
// config.json. Embeddings, norms, biases and lm_head are copied unchanged.
// progress, if set, is called once per tensor.
func Quantize(srcDir, outDir string, double bool, progress func(done, total int)) error {
	if same(srcDir, outDir) { // writing the shards over their own source would destroy it
		return fmt.Errorf("%s: --out is the model directory itself; write the quantised checkpoint elsewhere", outDir)
	}
	cfgPath := filepath.Join(srcDir, "config.json")
	cfgBytes, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	cfg, err := ParseConfig(cfgPath, cfgBytes)
	if err != nil {
		return err
	}
	if cfg.Quantization != nil {
		return fmt.Errorf("%s: the model is already quantised (%s)", cfgPath, cfg.Quantization.Method)
	}
	ck, err := tensor.OpenCheckpoint(srcDir)
	if err != nil {
		return err
	}
	defer ck.Close()
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	// Tensors on every core (each quantised alone, as bitsandbytes does),
	// written in the checkpoint's order. Each in flight holds its fp32 copy
	// and its 16-bit pages: at most quantizeBudget bytes of them at once (16
	// cores unbounded peaked at 5.1 GB for the 3B model).
	// The quantised tensors stay live until written (1.5 GB for 3B): collect
	// at 25 % growth, not 100 %, so the heap does not double over them.
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	names := ck.Names()
	outs := make([][]*tensor.Tensor, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	var mu sync.Mutex
	finished := 0
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	budget := newByteBudget(quantizeBudget)
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		t, _ := ck.Get(name)
		cost := int64(0)
		if projWeight.MatchString(name) {
			cost = int64(t.Len()) * 6 // fp32 copy + 16-bit pages
		}
		budget.take(cost)
		go func() {
			defer func() { budget.give(cost); <-sem; wg.Done() }()
			outs[i], errs[i] = quantizeTensor(ck, name, double)
			if progress != nil {
				mu.Lock()
				finished++
				progress(finished, len(names))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var out []*tensor.Tensor
	for i := range names {
		if errs[i] != nil {
			return errs[i]
		}
		out = append(out, outs[i]...)
	}
	if err := tensor.Write(filepath.Join(outDir, "model.safetensors"), out, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	// config.json with quantization_config as transformers writes it.
	var raw map[string]any
	if err := json.Unmarshal(cfgBytes, &raw); err != nil {
		return fmt.Errorf("%s: bad JSON: %v", cfgPath, err)
	}
	computeName := "bfloat16"
	if cfg.TorchDType == "float16" {
		computeName = "float16"
	}
	raw["quantization_config"] = map[string]any{
		"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": computeName,
		"bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double,
		"llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": nil,
		"llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes",
	}
	js, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "config.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	// Everything else a model directory carries (generation config, tokenizer) is copied.
	for _, f := range []string{"generation_config.json", "tokenizer.json", "tokenizer.json.gz", "tokenizer_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "special_tokens_map.json"} {
		b, err := os.ReadFile(filepath.Join(srcDir, f))
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(outDir, f), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// quantizeBudget bounds the working memory of Quantize's tensors in flight.
const quantizeBudget = 1 << 30

// byteBudget is a counting semaphore over bytes: take blocks until what is
// taken fits the limit (one taker alone may exceed it).
type byteBudget struct {
	mu    sync.Mutex
	cond  *sync.Cond
	limit int64
	used  int64
}

func newByteBudget(limit int64) *byteBudget {
	b := &byteBudget{limit: limit}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *byteBudget) take(n int64) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.limit {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

func (b *byteBudget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.cond.Broadcast()
	b.mu.Unlock()
}

// same reports whether two paths name one directory.
func same(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(sa, sb)
	}
	aa, _ := filepath.Abs(a)
	ab, _ := filepath.Abs(b)
	return aa == ab
}
