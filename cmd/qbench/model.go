package main

import (
	"flag"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/qbench/qbench/qwen"
)

// modelFlags are the flags every command that runs a model shares.
type modelFlags struct {
	model    string
	adapters multiFlag
	quant    string
	device   string
}

func (m *modelFlags) register(fs *flag.FlagSet, multiAdapter bool) {
	fs.StringVar(&m.model, "model", "", "Hugging Face model `DIR` (config.json, safetensors; bf16/f16/f32 or bitsandbytes 4-bit)")
	help := "PEFT LoRA adapter `DIR`"
	if multiAdapter {
		help += " (repeat for several)"
	}
	fs.Var(&m.adapters, "adapter", help)
	fs.StringVar(&m.quant, "quant", "", "quantise a 16-bit model at load: bf16 (none), nf4 or nf4-dq; omit for a pre-quantised model")
	fs.StringVar(&m.device, "device", defaultDevice(), "cpu, cuda, or auto: the GPU when an NVIDIA driver (and, for this build without GPU code, qbench-cuda beside it) is there")
}

// load loads the model, with a bytes/s progress bar on a terminal unless quiet.
func (m *modelFlags) load(quiet bool) (*qwen.Model, error) {
	if m.model == "" {
		return nil, fmt.Errorf("--model is required")
	}
	if err := checkDevice(&m.device); err != nil {
		return nil, err
	}
	// Loading makes a transient copy of each tensor (widened, quantised)
	// beside the weights it keeps: collect garbage sooner than Go's default
	// (at twice the live heap) so the peak stays near what is kept (3B shape,
	// --quant nf4-dq on the CPU: 5.3 → 3.6 GB peak RSS; qwen/PERF.md).
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	quantize, done, err := quantizer(m.device) // on the GPU when it runs there
	if err != nil {
		return nil, err
	}
	defer done()
	bar := newByteBar("loading weights", quiet)
	defer bar.Finish()
	var mu sync.Mutex
	return qwen.Load(m.model, qwen.LoadOptions{Quant: m.quant, Adapters: m.adapters, QuantizeBF16: quantize,
		Progress: func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			bar.ChangeMax64(total)
			bar.Set64(done)
		}})
}
