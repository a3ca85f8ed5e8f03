package qwen

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

// Config is the architecture from a Hugging Face config.json.
type Config struct {
	ModelType     string
	Hidden        int     // hidden_size
	Intermediate  int     // intermediate_size
	Layers        int     // num_hidden_layers
	Heads         int     // num_attention_heads
	KVHeads       int     // num_key_value_heads
	HeadDim       int     // head_dim, or hidden_size/num_attention_heads
	Vocab         int     // vocab_size
	RMSEps        float32 // rms_norm_eps
	RopeTheta     float64 // rope_theta or rope_parameters.rope_theta
	MaxPositions  int     // max_position_embeddings
	TieEmbeddings bool    // tie_word_embeddings
	TorchDType    string  // torch_dtype or dtype, informational
	Quantization  *QuantConfig
	EosIDs        []int // eos_token_id (int or list), the fallback when generation_config.json has none
}

// QuantConfig is the bitsandbytes quantization_config of a pre-quantised checkpoint.
type QuantConfig struct {
	Method       string   `json:"quant_method"`
	LoadIn4Bit   bool     `json:"load_in_4bit"`
	LoadIn8Bit   bool     `json:"load_in_8bit"`
	QuantType    string   `json:"bnb_4bit_quant_type"`
	DoubleQuant  bool     `json:"bnb_4bit_use_double_quant"`
	ComputeDType string   `json:"bnb_4bit_compute_dtype"`
	QuantStorage string   `json:"bnb_4bit_quant_storage"`
	SkipModules  []string `json:"llm_int8_skip_modules"`
}

type rawConfig struct {
	ModelType    *string  `json:"model_type"`
	Hidden       *int     `json:"hidden_size"`
	Intermediate *int     `json:"intermediate_size"`
	Layers       *int     `json:"num_hidden_layers"`
	Heads        *int     `json:"num_attention_heads"`
	KVHeads      *int     `json:"num_key_value_heads"`
	HeadDim      *int     `json:"head_dim"`
	Vocab        *int     `json:"vocab_size"`
	RMSEps       *float64 `json:"rms_norm_eps"`
	RopeTheta    *float64 `json:"rope_theta"`
	RopeParams   *struct {
		RopeTheta *float64 `json:"rope_theta"`
		RopeType  string   `json:"rope_type"`
	} `json:"rope_parameters"`
	RopeScaling      json.RawMessage `json:"rope_scaling"`
	MaxPositions     *int            `json:"max_position_embeddings"`
	Tie              *bool           `json:"tie_word_embeddings"`
	TorchDType       string          `json:"torch_dtype"`
	DType            string          `json:"dtype"`
	HiddenAct        string          `json:"hidden_act"`
	UseSlidingWindow bool            `json:"use_sliding_window"`
	Quantization     *QuantConfig    `json:"quantization_config"`
	Eos              json.RawMessage `json:"eos_token_id"`
}

// LoadConfig reads and checks dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, b)
}

// ParseConfig parses config.json bytes; path names the file in errors.
func ParseConfig(path string, b []byte) (*Config, error) {
	var r rawConfig
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: bad JSON: %v", path, err)
	}
	missing := func(field string) error { return fmt.Errorf("%s: missing required field %q", path, field) }
	if r.ModelType == nil {
		return nil, missing("model_type")
	}
	if *r.ModelType != "qwen2" {
		return nil, fmt.Errorf("%s: model_type %q is not supported (want qwen2)", path, *r.ModelType)
	}
	ints := []struct {
		name string
		p    *int
	}{{"hidden_size", r.Hidden}, {"intermediate_size", r.Intermediate}, {"num_hidden_layers", r.Layers},
		{"num_attention_heads", r.Heads}, {"vocab_size", r.Vocab}}
	for _, f := range ints {
		if f.p == nil {
			return nil, missing(f.name)
		}
		if *f.p <= 0 {
			return nil, fmt.Errorf("%s: %s = %d, must be positive", path, f.name, *f.p)
		}
	}
	if r.RMSEps == nil {
		return nil, missing("rms_norm_eps")
	}
	c := &Config{
		ModelType: *r.ModelType, Hidden: *r.Hidden, Intermediate: *r.Intermediate, Layers: *r.Layers,
		Heads: *r.Heads, KVHeads: *r.Heads, Vocab: *r.Vocab, RMSEps: float32(*r.RMSEps),
		MaxPositions: 32768, TieEmbeddings: true, TorchDType: r.TorchDType, Quantization: r.Quantization,
	}
	if c.TorchDType == "" {
		c.TorchDType = r.DType
	}
	if r.KVHeads != nil {
		c.KVHeads = *r.KVHeads
	}
	if c.KVHeads <= 0 || c.Heads%c.KVHeads != 0 {
		return nil, fmt.Errorf("%s: num_key_value_heads %d does not divide num_attention_heads %d", path, c.KVHeads, c.Heads)
	}
	if r.HeadDim != nil {
		c.HeadDim = *r.HeadDim
	} else if c.Hidden%c.Heads == 0 {
		c.HeadDim = c.Hidden / c.Heads
	}
	if c.HeadDim <= 0 || c.HeadDim%2 != 0 {
		return nil, fmt.Errorf("%s: head_dim %d must be positive and even", path, c.HeadDim)
	}
	switch {
	case r.RopeTheta != nil:
		c.RopeTheta = *r.RopeTheta
	case r.RopeParams != nil && r.RopeParams.RopeTheta != nil:
		if t := r.RopeParams.RopeType; t != "" && t != "default" {
			return nil, fmt.Errorf("%s: rope_type %q is not supported (want default)", path, t)
		}
		c.RopeTheta = *r.RopeParams.RopeTheta
	default:
		return nil, missing("rope_theta (or rope_parameters.rope_theta)")
	}
	if len(r.RopeScaling) > 0 && string(r.RopeScaling) != "null" {
		return nil, fmt.Errorf("%s: rope_scaling is not supported", path)
	}
	if r.HiddenAct != "" && r.HiddenAct != "silu" {
		return nil, fmt.Errorf("%s: hidden_act %q is not supported (want silu)", path, r.HiddenAct)
	}
	if r.UseSlidingWindow {
		return nil, fmt.Errorf("%s: use_sliding_window is not supported", path)
	}
	if r.MaxPositions != nil {
		c.MaxPositions = *r.MaxPositions
	}
	if err := c.checkRanges(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if r.Tie != nil {
		c.TieEmbeddings = *r.Tie
	}
	if len(r.Eos) > 0 {
		ids, err := intOrList(r.Eos)
		if err != nil {
			return nil, fmt.Errorf("%s: eos_token_id: %v", path, err)
		}
		c.EosIDs = ids
	}
	return c, nil
}

// Limits on a config's sizes: far above every Qwen2.5 model (72B: 80 layers,
// hidden 8192, intermediate 29568, 64 heads, vocab 152064, 131072
// positions), low enough that a typo cannot ask for terabytes before the
// checkpoint is even read.
const (
	maxLayers    = 1024
	maxWidth     = 1 << 17 // hidden, intermediate, heads × head_dim
	maxHeads     = 1024
	maxVocab     = 1 << 22
	maxPositions = 1 << 22
)

// checkRanges refuses values that would run but compute garbage (a
// non-positive or non-finite rope_theta or rms_norm_eps, an eps that
// swamps the mean square) or ask for absurd memory.
func (c *Config) checkRanges() error {
	if !(c.RopeTheta > 1) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("rope_theta = %g, want a finite number > 1", c.RopeTheta)
	}
	if eps := float64(c.RMSEps); !(eps > 0 && eps <= 1e-2) {
		return fmt.Errorf("rms_norm_eps = %g, want a number in (0, 0.01]", eps)
	}
	if c.MaxPositions <= 0 || c.MaxPositions > maxPositions {
		return fmt.Errorf("max_position_embeddings = %d, want 1 … %d", c.MaxPositions, maxPositions)
	}
	for _, f := range []struct {
		name   string
		v, max int
	}{{"num_hidden_layers", c.Layers, maxLayers}, {"hidden_size", c.Hidden, maxWidth}, {"intermediate_size", c.Intermediate, maxWidth},
		{"num_attention_heads", c.Heads, maxHeads}, {"vocab_size", c.Vocab, maxVocab}, {"num_attention_heads × head_dim", c.Heads * c.HeadDim, maxWidth}} {
		if f.v > f.max {
			return fmt.Errorf("%s = %d, more than any model this runs (at most %d)", f.name, f.v, f.max)
		}
	}
	return nil
}

// GenerationConfig holds generation_config.json's stop ids and sampling defaults.
type GenerationConfig struct {
	EosIDs            []int
	DoSample          bool
	Temperature       float32
	TopK              int
	TopP              float32
	RepetitionPenalty float32
}

// LoadGenerationConfig reads dir/generation_config.json; a missing file gives
// defaults (greedy, no penalty) with eos taken from fallbackEos.
func LoadGenerationConfig(dir string, fallbackEos []int) (*GenerationConfig, error) {
	g := &GenerationConfig{Temperature: 1, TopP: 1, RepetitionPenalty: 1, EosIDs: fallbackEos}
	path := filepath.Join(dir, "generation_config.json")
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return g, nil
	} else if err != nil {
		return nil, err
	}
	var r struct {
		Eos         json.RawMessage `json:"eos_token_id"`
		DoSample    *bool           `json:"do_sample"`
		Temperature *float32        `json:"temperature"`
		TopK        *int            `json:"top_k"`
		TopP        *float32        `json:"top_p"`
		RepPenalty  *float32        `json:"repetition_penalty"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: bad JSON: %v", path, err)
	}
	if len(r.Eos) > 0 {
		ids, err := intOrList(r.Eos)
		if err != nil {
			return nil, fmt.Errorf("%s: eos_token_id: %v", path, err)
		}
		g.EosIDs = ids
	}
	if r.DoSample != nil {
		g.DoSample = *r.DoSample
	}
	if r.Temperature != nil {
		g.Temperature = *r.Temperature
	}
	if r.TopK != nil {
		g.TopK = *r.TopK
	}
	if r.TopP != nil {
		g.TopP = *r.TopP
	}
	if r.RepPenalty != nil {
		g.RepetitionPenalty = *r.RepPenalty
	}
	if err := g.check(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return g, nil
}

// check refuses sampling settings that would silently misbehave.
func (g *GenerationConfig) check() error {
	finite := func(f float32) bool { return !math.IsNaN(float64(f)) && !math.IsInf(float64(f), 0) }
	switch {
	case !finite(g.Temperature) || g.Temperature < 0:
		return fmt.Errorf("temperature = %g, want a finite number ≥ 0", g.Temperature)
	case g.TopK < 0:
		return fmt.Errorf("top_k = %d, want ≥ 0", g.TopK)
	case !finite(g.TopP) || g.TopP < 0 || g.TopP > 1:
		return fmt.Errorf("top_p = %g, want a number in [0, 1]", g.TopP)
	case !finite(g.RepetitionPenalty) || g.RepetitionPenalty <= 0:
		return fmt.Errorf("repetition_penalty = %g, want a finite number > 0", g.RepetitionPenalty)
	}
	return nil
}

func intOrList(m json.RawMessage) ([]int, error) {
	if string(m) == "null" {
		return nil, nil
	}
	var one int
	if json.Unmarshal(m, &one) == nil {
		return []int{one}, nil
	}
	var many []int
	if err := json.Unmarshal(m, &many); err != nil {
		return nil, fmt.Errorf("want an integer or a list of integers")
	}
	return many, nil
}
