package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/qbench/qbench/tensor"
)

// Adapter is a loaded PEFT LoRA adapter.
type Adapter struct {
	Name    string             // the directory's base name
	Dir     string             // the adapter directory
	File    string             // adapter_model.safetensors path
	Config  Config             // adapter_config.json
	Modules map[string]*Module // by base-model module name, e.g. "model.layers.0.self_attn.q_proj"
}

// Config is the part of adapter_config.json that changes the math, plus the
// options qbench refuses rather than silently ignores.
type Config struct {
	PeftType      string             `json:"peft_type"`
	R             int                `json:"r"`
	Alpha         float64            `json:"lora_alpha"`
	RSLoRA        bool               `json:"use_rslora"`
	RankPattern   map[string]int     `json:"rank_pattern"`
	AlphaPattern  map[string]float64 `json:"alpha_pattern"`
	TargetModules json.RawMessage    `json:"target_modules"`
	BaseModel     string             `json:"base_model_name_or_path"`

	UseDoRA          bool            `json:"use_dora"`
	Bias             string          `json:"bias"`
	LoRABias         bool            `json:"lora_bias"`
	ModulesToSave    []string        `json:"modules_to_save"`
	FanInFanOut      bool            `json:"fan_in_fan_out"`
	LayerReplication json.RawMessage `json:"layer_replication"`
	UseQALoRA        bool            `json:"use_qalora"`
}

// Targets is target_modules as a list (a regex string is returned as one entry).
func (c *Config) Targets() []string {
	var list []string
	if json.Unmarshal(c.TargetModules, &list) == nil {
		sort.Strings(list)
		return list
	}
	var one string
	if json.Unmarshal(c.TargetModules, &one) == nil && one != "" {
		return []string{one}
	}
	return nil
}

// checkSupported refuses options whose math qbench does not implement.
func (c *Config) checkSupported() error {
	switch {
	case c.PeftType != "LORA":
		return fmt.Errorf("peft_type %q is not supported (want LORA)", c.PeftType)
	case c.UseDoRA:
		return fmt.Errorf("use_dora: DoRA adapters are not supported")
	case c.Bias != "" && c.Bias != "none":
		return fmt.Errorf("bias %q: adapters that train biases are not supported", c.Bias)
	case c.LoRABias:
		return fmt.Errorf("lora_bias: adapters with a bias on lora_B are not supported")
	case len(c.ModulesToSave) > 0:
		return fmt.Errorf("modules_to_save %v: fully trained extra modules are not supported", c.ModulesToSave)
	case c.FanInFanOut:
		return fmt.Errorf("fan_in_fan_out is not supported (Qwen2 uses nn.Linear)")
	case len(c.LayerReplication) > 0 && string(c.LayerReplication) != "null":
		return fmt.Errorf("layer_replication is not supported")
	case c.UseQALoRA:
		return fmt.Errorf("use_qalora is not supported")
	case c.R <= 0:
		return fmt.Errorf("r = %d, must be positive", c.R)
	}
	return nil
}

// patternValue finds the rank_pattern/alpha_pattern entry for a module as PEFT
// does: the pattern must match the whole name or a dot-separated suffix of it.
func patternValue[V any](patterns map[string]V, module string) (V, bool, error) {
	keys := make([]string, 0, len(patterns))
	for k := range patterns {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var zero V
	for _, k := range keys {
		re, err := regexp.Compile(`^(.*\.)?(` + k + `)$`)
		if err != nil {
			return zero, false, fmt.Errorf("pattern %q: %v", k, err)
		}
		if re.MatchString(module) {
			return patterns[k], true, nil
		}
	}
	return zero, false, nil
}

// tensorName matches base_model.model.<module>.lora_{A,B}[.default].weight.
var tensorName = regexp.MustCompile(`^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$`)

// Load reads a PEFT adapter directory.
func Load(dir string) (*Adapter, error) {
	cfgPath := filepath.Join(dir, "adapter_config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", dir, err)
	}
	a := &Adapter{Name: filepath.Base(filepath.Clean(dir)), Dir: dir, File: filepath.Join(dir, "adapter_model.safetensors"), Modules: map[string]*Module{}}
	if err := json.Unmarshal(b, &a.Config); err != nil {
		return nil, fmt.Errorf("%s: bad JSON: %v", cfgPath, err)
	}
	if err := a.Config.checkSupported(); err != nil {
		return nil, fmt.Errorf("%s: %v", cfgPath, err)
	}
	f, err := tensor.Open(a.File)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	type pair struct{ A, B *tensor.Tensor }
	pairs := map[string]*pair{}
	for _, name := range f.Names() {
		m := tensorName.FindStringSubmatch(name)
		if m == nil {
			return nil, fmt.Errorf("%s: tensor %s is not a LoRA A/B weight (only lora_A/lora_B of linear layers are supported)", a.File, name)
		}
		if !strings.HasPrefix(m[1], "model.layers.") {
			return nil, fmt.Errorf("%s: tensor %s adapts %s; only decoder-layer projections are supported", a.File, name, m[1])
		}
		p := pairs[m[1]]
		if p == nil {
			p = &pair{}
			pairs[m[1]] = p
		}
		t := f.Tensors[name]
		switch t.DType {
		case tensor.F32, tensor.BF16, tensor.F16:
		default:
			return nil, fmt.Errorf("%s: tensor %s has dtype %v, want F32, BF16 or F16", a.File, name, t.DType)
		}
		if len(t.Shape) != 2 {
			return nil, fmt.Errorf("%s: tensor %s has shape %v, want 2 dimensions", a.File, name, t.Shape)
		}
		if m[2] == "A" {
			p.A = t
		} else {
			p.B = t
		}
	}
	if len(pairs) == 0 {
		return nil, fmt.Errorf("%s: no LoRA weights", a.File)
	}
	for module, p := range pairs {
		if p.A == nil || p.B == nil {
			return nil, fmt.Errorf("%s: %s has only one of lora_A and lora_B", a.File, module)
		}
		r, in, out := p.A.Shape[0], p.A.Shape[1], p.B.Shape[0]
		if p.B.Shape[1] != r {
			return nil, fmt.Errorf("%s: %s: lora_A is %v but lora_B is %v (ranks differ)", a.File, module, p.A.Shape, p.B.Shape)
		}
		wantR, alpha := a.Config.R, a.Config.Alpha
		if v, ok, err := patternValue(a.Config.RankPattern, module); err != nil {
			return nil, fmt.Errorf("%s: rank_pattern: %v", cfgPath, err)
		} else if ok {
			wantR = v
		}
		if v, ok, err := patternValue(a.Config.AlphaPattern, module); err != nil {
			return nil, fmt.Errorf("%s: alpha_pattern: %v", cfgPath, err)
		} else if ok {
			alpha = v
		}
		if r != wantR {
			return nil, fmt.Errorf("%s: %s has rank %d, adapter_config.json says %d", a.File, module, r, wantR)
		}
		if r <= 0 {
			return nil, fmt.Errorf("%s: %s has rank %d; a LoRA module needs rank ≥ 1", cfgPath, module, r)
		}
		scale := alpha / float64(r)
		if a.Config.RSLoRA {
			scale = alpha / math.Sqrt(float64(r))
		}
		// The scale multiplies every LoRA term: a huge or non-finite one turns
		// every output into garbage (PEFT itself would produce inf or NaN).
		if math.IsNaN(scale) || math.IsInf(scale, 0) || math.Abs(scale) > maxScale {
			return nil, fmt.Errorf("%s: %s: lora_alpha %g over rank %d gives scale %g; want a finite scale of at most %g", cfgPath, module, alpha, r, scale, float64(maxScale))
		}
		m := &Module{Rank: r, In: in, Out: out, A: p.A.F32(), B: p.B.F32(), Scale: float32(scale)}
		if err := finite(m.A); err != nil {
			return nil, fmt.Errorf("%s: %s lora_A: %v", a.File, module, err)
		}
		if err := finite(m.B); err != nil {
			return nil, fmt.Errorf("%s: %s lora_B: %v", a.File, module, err)
		}
		a.Modules[module] = m
	}
	return a, nil
}

// maxScale bounds lora_alpha/r: real adapters use 0.5 … 16 (alpha 2r with
// rsLoRA at rank 256 is 32); beyond 1e4 the adapter is a typo or an attack.
const maxScale = 1e4

// finite reports the first NaN or infinite value of v, if any.
func finite(v []float32) error {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("value %d is %v", i, x)
		}
	}
	return nil
}

// Ranks returns the distinct ranks of the adapter's modules, ascending.
func (a *Adapter) Ranks() []int {
	seen := map[int]bool{}
	var rs []int
	for _, m := range a.Modules {
		if !seen[m.Rank] {
			seen[m.Rank] = true
			rs = append(rs, m.Rank)
		}
	}
	sort.Ints(rs)
	return rs
}
