package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

const inspectDoc = `Describes a checkpoint without loading its weights: architecture,
parameter counts, bytes on disk, the quantisation of every projection, and
with --adapter the LoRA rank, alpha, scale and targets, checked against the
model's shapes. The first thing to run on a downloaded model.`

func runInspect(args []string) error {
	fs := newFlags("inspect", "--model DIR [--adapter DIR]...", inspectDoc)
	model := fs.String("model", "", "Hugging Face model `DIR`")
	var adapters multiFlag
	fs.Var(&adapters, "adapter", "PEFT adapter `DIR` (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" {
		return fmt.Errorf("--model is required")
	}
	return inspect(os.Stdout, *model, adapters)
}

func inspect(w io.Writer, dir string, adapters []string) error {
	cfg, err := qwen.LoadConfig(dir)
	if err != nil {
		return err
	}
	ck, err := tensor.OpenCheckpoint(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	fmt.Fprintf(w, "model        %s\n", dir)
	tied := "tied embeddings"
	if !cfg.TieEmbeddings {
		tied = "separate lm_head"
	}
	fmt.Fprintf(w, "architecture %s: %d layers, hidden %d, %d heads (%d KV), head_dim %d, intermediate %d, vocab %d, rope_theta %g, %s\n",
		cfg.ModelType, cfg.Layers, cfg.Hidden, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.Intermediate, cfg.Vocab, cfg.RopeTheta, tied)

	// Parameters and bytes; 4-bit weights count the elements of their original shape.
	var params, embed, bytes int64
	quant := map[string]map[string]int{} // projection → description → layers
	for _, name := range ck.Names() {
		t, _ := ck.Get(name)
		bytes += int64(len(t.Data))
		if strings.Contains(name, ".weight.") { // bitsandbytes side tensors
			continue
		}
		n := int64(t.Len())
		proj := projOf(name)
		if st, err := ck.Get(name + qwen.BnbStateSuffix); err == nil {
			var s struct {
				Shape        []int    `json:"shape"`
				Block        int      `json:"blocksize"`
				DType        string   `json:"dtype"`
				NestedOffset *float64 `json:"nested_offset"`
			}
			if err := json.Unmarshal(st.Data, &s); err != nil {
				return fmt.Errorf("%s: %s: bad JSON: %v", st.File, st.Name, err)
			}
			n = int64(tensor.NumElements(s.Shape))
			desc := fmt.Sprintf("NF4, blocksize %d, compute %s", s.Block, s.DType)
			if s.NestedOffset != nil {
				desc = "NF4 double-quant" + desc[3:]
			}
			addQuant(quant, proj, desc)
		} else if proj != "" && strings.HasSuffix(name, ".weight") {
			addQuant(quant, proj, t.DType.String())
		}
		params += n
		if strings.Contains(name, "embed_tokens") {
			embed += n
		}
	}
	fmt.Fprintf(w, "parameters   %s (embeddings %s, the rest %s)\n", human(params), human(embed), human(params-embed))
	fmt.Fprintf(w, "on disk      %s in %d file(s), %d tensors\n", humanBytes(bytes), len(ck.Files), len(ck.Names()))
	if q := cfg.Quantization; q != nil {
		fmt.Fprintf(w, "quantization %s: %s, double quant %v, compute %s, skip %v\n", q.Method, q.QuantType, q.DoubleQuant, q.ComputeDType, q.SkipModules)
	}
	projs := make([]string, 0, len(quant))
	for p := range quant {
		projs = append(projs, p)
	}
	sort.Strings(projs)
	for _, p := range projs {
		for desc, n := range quant[p] {
			fmt.Fprintf(w, "  %-16s %s ×%d layers\n", p, desc, n)
		}
	}
	for _, dir := range adapters {
		a, err := lora.Load(dir)
		if err != nil {
			return err
		}
		if err := checkAdapterFits(a, cfg); err != nil {
			return err
		}
		scale := 0.0
		for _, m := range a.Modules {
			scale = float64(m.Scale)
			break
		}
		rs := ""
		if a.Config.RSLoRA {
			rs = " (rsLoRA)"
		}
		fmt.Fprintf(w, "adapter      %s: LoRA r=%d alpha=%g scale %g%s, ranks %v, %d modules, targets %v, base %q — fits the model\n",
			a.Name, a.Config.R, a.Config.Alpha, scale, rs, a.Ranks(), len(a.Modules), a.Config.Targets(), a.Config.BaseModel)
	}
	return nil
}

// checkAdapterFits checks every adapted module exists in the model with the
// adapter's shapes.
func checkAdapterFits(a *lora.Adapter, cfg *qwen.Config) error {
	for name, m := range a.Modules {
		var layer int
		var proj string
		if _, err := fmt.Sscanf(name, "model.layers.%d.%s", &layer, &proj); err != nil || layer < 0 || layer >= cfg.Layers {
			return fmt.Errorf("%s: adapter module %s does not exist in a %d-layer model", a.File, name, cfg.Layers)
		}
		j := sort.SearchStrings(sortedProjs, proj)
		if j == len(sortedProjs) || sortedProjs[j] != proj {
			return fmt.Errorf("%s: adapter module %s is not a projection of the model", a.File, name)
		}
		for k, p := range qwen.ProjNames {
			if p == proj {
				if out, in := cfg.ProjShape(k); out != m.Out || in != m.In {
					return fmt.Errorf("%s: %s is [%d→%d] in the adapter, [%d→%d] in the model", a.File, name, m.In, m.Out, in, out)
				}
			}
		}
	}
	return nil
}

var sortedProjs = func() []string {
	s := append([]string(nil), qwen.ProjNames...)
	sort.Strings(s)
	return s
}()

func projOf(name string) string {
	for _, p := range qwen.ProjNames {
		if strings.HasSuffix(name, p+".weight") {
			return p
		}
	}
	return ""
}

func addQuant(m map[string]map[string]int, proj, desc string) {
	if m[proj] == nil {
		m[proj] = map[string]int{}
	}
	m[proj][desc]++
}

func human(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
