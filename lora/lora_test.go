package lora

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qbench/qbench/tensor"
)

const fixture = "../testdata/tiny-qwen2-lora"

func TestLoadFixture(t *testing.T) {
	a, err := Load(fixture)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Modules) != 21 {
		t.Errorf("%d modules, want 21 (7 projections × 3 layers)", len(a.Modules))
	}
	m := a.Modules["model.layers.1.mlp.down_proj"]
	if m == nil || m.Rank != 8 || m.In != 128 || m.Out != 32 || m.Scale != 2 {
		t.Errorf("down_proj = %+v", m)
	}
}

// writeAdapter writes an adapter directory with the fixture's weights and a
// modified config.
func writeAdapter(t *testing.T, edit func(map[string]any)) string {
	dir := t.TempDir()
	b, _ := os.ReadFile(fixture + "/adapter_config.json")
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	edit(cfg)
	b, _ = json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), b, 0o644)
	w, _ := os.ReadFile(fixture + "/adapter_model.safetensors")
	os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), w, 0o644)
	return dir
}

func TestScalingOptions(t *testing.T) {
	rs, err := Load(writeAdapter(t, func(c map[string]any) { c["use_rslora"] = true }))
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Modules["model.layers.0.self_attn.q_proj"].Scale; math.Abs(float64(got)-16/math.Sqrt(8)) > 1e-6 {
		t.Errorf("rsLoRA scale = %v, want 16/√8", got)
	}
	ap, err := Load(writeAdapter(t, func(c map[string]any) { c["alpha_pattern"] = map[string]any{"down_proj": 4} }))
	if err != nil {
		t.Fatal(err)
	}
	if ap.Modules["model.layers.2.mlp.down_proj"].Scale != 0.5 || ap.Modules["model.layers.2.mlp.up_proj"].Scale != 2 {
		t.Error("alpha_pattern not applied per module")
	}
	if _, err := Load(writeAdapter(t, func(c map[string]any) { c["rank_pattern"] = map[string]any{"q_proj": 4} })); err == nil ||
		!strings.Contains(err.Error(), "has rank 8, adapter_config.json says 4") {
		t.Errorf("rank_pattern mismatch: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		edit func(map[string]any)
		want string
	}{
		{func(c map[string]any) { c["use_dora"] = true }, "DoRA"},
		{func(c map[string]any) { c["bias"] = "all" }, "train biases"},
		{func(c map[string]any) { c["modules_to_save"] = []string{"lm_head"} }, "modules_to_save"},
		{func(c map[string]any) { c["peft_type"] = "IA3" }, "peft_type"},
		{func(c map[string]any) { c["lora_alpha"] = 1e308 }, "gives scale"},
		{func(c map[string]any) { c["alpha_pattern"] = map[string]any{"q_proj": -1e300} }, "gives scale"},
	}
	for _, c := range cases {
		dir := writeAdapter(t, c.edit)
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "adapter_config.json") {
			t.Errorf("err = %v, want one naming adapter_config.json and %q", err, c.want)
		}
	}
	// A lone lora_A.
	dir := t.TempDir()
	b, _ := os.ReadFile(fixture + "/adapter_config.json")
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), b, 0o644)
	tensor.Write(filepath.Join(dir, "adapter_model.safetensors"), []*tensor.Tensor{{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
		DType: tensor.F32, Shape: []int{8, 32}, Data: make([]byte, 8*32*4)}}, nil)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "only one of lora_A and lora_B") {
		t.Errorf("lone A: %v", err)
	}
	// A rank-0 module through rank_pattern, and a NaN in lora_B.
	b, _ = json.Marshal(map[string]any{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": []string{"q_proj"}, "rank_pattern": map[string]any{"q_proj": 0}})
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), b, 0o644)
	tensor.Write(filepath.Join(dir, "adapter_model.safetensors"), []*tensor.Tensor{
		{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType: tensor.F32, Shape: []int{0, 32}, Data: []byte{}},
		{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType: tensor.F32, Shape: []int{32, 0}, Data: []byte{}}}, nil)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "rank 0") {
		t.Errorf("rank 0: %v", err)
	}
	b, _ = json.Marshal(map[string]any{"peft_type": "LORA", "r": 1, "lora_alpha": 16, "target_modules": []string{"q_proj"}})
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), b, 0o644)
	nan := tensor.F32Bytes([]float32{1, float32(math.NaN())})
	tensor.Write(filepath.Join(dir, "adapter_model.safetensors"), []*tensor.Tensor{
		{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType: tensor.F32, Shape: []int{1, 2}, Data: tensor.F32Bytes([]float32{1, 2})},
		{Name: "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType: tensor.F32, Shape: []int{2, 1}, Data: nan}}, nil)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "lora_B: value 1 is NaN") {
		t.Errorf("NaN lora_B: %v", err)
	}
}

// TestApply checks y += scale·B(A·x) against a hand-computed case.
func TestApply(t *testing.T) {
	m := &Module{Rank: 2, In: 3, Out: 2, Scale: 0.5,
		A: []float32{1, 0, 2, 0, 1, -1}, // A·x for x=(1,2,3): (7, -1)
		B: []float32{1, 1, 2, -1}}       // B·(7,-1) = (6, 15)
	y := []float32{10, 20}
	m.Apply(y, []float32{1, 2, 3}, make([]float32, 2))
	if y[0] != 13 || y[1] != 27.5 {
		t.Errorf("y = %v, want [13 27.5]", y)
	}
}

func FuzzLoadAdapter(f *testing.F) {
	b, _ := os.ReadFile(fixture + "/adapter_config.json")
	f.Add(b)
	f.Add([]byte(`{"peft_type":"LORA","r":8,"lora_alpha":16,"rank_pattern":{"(":2}}`))
	w, _ := os.ReadFile(fixture + "/adapter_model.safetensors")
	f.Fuzz(func(t *testing.T, cfg []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "adapter_config.json"), cfg, 0o644)
		os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), w, 0o644)
		a, err := Load(dir)
		if err != nil {
			return
		}
		for name, m := range a.Modules {
			if m.Rank <= 0 || len(m.A) != m.Rank*m.In || len(m.B) != m.Out*m.Rank || math.IsNaN(float64(m.Scale)) {
				t.Fatalf("%s: inconsistent module accepted", name)
			}
		}
	})
}
