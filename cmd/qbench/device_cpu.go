//go:build !cuda

package main

import (
	"fmt"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

func defaultDevice() string { return "auto" }

// checkDevice accepts cpu and auto (here: the CPU; with qbench-cuda and a
// driver present, handOver has already given the command to the GPU build).
func checkDevice(d *string) error {
	switch *d {
	case "cpu":
		return nil
	case "auto":
		*d = "cpu"
		return nil
	case "cuda": // handOver refuses it first; kept for callers that skip it
		return fmt.Errorf("--device cuda: this qbench was built without GPU support and found no qbench-cuda beside it")
	}
	return fmt.Errorf("--device %q: want cpu, cuda or auto", *d)
}

// warmDevices has nothing to open in this build.
func warmDevices(device, spec string) {}

// quantizer is tensor.QuantizeNF4's: this build quantises on the CPU.
func quantizer(device string) (func(w []byte, shape []int, double bool) (*tensor.NF4, error), func(), error) {
	return nil, func() {}, nil
}

// newEngines is the CPU engine: this build has no GPU code (--devices is the
// GPU build's).
func newEngines(m *qwen.Model, device, devices string, batch int) ([]qwen.Engine, error) {
	return []qwen.Engine{qwen.NewRunner(m)}, nil
}

// newEngine returns the forward-pass engine for the device (batch matters to
// the GPU engine only).
func newEngine(m *qwen.Model, device string, batch int) (qwen.Engine, error) {
	return qwen.NewRunner(m), nil
}

func runBench(args []string) error {
	fs := newFlags("bench", "[--shape qwen2.5-0.5b|1.5b|3b|7b | --model DIR | --load --model DIR] [flags]", benchDoc)
	var mf modelFlags
	fs.StringVar(&mf.model, "model", "", "with --load: the model `DIR`")
	fs.StringVar(&mf.quant, "quant", "", "with --load: bf16, nf4 or nf4-dq at load")
	fs.StringVar(&mf.device, "device", "cpu", "with --load: cpu (this build has no GPU code)")
	load := fs.Bool("load", false, "time loading --model (cold and warm page cache) instead")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	if err := parse(fs, args); err != nil {
		return err
	}
	if !*load {
		return fmt.Errorf("bench measures the GPU engine: this qbench was built without GPU support (build with -tags cuda); --load times loading on the CPU")
	}
	return benchLoad(&mf, *asJSON)
}
