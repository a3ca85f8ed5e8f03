package qwen

import (
	"encoding/binary"
	"math"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/qbench/qbench/tensor"
)

func TestConfigLayouts(t *testing.T) {
	classic, err := LoadConfig(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	newer, err := LoadConfig(bnbDir) // rope_parameters layout, quantization_config
	if err != nil {
		t.Fatal(err)
	}
	if classic.RopeTheta != 1e6 || newer.RopeTheta != 1e6 || classic.HeadDim != 16 || classic.KVHeads != 1 {
		t.Errorf("classic %+v, newer %+v", classic, newer)
	}
	if newer.Quantization == nil || !newer.Quantization.DoubleQuant || newer.Quantization.QuantType != "nf4" {
		t.Errorf("quantization_config = %+v", newer.Quantization)
	}
	// head_dim derived from hidden_size / heads when absent.
	c, err := ParseConfig("c.json", []byte(`{"model_type":"qwen2","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
		"num_attention_heads":4,"vocab_size":10,"rms_norm_eps":1e-6,"rope_theta":10000,"eos_token_id":[1,2]}`))
	if err != nil || c.HeadDim != 16 || c.KVHeads != 4 || len(c.EosIDs) != 2 {
		t.Errorf("derived config %+v, %v", c, err)
	}
}

func TestConfigErrors(t *testing.T) {
	base, _ := os.ReadFile(tinyDir + "/config.json")
	cases := map[string]string{
		strings.Replace(string(base), `"hidden_size": 32,`, "", 1):                         `missing required field "hidden_size"`,
		strings.Replace(string(base), `"model_type": "qwen2"`, `"model_type": "llama"`, 1): `model_type "llama" is not supported`,
		strings.Replace(string(base), `"rope_theta": 1000000.0,`, "", 1):                   "missing required field \"rope_theta",
		`{`: "bad JSON",
		strings.Replace(string(base), `"num_key_value_heads": 1`, `"num_key_value_heads": 3`, 1):            "does not divide",
		strings.Replace(string(base), `"rope_theta": 1000000.0`, `"rope_theta": 0`, 1):                      "rope_theta = 0",
		strings.Replace(string(base), `"rope_theta": 1000000.0`, `"rope_theta": -5`, 1):                     "rope_theta = -5",
		strings.Replace(string(base), `"rms_norm_eps": 1e-06`, `"rms_norm_eps": 0`, 1):                      "rms_norm_eps = 0",
		strings.Replace(string(base), `"rms_norm_eps": 1e-06`, `"rms_norm_eps": 1e6`, 1):                    "rms_norm_eps = 1e+06",
		strings.Replace(string(base), `"max_position_embeddings": 4096`, `"max_position_embeddings": 0`, 1): "max_position_embeddings = 0",
		strings.Replace(string(base), `"num_hidden_layers": 3`, `"num_hidden_layers": 1000000000`, 1):       "num_hidden_layers = 1000000000",
		strings.Replace(string(base), `"vocab_size": 151936`, `"vocab_size": 100000000000`, 1):              "vocab_size",
	}
	for in, want := range cases {
		_, err := ParseConfig("x/config.json", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "x/config.json: ") {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	b, _ := os.ReadFile(tinyDir + "/config.json")
	f.Add(b)
	b, _ = os.ReadFile(bnbDir + "/config.json")
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig("fuzz", b)
		if err != nil {
			return
		}
		if c.Hidden <= 0 || c.Heads <= 0 || c.KVHeads <= 0 || c.Heads%c.KVHeads != 0 || c.HeadDim <= 0 || c.HeadDim%2 != 0 ||
			c.Layers > maxLayers || c.MaxPositions <= 0 || !(c.RopeTheta > 1) || !(c.RMSEps > 0) {
			t.Fatalf("accepted an unusable config %+v", c)
		}
	})
}

// TestBadCheckpoints: broken model directories fail with one line naming
// the file and the problem.
func TestBadCheckpoints(t *testing.T) {
	copyDir := func(src string) string {
		dst := t.TempDir()
		for _, f := range []string{"config.json", "generation_config.json", "model.safetensors"} {
			b, err := os.ReadFile(src + "/" + f)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(dst+"/"+f, b, 0o644)
		}
		return dst
	}
	// Truncated weights.
	d := copyDir(tinyDir)
	b, _ := os.ReadFile(d + "/model.safetensors")
	os.WriteFile(d+"/model.safetensors", b[:len(b)/2], 0o644)
	if _, err := Load(d, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "model.safetensors") || !strings.Contains(err.Error(), "outside the data section") {
		t.Errorf("truncated: %v", err)
	}
	// A shape that does not fit config.json.
	d = copyDir(tinyDir)
	cfg, _ := os.ReadFile(d + "/config.json")
	os.WriteFile(d+"/config.json", []byte(strings.Replace(string(cfg), `"intermediate_size": 128`, `"intermediate_size": 64`, 1)), 0o644)
	if _, err := Load(d, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "mlp.gate_proj.weight has shape [128 32], config.json implies [64 32]") {
		t.Errorf("wrong shape: %v", err)
	}
	// A 4-bit checkpoint with a missing quant_state.
	d = copyDir(bnbDir)
	f, err := tensor.Open(bnbDir + "/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var keep []*tensor.Tensor
	for _, name := range f.Names() {
		if name != "model.layers.1.mlp.up_proj.weight"+BnbStateSuffix {
			keep = append(keep, f.Tensors[name])
		}
	}
	if err := tensor.Write(d+"/model.safetensors", keep, nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Load(d, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "load_in_4bit but model.layers.1.mlp.up_proj.weight has no") {
		t.Errorf("missing quant_state: %v", err)
	}
	d = copyDir(bnbDir)
	if _, err := Load(d, LoadOptions{Quant: QuantNF4}); err == nil || !strings.Contains(err.Error(), "already quantised") {
		t.Errorf("--quant on a 4-bit checkpoint: %v", err)
	}
}

// TestGenerationConfigErrors: sampling defaults that would silently
// misbehave are refused, naming the file.
func TestGenerationConfigErrors(t *testing.T) {
	for body, want := range map[string]string{
		`{"top_k": -3}`:                      "top_k = -3",
		`{"repetition_penalty": -1}`:         "repetition_penalty = -1",
		`{"repetition_penalty": 0}`:          "repetition_penalty = 0",
		`{"temperature": -0.7}`:              "temperature = -0.7",
		`{"top_p": 1.5}`:                     "top_p = 1.5",
		`{"do_sample": true, "top_p": -0.1}`: "top_p = -0.1",
	} {
		dir := t.TempDir()
		os.WriteFile(dir+"/generation_config.json", []byte(body), 0o644)
		_, err := LoadGenerationConfig(dir, nil)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "generation_config.json: ") {
			t.Errorf("%s: err = %v, want %q", body, err, want)
		}
	}
	dir := t.TempDir()
	os.WriteFile(dir+"/generation_config.json", []byte(`{"do_sample": true, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05}`), 0o644)
	if _, err := LoadGenerationConfig(dir, nil); err != nil {
		t.Errorf("Qwen2.5-Instruct's settings refused: %v", err)
	}
}

// TestNonFiniteWeights: a NaN in a layer's weights is reported with the
// layer where activations first go non-finite, not decoded as token 0.
func TestNonFiniteWeights(t *testing.T) {
	m, err := Load(tinyDir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := m.Layers[1].MLP.DownProj.Weights()
	w[7] = float32(math.NaN())
	r := NewRunner(m)
	_, err = r.Forward([]*Seq{m.NewSeq(8, -1)}, [][]int{{1, 2, 3}}, false)
	if err == nil || !strings.Contains(err.Error(), "layer 1") {
		t.Fatalf("err = %v, want the layer named", err)
	}
	w[7] = float32(math.Inf(1))
	if _, err = r.Forward([]*Seq{m.NewSeq(8, -1)}, [][]int{{1, 2, 3}}, false); err == nil {
		t.Fatal("an infinite weight went unnoticed")
	}
	w[7] = 0
	m.Norm[3] = float32(math.NaN()) // after the layers: the logits
	if _, err = r.Forward([]*Seq{m.NewSeq(8, -1)}, [][]int{{1, 2, 3}}, false); err == nil || !strings.Contains(err.Error(), "logits") {
		t.Fatalf("NaN final norm: err = %v", err)
	}
}

// TestFewerLayersThanCheckpoint: a config that leaves layers of the
// checkpoint out is refused, not run on the first layers only.
func TestFewerLayersThanCheckpoint(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, _ := os.ReadFile(tinyDir + "/" + f)
		if f == "config.json" {
			b = []byte(strings.Replace(string(b), `"num_hidden_layers": 3`, `"num_hidden_layers": 2`, 1))
		}
		os.WriteFile(dir+"/"+f, b, 0o644)
	}
	if _, err := Load(dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "model.layers.2.") || !strings.Contains(err.Error(), "num_hidden_layers = 2") {
		t.Fatalf("err = %v", err)
	}
}

// editedCheckpoint copies a model directory's config files and its
// model.safetensors into a temporary directory, passing every tensor (a
// private copy of its data) through edit on the way.
func editedCheckpoint(t *testing.T, src string, edit func(name string, tn *tensor.Tensor)) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"config.json", "generation_config.json"} {
		b, _ := os.ReadFile(src + "/" + f)
		os.WriteFile(dir+"/"+f, b, 0o644)
	}
	f, err := tensor.Open(src + "/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []*tensor.Tensor
	for _, name := range f.Names() {
		tn := *f.Tensors[name]
		tn.Data = append([]byte(nil), tn.Data...)
		edit(name, &tn)
		ts = append(ts, &tn)
	}
	if err := tensor.Write(dir+"/model.safetensors", ts, f.Metadata); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestNaNNestedAbsmax: a non-finite scale in a bitsandbytes checkpoint is
// refused at load, naming the tensor (it used to decode every weight of its
// blocks to NaN and generate token 0).
func TestNaNNestedAbsmax(t *testing.T) {
	hit := ""
	dir := editedCheckpoint(t, bnbDir, func(name string, tn *tensor.Tensor) {
		if hit == "" && strings.HasSuffix(name, ".nested_absmax") {
			hit = name
			binary.LittleEndian.PutUint32(tn.Data, math.Float32bits(float32(math.NaN())))
		}
	})
	if _, err := Load(dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), hit) || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("err = %v, want %s named", err, hit)
	}
}

// TestNaNWeightAtLoad: a NaN stored in a 16-bit checkpoint is refused at
// load, naming the tensor, for the CPU and the GPU path alike.
func TestNaNWeightAtLoad(t *testing.T) {
	const victim = "model.layers.1.mlp.down_proj.weight"
	dir := editedCheckpoint(t, tinyDir, func(name string, tn *tensor.Tensor) {
		if name == victim {
			if tn.DType != tensor.BF16 {
				t.Fatalf("%s is %v", name, tn.DType)
			}
			binary.LittleEndian.PutUint16(tn.Data[20:], 0x7fc0) // bf16 NaN
		}
	})
	for _, q := range []string{QuantNone, QuantNF4DQ} {
		if _, err := Load(dir, LoadOptions{Quant: q}); err == nil || !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), "NaN") {
			t.Errorf("--quant %q: err = %v, want %s named", q, err, victim)
		}
	}
}

// TestNaNEmbeddingFirstIndex: the embedding is copied on every core, and
// the error still names the first bad value (here in the second of the
// chunks, a later one holding another).
func TestNaNEmbeddingFirstIndex(t *testing.T) {
	const victim = "model.embed_tokens.weight"
	dir := editedCheckpoint(t, tinyDir, func(name string, tn *tensor.Tensor) {
		if name == victim {
			binary.LittleEndian.PutUint16(tn.Data[2*3_000_000:], 0x7fc0) // NaN
			binary.LittleEndian.PutUint16(tn.Data[2*4_500_000:], 0xff80) // −∞
		}
	})
	if _, err := Load(dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), victim+": value 3000000 is NaN") {
		t.Errorf("err = %v, want value 3000000 of %s named", err, victim)
	}
}

// TestLoadProgress: the load reports bytes as parts are bound, ending at
// the checkpoint's total.
func TestLoadProgress(t *testing.T) {
	var mu sync.Mutex
	var last, total, calls int64
	_, err := Load(bnbDir, LoadOptions{Progress: func(d, tot int64) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		last, total = max(last, d), tot
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(bnbDir + "/model.safetensors")
	if calls < 2 || last != total || total <= 0 || total > st.Size() || total < st.Size()*9/10 {
		t.Fatalf("%d calls, last %d of %d (file %d bytes)", calls, last, total, st.Size())
	}
}
