package eval

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tokenizer"
)

// TestEvalTinyModel runs the seed evaluation on the shipped tiny model and
// adapter, checks the four outputs, then resumes and refuses other settings.
// loadTiny loads the tiny test model (with adapters) and its tokenizer.
func loadTiny(t *testing.T, adapters ...string) (*qwen.Model, *tokenizer.Tokenizer) {
	t.Helper()
	m, err := qwen.Load("../testdata/tiny-qwen2", qwen.LoadOptions{Adapters: adapters})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load("../testdata/tiny-qwen2")
	if err != nil {
		t.Fatal(err)
	}
	return m, tok
}

func TestEvalTinyModel(t *testing.T) {
	m, tok := loadTiny(t, "../testdata/tiny-qwen2-lora")
	qs, _, err := LoadQuestions("")
	if err != nil {
		t.Fatal(err)
	}
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 8, StopIDs: m.Gen.EosIDs,
		Adapters: []AdapterInfo{{Name: "lora", Dir: "../testdata/tiny-qwen2-lora"}}}
	out := t.TempDir()
	opt := Options{Out: out, Batch: 6}
	sum, err := Eval(qwen.NewRunner(m), tok, qs, set, opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.jsonl", "summary.json", "report.md", "report.html"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(out, "results.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 20 {
		t.Fatalf("%d result lines, want 20", len(lines))
	}
	var r Result
	if err := json.Unmarshal([]byte(lines[1]), &r); err != nil || r.Variant != "lora" || r.ID != "q1" || len(r.Tokens) == 0 {
		t.Errorf("second line = %+v, %v", r, err)
	}
	c := sum.Comparisons[len(sum.Comparisons)-1]
	if c.Metric != MetricLogLik || c.N != 10 || c.Better+c.Worse+c.Similar != 10 {
		t.Errorf("loglik comparison = %+v", c)
	}
	// The generation that reuses each log-likelihood pass's cache gives the
	// tokens a plain generation from the prompt gives.
	var r0 Result
	json.Unmarshal([]byte(lines[0]), &r0)
	plain, err := qwen.Generate(qwen.NewRunner(m), [][]int{tok.Encode(r0.Prompt)}, []int{-1}, []*qwen.Sampler{qwen.NewSampler(qwen.Sampling{})},
		qwen.GenerateOptions{MaxNewTokens: 8, StopIDs: m.Gen.EosIDs})
	if err != nil || fmt.Sprint(plain[0]) != fmt.Sprint(r0.Tokens) {
		t.Errorf("eval tokens %v, plain generation %v (%v)", r0.Tokens, plain, err)
	}
	// A rerun resumes: nothing is generated again, the answers are the same.
	sum2, err := Eval(qwen.NewRunner(m), tok, qs, set, opt)
	if err != nil {
		t.Fatal(err)
	}
	if sum2.PerQuestion[3].Answers["lora"] != sum.PerQuestion[3].Answers["lora"] {
		t.Error("resumed run changed an answer")
	}
	set.MaxNewTokens = 9
	if _, err := Eval(qwen.NewRunner(m), tok, qs, set, opt); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("other settings: err = %v", err)
	}
}

func TestDecoding(t *testing.T) {
	for _, c := range []struct {
		s    qwen.Sampling
		want string
	}{
		{qwen.Sampling{}, "greedy decoding"},
		{qwen.Sampling{RepetitionPenalty: 1.05, TopK: 20, TopP: 0.8}, "greedy decoding, repetition penalty 1.05"},
		{qwen.Sampling{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05}, "sampling at temperature 0.7, top-k 20, top-p 0.8, repetition penalty 1.05"},
		{qwen.Sampling{Temperature: 1, TopP: 1, RepetitionPenalty: 1}, "sampling at temperature 1"},
	} {
		if got := Decoding(c.s); got != c.want {
			t.Errorf("Decoding(%+v) = %q, want %q", c.s, got, c.want)
		}
	}
}

// TestResumeChecksWeights: results are reused only with weights of the same
// bytes (the layout fingerprint cannot see changed values), a run that
// never recorded its hash is not trusted, and --force starts over.
func TestResumeChecksWeights(t *testing.T) {
	m, tok := loadTiny(t)
	qs, _, _ := LoadQuestions("")
	qs = qs[:2]
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 4}
	hash := func(h string) func() (string, error) { return func() (string, error) { return h, nil } }
	out := t.TempDir()
	if _, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("aaaa")}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, weightsFile)); strings.TrimSpace(string(b)) != "aaaa" {
		t.Fatalf("%s = %q", weightsFile, b)
	}
	if _, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("aaaa")}); err != nil {
		t.Fatalf("same weights: %v", err)
	}
	_, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("bbbb")})
	if err == nil || !strings.Contains(err.Error(), "other weights") {
		t.Fatalf("changed weights: err = %v", err)
	}
	os.Remove(filepath.Join(out, weightsFile))
	_, err = Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("bbbb")})
	if err == nil || !strings.Contains(err.Error(), "cannot be checked") || strings.Contains(err.Error(), "older qbench") {
		t.Fatalf("unrecorded hash: err = %v", err)
	}
	// Results an older qbench made, with its hash of another definition.
	os.WriteFile(filepath.Join(out, legacyWeightsFile), []byte("aaaa\n"), 0o644)
	_, err = Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("bbbb")})
	if err == nil || !strings.Contains(err.Error(), "older qbench") {
		t.Fatalf("legacy hash: err = %v", err)
	}
	if _, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: out, Batch: 2, ModelSHA256: hash("bbbb"), Force: true}); err != nil {
		t.Fatalf("--force: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, weightsFile)); strings.TrimSpace(string(b)) != "bbbb" {
		t.Fatalf("after --force, %s = %q", weightsFile, b)
	}
}

// TestLockOut: a second evaluation on the same directory is refused at once;
// the lock goes with the first.
func TestLockOut(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	unlock, err := LockOut(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockOut(dir); err == nil || !strings.Contains(err.Error(), "another qbench eval") {
		t.Fatalf("second lock: err = %v", err)
	}
	unlock()
	u2, err := LockOut(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	u2()
	if _, err := LockOut("/proc/version/x"); err == nil {
		t.Fatal("an unwritable directory was accepted")
	}
	a, err := NewOutDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewOutDir(filepath.Dir(a))
	if err != nil || a == b {
		t.Fatalf("two fresh directories %q, %q (%v)", a, b, err)
	}
}

// smallDevice is the CPU Runner with room for at most live sequences at once:
// NewSeq beyond them fails with qwen.ErrOutOfMemory, as a GPU's would.
type smallDevice struct {
	*qwen.Runner
	live, max, refused int
}

func (d *smallDevice) NewSeq(capacity, adapter int) (*qwen.Seq, error) {
	if d.live == d.max {
		d.refused++
		return nil, fmt.Errorf("cuda: %w allocating K cache", qwen.ErrOutOfMemory)
	}
	d.live++
	return d.Runner.NewSeq(capacity, adapter)
}

func (d *smallDevice) Release(s *qwen.Seq) {
	d.live--
	d.Runner.Release(s)
}

// TestBatchThatFits: a batch the device has no room for runs in halves, with
// the answers of a run that fits, and a device without room for one
// sequence is an error.
func TestBatchThatFits(t *testing.T) {
	m, tok := loadTiny(t, "../testdata/tiny-qwen2-lora")
	qs, _, err := LoadQuestions("")
	if err != nil {
		t.Fatal(err)
	}
	qs = qs[:5]
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 6, StopIDs: m.Gen.EosIDs,
		Adapters: []AdapterInfo{{Name: "lora", Dir: "../testdata/tiny-qwen2-lora"}}}
	want, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: t.TempDir(), Batch: 10})
	if err != nil {
		t.Fatal(err)
	}
	small := &smallDevice{Runner: qwen.NewRunner(m), max: 3}
	got, err := Eval(small, tok, qs, set, Options{Out: t.TempDir(), Batch: 10})
	if err != nil {
		t.Fatal(err)
	}
	if small.refused == 0 {
		t.Fatal("the device never ran out of room: the test tests nothing")
	}
	for i := range want.PerQuestion {
		if fmt.Sprint(got.PerQuestion[i].Answers) != fmt.Sprint(want.PerQuestion[i].Answers) {
			t.Errorf("question %d: in halves %v, in one batch %v", i, got.PerQuestion[i].Answers, want.PerQuestion[i].Answers)
		}
	}
	if _, err := Eval(&smallDevice{Runner: qwen.NewRunner(m)}, tok, qs, set, Options{Out: t.TempDir(), Batch: 4}); !errors.Is(err, qwen.ErrOutOfMemory) {
		t.Errorf("no room at all: err = %v, want out of memory", err)
	}
}
