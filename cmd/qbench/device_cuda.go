//go:build cuda

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"gorgonia.org/cu"

	"github.com/qbench/qbench/kernels"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// A qbench built with -tags cuda needs the NVIDIA driver and a GPU to start:
// gorgonia.org/cu initialises the driver when the program starts.
func defaultDevice() string { return "cuda" }

// checkDevice accepts cpu, cuda and auto (this build: the GPU).
func checkDevice(d *string) error {
	switch *d {
	case "cpu", "cuda":
		return nil
	case "auto":
		*d = "cuda"
		return nil
	}
	return fmt.Errorf("--device %q: want cpu, cuda or auto", *d)
}

// handOver is for the build without GPU support (companion.go).
func handOver(string, []string) error { return nil }

var (
	devMu   sync.Mutex
	devices = map[int]*kernels.Device{}
)

// openDevice opens GPU ordinal once for the process.
func openDevice(ordinal int) (*kernels.Device, error) {
	devMu.Lock()
	defer devMu.Unlock()
	if d := devices[ordinal]; d != nil {
		return d, nil
	}
	d, err := kernels.Open(ordinal)
	if err == nil {
		devices[ordinal] = d
	}
	return d, err
}

// warmDevices opens the GPUs of --devices in the background (the driver's
// context and the kernels' modules: ~0.5 s a GPU), so that this overlaps the
// model's load; an error shows when the engine opens the GPU itself.
func warmDevices(device, spec string) {
	if device == "cpu" {
		return
	}
	ords, err := parseDevices(spec)
	if err != nil {
		return
	}
	for _, o := range ords {
		go openDevice(o)
	}
}

// quantizer is the GPU's NF4 quantiser for --quant at load with --device
// cuda (on GPU 0: its result is uploaded to every GPU used); done frees it.
func quantizer(device string) (q func(w []byte, shape []int, double bool) (*tensor.NF4, error), done func(), err error) {
	if device != "cuda" {
		return nil, func() {}, nil
	}
	d, err := openDevice(0)
	if err != nil {
		return nil, nil, err
	}
	gq := kernels.NewQuantizer(d)
	return gq.QuantizeBF16, gq.Close, nil
}

// parseDevices reads --devices: all (every visible GPU) or a list like 0,1.
func parseDevices(spec string) ([]int, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("--devices: counting GPUs: %v", err)
	}
	if spec == "" || spec == "all" {
		if n == 0 {
			return nil, fmt.Errorf("--devices: no GPU visible")
		}
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	var out []int
	seen := map[int]bool{}
	for _, f := range strings.Split(spec, ",") {
		i, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || i < 0 || i >= n || seen[i] {
			return nil, fmt.Errorf("--devices %q: want all or distinct GPU numbers 0 … %d", spec, n-1)
		}
		seen[i] = true
		out = append(out, i)
	}
	return out, nil
}

// newEngines returns one engine per GPU of --devices (the model uploaded to
// each, in parallel), or the CPU engine.
func newEngines(m *qwen.Model, device, spec string, batch int) ([]qwen.Engine, error) {
	if device == "cpu" {
		return []qwen.Engine{qwen.NewRunner(m)}, nil
	}
	ords, err := parseDevices(spec)
	if err != nil {
		return nil, err
	}
	engines := make([]qwen.Engine, len(ords))
	err = onEachGPU(ords, func(k int, d *kernels.Device) (err error) {
		engines[k], err = kernels.NewEngine(d, m, 8192, batch)
		return err
	})
	if err != nil {
		return nil, err
	}
	return engines, nil
}

// onEachGPU runs f(k, device ords[k]) for every k at once and returns the
// first error, naming its GPU.
func onEachGPU(ords []int, f func(k int, d *kernels.Device) error) error {
	errs := make([]error, len(ords))
	var wg sync.WaitGroup
	for k, o := range ords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := openDevice(o)
			if err == nil {
				err = f(k, d)
			}
			errs[k] = err
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return fmt.Errorf("GPU %d: %v", ords[k], err)
		}
	}
	return nil
}

// newEngine returns the forward-pass engine for the device; batch is how many
// sequences will decode together (it picks the GPU kernels).
func newEngine(m *qwen.Model, device string, batch int) (qwen.Engine, error) {
	if device == "cpu" {
		return qwen.NewRunner(m), nil
	}
	d, err := openDevice(0)
	if err != nil {
		return nil, err
	}
	return kernels.NewEngine(d, m, 8192, batch)
}

type benchRow struct {
	Batch         int                  `json:"batch"`
	PrefillTokS   float64              `json:"prefill_tok_s"`
	PrefillLong   float64              `json:"prefill_tok_s_one_2048,omitempty"` // one prompt of longPrompt tokens
	DecodeOn      float64              `json:"decode_tok_s_adapter_on"`
	DecodeOff     float64              `json:"decode_tok_s_adapter_off"`
	DecodeNoGraph float64              `json:"decode_tok_s_adapter_on_no_graphs"`
	DecodeSampled float64              `json:"decode_tok_s_adapter_on_sampled"` // Qwen2.5-Instruct's sampling settings
	Kernels       []kernels.KernelTime `json:"kernels_adapter_on"`
	PrefillKern   []kernels.KernelTime `json:"prefill_kernels_adapter_on,omitempty"`          // with --prefill-kernels
	Aggregate     float64              `json:"decode_tok_s_adapter_on_all_devices,omitempty"` // with --devices: every GPU decoding at once
}

// aggregateDecode decodes b sequences on each GPU of ords at the same time
// (an engine each, adapter on) and returns the summed tokens/s.
func aggregateDecode(m *qwen.Model, ords []int, b, promptLen, newTokens int) (float64, error) {
	rates := make([]float64, len(ords))
	err := onEachGPU(ords, func(k int, d *kernels.Device) error {
		eng, err := kernels.NewEngine(d, m, b*promptLen, b)
		if err != nil {
			return err
		}
		defer eng.Close()
		seqs, _, err := prefill(eng, b, promptLen, newTokens, 0)
		if err == nil {
			rates[k], err = eng.DecodeRate(seqs, newTokens, true)
			release(eng, seqs)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, r := range rates {
		sum += r
	}
	return sum, nil
}

func runBench(args []string) error {
	fs := newFlags("bench", "[--shape qwen2.5-0.5b|1.5b|3b|7b | --model DIR | --load --model DIR] [flags]", benchDoc)
	shape := fs.String("shape", "qwen2.5-3b", "synthetic model `NAME`: "+strings.Join(shapeNames(), ", "))
	model := fs.String("model", "", "benchmark a real model `DIR` instead")
	quant := fs.String("quant", "", "with --model: bf16, nf4 or nf4-dq at load")
	rank := fs.Int("adapter-rank", 16, "rank of the synthetic LoRA adapter on all seven projections")
	batches := fs.String("batch", "1,20", "comma-separated batch sizes")
	promptLen := fs.Int("prompt-len", 64, "prompt tokens per sequence")
	newTokens := fs.Int("new-tokens", 128, "decode steps timed")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	prefillKernels := fs.Bool("prefill-kernels", false, "also print the per-kernel breakdown of one prefill pass (batch × prompt-len tokens)")
	byKernel := fs.Bool("by-kernel", false, "split the breakdowns' rows by kernel name (an op's bytes and flops on its main kernel)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	devs := fs.String("devices", "0", "also decode on these GPUs at once and report the aggregate rate: `all` or a list like 0,1")
	load := fs.Bool("load", false, "time loading --model (cold and warm page cache, upload included) instead")
	device := fs.String("device", "cuda", "with --load: cuda or cpu")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *load {
		return benchLoad(&modelFlags{model: *model, quant: *quant, device: *device}, *asJSON)
	}
	ords, err := parseDevices(*devs)
	if err != nil {
		return err
	}
	var bs []int
	for _, f := range strings.Split(*batches, ",") {
		b, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || b <= 0 {
			return fmt.Errorf("--batch: %q is not a positive integer", f)
		}
		bs = append(bs, b)
	}
	d, err := openDevice(0)
	if err != nil {
		return err
	}
	bar := newBar(2+3*len(bs), "bench", *quiet)
	copyGBs, err := d.CopyBandwidth(1<<30, 20)
	if err != nil {
		return err
	}
	bar.Add(1)
	var m *qwen.Model
	name := *shape
	if *model != "" {
		name = *model
		if m, err = qwen.Load(*model, qwen.LoadOptions{Quant: *quant}); err != nil {
			return err
		}
	} else {
		cfg, ok := qwen.Shapes[*shape]
		if !ok {
			return fmt.Errorf("--shape %q: want one of %s", *shape, strings.Join(shapeNames(), ", "))
		}
		m = kernels.SyntheticModel(cfg, 1)
	}
	bar.Add(1)
	rows := make([]benchRow, len(bs))
	// Each batch size gets engines built for it (the kernels differ from 2 rows
	// up): first without LoRA at all, then with the adapter.
	for i, b := range bs {
		rows[i].Batch = b
		eng, err := kernels.NewEngine(d, m, benchRows(b, *promptLen), b)
		if err != nil {
			return err
		}
		seqs, _, err := prefill(eng, b, *promptLen, *newTokens, -1)
		if err == nil {
			rows[i].DecodeOff, err = eng.DecodeRate(seqs, *newTokens, true)
			release(eng, seqs)
		}
		eng.Close()
		if err != nil {
			return err
		}
		bar.Add(1)
	}
	kernels.AddSyntheticAdapter(m, *rank, 2)
	for i, b := range bs {
		eng, err := kernels.NewEngine(d, m, benchRows(b, *promptLen), b)
		if err != nil {
			return err
		}
		if err := benchAdapterOn(eng, &rows[i], b, *promptLen, *newTokens, copyGBs, *prefillKernels, *byKernel); err != nil {
			eng.Close()
			return err
		}
		eng.Close()
		bar.Add(2)
	}
	if len(ords) > 1 {
		for i, b := range bs {
			if rows[i].Aggregate, err = aggregateDecode(m, ords, b, *promptLen, *newTokens); err != nil {
				return err
			}
		}
	}
	bar.Finish()
	res := map[string]any{"device": d.Name, "model": name, "quantization": m.Quant, "adapter_rank": *rank,
		"copy_gb_s": copyGBs, "prompt_len": *promptLen, "new_tokens": *newTokens, "results": rows}
	if d.WGMMA {
		res["sm90a_build"] = d.SM90aBuild
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	build := ""
	if d.WGMMA {
		build = ", sm_90a kernels by " + d.SM90aBuild
	}
	fmt.Printf("device %s, model %s (%s), LoRA r%d on all projections, copy bandwidth %.0f GB/s%s\n\n", d.Name, name, m.Quant, *rank, copyGBs, build)
	fmt.Printf("%6s %12s %14s %16s %16s %16s %16s %10s\n", "batch", "prefill t/s", "prefill 1×2048", "decode t/s on", "decode t/s off", "on, no graphs", "on, sampled", "on vs off")
	for _, r := range rows {
		long := "—"
		if r.PrefillLong > 0 {
			long = fmt.Sprintf("%.0f", r.PrefillLong)
		}
		fmt.Printf("%6d %12.0f %14s %16.1f %16.1f %16.1f %16.1f %+9.1f%%\n", r.Batch, r.PrefillTokS, long, r.DecodeOn, r.DecodeOff, r.DecodeNoGraph, r.DecodeSampled, 100*(r.DecodeOn/r.DecodeOff-1))
	}
	is := instructSampling
	fmt.Printf("(on, sampled: temperature %g, top-k %d, top-p %g, repetition penalty %g as Qwen2.5-Instruct's generation_config.json;\n penalty and top-k on the device, the draw from the candidates on the host)\n",
		is.Temperature, is.TopK, is.TopP, is.RepetitionPenalty)
	if len(ords) > 1 {
		fmt.Printf("\nall %d GPUs (%v) decoding at once, adapter on:\n", len(ords), ords)
		for _, r := range rows {
			fmt.Printf("%6d %16.1f tok/s (%.2f× one GPU)\n", r.Batch, r.Aggregate, r.Aggregate/r.DecodeOn)
		}
	}
	for _, r := range rows {
		fmt.Printf("\nper-kernel breakdown of one decode step, batch %d, adapter on (each kernel ×10 in a graph, event-timed):\n", r.Batch)
		printKernels(r.Kernels, "µs/step", "bytes/step")
	}
	for _, r := range rows {
		if r.PrefillKern == nil {
			continue
		}
		fmt.Printf("\nper-kernel breakdown of one prefill pass, %d × %d tokens, adapter on (each kernel ×10 in a graph, event-timed):\n", r.Batch, *promptLen)
		printKernels(r.PrefillKern, "µs/pass", "bytes/pass")
	}
	return nil
}

// printKernels prints a per-kernel table and its total.
func printKernels(ks []kernels.KernelTime, per, bytes string) {
	fmt.Printf("%-24s %6s %10s %12s %9s %7s %8s\n", "kernel", "calls", per, bytes, "GB/s", "% copy", "TFLOP/s")
	var total float64
	for _, k := range ks {
		total += k.Micros
		tf := ""
		if k.Flops > 0 {
			tf = fmt.Sprintf("%.1f", k.TFLOPs)
		}
		fmt.Printf("%-24s %6d %10.1f %12d %9.0f %6.1f%% %8s\n", k.Label, k.Calls, k.Micros, k.Bytes, k.GBs, k.PctCopy, tf)
	}
	fmt.Printf("%-24s %6s %10.1f\n", "total kernel time", "", total)
}

// benchAdapterOn measures prefill, the per-kernel profile and decode with
// and without graphs, all rows on adapter 0.
func benchAdapterOn(eng *kernels.Engine, row *benchRow, b, promptLen, newTokens int, copyGBs float64, prefillKernels, byKernel bool) error {
	seqs, rate, err := prefill(eng, b, promptLen, newTokens, 0)
	if err != nil {
		return err
	}
	row.PrefillTokS = rate
	if long, rate, err := prefill(eng, 1, longPrompt, 8, 0); err != nil { // reported, not fatal: the other figures stand
		fmt.Fprintf(os.Stderr, "qbench: bench: the %d-token prefill at batch %d: %v\n", longPrompt, b, err)
	} else {
		row.PrefillLong = rate
		release(eng, long)
	}
	if prefillKernels {
		if row.PrefillKern, err = profilePrefill(eng, b, promptLen, copyGBs, byKernel); err != nil {
			return err
		}
	}
	if row.Kernels, err = eng.ProfileStep(seqs, firstTokens(b), copyGBs, byKernel); err == nil {
		row.DecodeOn, err = eng.DecodeRate(seqs, newTokens, true)
	}
	release(eng, seqs)
	if err != nil {
		return err
	}
	if seqs, _, err = prefill(eng, b, promptLen, newTokens, 0); err != nil {
		return err
	}
	row.DecodeNoGraph, err = eng.DecodeRate(seqs, newTokens, false) // as many steps as the other columns, from the same position: comparable
	release(eng, seqs)
	if err != nil {
		return err
	}
	if _, err := sampledRate(eng, b, promptLen, 4); err != nil { // warm-up: the graph's capture
		return err
	}
	row.DecodeSampled, err = sampledRate(eng, b, promptLen, newTokens)
	return err
}

// longPrompt is the prompt of bench's second prefill figure (issue 12: one
// prompt of 2,048 tokens).
const longPrompt = 2048

// benchRows is the rows a bench engine for batch b holds: the batch's
// prompts, or the long prompt.
func benchRows(b, promptLen int) int { return max(b*promptLen, longPrompt) }

// profilePrefill is the per-kernel profile of the prefill pass of b new
// sequences of promptLen tokens each (adapter 0).
func profilePrefill(eng *kernels.Engine, b, promptLen int, copyGBs float64, byKernel bool) ([]kernels.KernelTime, error) {
	seqs, toks := make([]*qwen.Seq, b), make([][]int, b)
	defer func() { release(eng, seqs) }()
	for i := range seqs {
		s, err := eng.NewSeq(promptLen+8, 0)
		if err != nil {
			return nil, err
		}
		seqs[i], toks[i] = s, make([]int, promptLen)
		for j := range toks[i] {
			toks[i][j] = benchToken(i, j, eng.Model().Config.Vocab)
		}
	}
	return eng.ProfileStep(seqs, toks, copyGBs, byKernel)
}

// instructSampling is Qwen2.5-3B-Instruct's generation_config.json.
var instructSampling = qwen.Sampling{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05}

// sampledRate decodes newTokens for b sequences on adapter 0 as qwen.Generate
// does with instructSampling (each row its own seed), the prompt less its
// last token already in the caches, and returns the tokens/s.
func sampledRate(eng *kernels.Engine, b, promptLen, newTokens int) (float64, error) {
	seqs, _, err := prefill(eng, b, promptLen-1, newTokens+1, 0)
	if err != nil {
		return 0, err
	}
	defer release(eng, seqs)
	prompts, samplers := make([][]int, b), make([]*qwen.Sampler, b)
	for i := range prompts {
		prompts[i] = make([]int, promptLen)
		for j := range prompts[i] {
			prompts[i][j] = benchToken(i, j, eng.Model().Config.Vocab)
		}
		s := instructSampling
		s.Seed = uint64(i)
		samplers[i] = qwen.NewSampler(s)
	}
	start := time.Now()
	if _, err := qwen.GenerateFrom(eng, seqs, prompts, samplers, qwen.GenerateOptions{MaxNewTokens: newTokens}); err != nil {
		return 0, err
	}
	return float64(b*newTokens) / time.Since(start).Seconds(), nil
}

func shapeNames() []string {
	var n []string
	for k := range qwen.Shapes {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func firstTokens(b int) [][]int {
	t := make([][]int, b)
	for i := range t {
		t[i] = []int{1000 + i}
	}
	return t
}

// benchToken is token j of bench's prompt i.
func benchToken(i, j, vocab int) int { return (i*7919 + j*104729) % vocab }

// prefill starts b sequences with a prompt of n tokens each in one pass and
// returns them with the prefill rate in tokens/s.
func prefill(e *kernels.Engine, b, n, room, adapter int) ([]*qwen.Seq, float64, error) {
	seqs := make([]*qwen.Seq, b)
	toks := make([][]int, b)
	for i := range seqs {
		s, err := e.NewSeq(n+room+8, adapter)
		if err != nil {
			return nil, 0, err
		}
		seqs[i] = s
		toks[i] = make([]int, n)
		for j := range toks[i] {
			toks[i][j] = benchToken(i, j, e.Model().Config.Vocab)
		}
	}
	start := time.Now()
	if _, err := e.ForwardArgmax(seqs, toks); err != nil {
		return nil, 0, err
	}
	return seqs, float64(b*n) / time.Since(start).Seconds(), nil
}

func release(e *kernels.Engine, seqs []*qwen.Seq) {
	for _, s := range seqs {
		e.Release(s)
	}
}
