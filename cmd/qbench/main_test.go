package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the tests run the real binary: the test executable re-runs
// itself as qbench when QBENCH_MAIN is set.
func TestMain(m *testing.M) {
	if os.Getenv("QBENCH_MAIN") == "1" {
		os.Args = append([]string{"qbench"}, strings.Fields(os.Getenv("QBENCH_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// qbench runs the binary with args (split on spaces) and returns stdout,
// stderr and the exit code.
func qbench(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "QBENCH_MAIN=1", "QBENCH_ARGS="+strings.Join(args, " "))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

const tiny = "../../testdata/tiny-qwen2"

func TestLogitsCommand(t *testing.T) {
	out, errs, code := qbench(t, "", "logits", "--model", tiny, "--tokens", "9707,11,1879", "--top", "4", "--out", filepath.Join(t.TempDir(), "l.safetensors"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var res struct {
		Positions []struct {
			IDs    []int
			Logits []float32
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Positions) != 3 || len(res.Positions[0].IDs) != 4 {
		t.Fatalf("output %q: %v", out, err)
	}
	if l := res.Positions[2].Logits; l[0] < l[1] || l[1] < l[2] {
		t.Errorf("logits not descending: %v", l)
	}
}

func TestGenerateJSON(t *testing.T) {
	out, errs, code := qbench(t, "", "generate", "--model", tiny, "--tokens", "9707,11", "--max-new-tokens", "5", "--json", "--no-stop")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var res struct {
		Tokens []int
		Text   string
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Tokens) != 5 || res.Text == "" {
		t.Errorf("output %q: %v", out, err)
	}
}

func TestTokenizeMessages(t *testing.T) {
	out, _, code := qbench(t, `{"messages":[{"role":"user","content":"hi"}],"k":1}`+"\n", "tokenize", "--tokenizer", tiny)
	if code != 0 || !strings.Contains(out, `"text":"<|im_start|>system`) || !strings.Contains(out, `"k":1`) || !strings.Contains(out, `"ids":[151644,`) {
		t.Errorf("output %q", out)
	}
	out, _, _ = qbench(t, "", "tokenize", "--tokenizer", tiny, "Hello,", "world!")
	if strings.TrimSpace(out) != "[9707,11,1879,0]" {
		t.Errorf("ids %q", out)
	}
	_, errs, code := qbench(t, "{\"text\":\"a\"}\n[1]\n", "tokenize", "--tokenizer", tiny)
	if code == 0 || !strings.Contains(errs, "stdin line 2") {
		t.Errorf("bad line: exit %d, %q", code, errs)
	}
}

// TestBadInputOneLine: broken files give one line on stderr naming the file,
// and a non-zero exit — never a Go panic trace.
func TestBadInputOneLine(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"config.json", "generation_config.json", "model.safetensors"} {
		b, _ := os.ReadFile(filepath.Join(tiny, f))
		if f == "model.safetensors" {
			b = b[:len(b)-1000]
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	_, errs, code := qbench(t, "", "logits", "--model", dir, "--tokens", "1,2")
	if code == 0 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "model.safetensors") || !strings.HasPrefix(errs, "qbench: logits: ") {
		t.Errorf("truncated weights: exit %d, stderr %q", code, errs)
	}
	cfg, _ := os.ReadFile(filepath.Join(tiny, "config.json"))
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(strings.Replace(string(cfg), `"num_hidden_layers": 3,`, "", 1)), 0o644)
	_, errs, code = qbench(t, "", "generate", "--model", dir, "--tokens", "1,2")
	if code == 0 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, `config.json: missing required field "num_hidden_layers"`) {
		t.Errorf("missing field: exit %d, stderr %q", code, errs)
	}
	_, errs, code = qbench(t, "", "logits", "--model", tiny, "--tokens", "1,x")
	if code == 0 || !strings.Contains(errs, `"x" is not an integer`) {
		t.Errorf("bad --tokens: exit %d, stderr %q", code, errs)
	}
}

func TestHelpEverywhere(t *testing.T) {
	for _, c := range commands {
		out, errs, code := qbench(t, "", c.name, "--help")
		if code != 0 || !strings.Contains(out, "Usage: qbench "+c.name) {
			t.Errorf("%s --help: exit %d, stdout %q, stderr %q", c.name, code, out, errs)
		}
	}
}

func TestInspectAndQuantize(t *testing.T) {
	out := filepath.Join(t.TempDir(), "q")
	if _, errs, code := qbench(t, "", "quantize", "--model", tiny, "--out", out, "--quant", "nf4-dq"); code != 0 {
		t.Fatalf("quantize: %s", errs)
	}
	text, errs, code := qbench(t, "", "inspect", "--model", out, "--adapter", "../../testdata/tiny-qwen2-lora")
	if code != 0 || !strings.Contains(text, "self_attn.q_proj NF4 double-quant, blocksize 64, compute bfloat16 ×3 layers") || !strings.Contains(text, "r=8 alpha=16 scale 2") {
		t.Errorf("inspect: exit %d\n%s%s", code, text, errs)
	}
}

// TestBenchLoad: bench --load times a cold and a warm load of the model on
// the CPU, in either build, and refuses to run without --model.
func TestBenchLoad(t *testing.T) {
	out, errs, code := qbench(t, "", "bench", "--load", "--model", tiny, "--device", "cpu", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var res struct {
		Bytes int64 `json:"checkpoint_bytes"`
		Runs  []loadRun
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Runs) != 2 {
		t.Fatalf("output %q: %v", out, err)
	}
	st, err := os.Stat(filepath.Join(tiny, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != st.Size() {
		t.Errorf("checkpoint_bytes = %d, the file has %d", res.Bytes, st.Size())
	}
	for i, r := range res.Runs {
		if r.Cache != []string{"cold", "warm"}[i] || !(r.Seconds > 0) || !(r.GBs > 0) || !(r.PeakRSS > 0) {
			t.Errorf("run %d: %+v", i, r)
		}
	}
	_, errs, code = qbench(t, "", "bench", "--load", "--device", "cpu")
	if code == 0 || !strings.Contains(errs, "--load needs --model") || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
		t.Errorf("without --model: exit %d, %q", code, errs)
	}
}

// TestFirstRun runs the README's first command on the first eight held-out
// questions: the trained model and its adapter must show what they show
// there, the adapter answering most exactly (observed 6 of 8) and giving
// the reference answer a far higher log-likelihood than the base on every
// question (observed by 4.4 nats or more a token).
func TestFirstRun(t *testing.T) {
	lines, err := os.ReadFile("../../testdata/sotu/questions.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	qs := filepath.Join(dir, "q.jsonl")
	if err := os.WriteFile(qs, []byte(strings.Join(strings.SplitAfter(string(lines), "\n")[:8], "")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	_, errs, code := qbench(t, "", "eval", "--model", "../../testdata/sotu/sotu-qwen2", "--quant", "nf4-dq", "--adapter", "../../testdata/sotu/sotu-qwen2-qa",
		"--questions", qs, "--max-new-tokens", "16", "--quiet", "--device", "cpu", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	raw, err := os.ReadFile(filepath.Join(out, "results.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	loglik := map[string]map[string]float64{}
	exact := 0
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r struct {
			ID, Variant, Answer string
			Metrics             map[string]float64
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if loglik[r.ID] == nil {
			loglik[r.ID] = map[string]float64{}
		}
		loglik[r.ID][r.Variant] = r.Metrics["ref_loglik"]
		if r.Variant == "sotu-qwen2-qa" {
			exact += int(r.Metrics["exact_match"])
		}
	}
	if len(loglik) != 8 {
		t.Fatalf("%d questions answered, want 8", len(loglik))
	}
	if exact < 5 {
		t.Errorf("adapter exact on %d of 8, want ≥ 5", exact)
	}
	for id, v := range loglik {
		if !(v["sotu-qwen2-qa"] > v["base"]+2) {
			t.Errorf("question %s: reference log-likelihood %.2f with the adapter, %.2f without", id, v["sotu-qwen2-qa"], v["base"])
		}
	}
}
