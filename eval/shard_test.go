package eval

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qbench/qbench/qwen"
)

func TestParseShard(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	for _, c := range []struct {
		spec string
		env  func(string) string
		i, n int
		err  string
	}{
		{"1/4", env(), 1, 4, ""},
		{"0/1", env(), 0, 1, ""},
		{"auto", env("SLURM_ARRAY_TASK_ID", "7", "SLURM_ARRAY_TASK_MIN", "5", "SLURM_ARRAY_TASK_COUNT", "3"), 2, 3, ""},
		{"auto/8", env("JOB_COMPLETION_INDEX", "5"), 5, 8, ""},
		{"4/4", env(), 0, 0, "want 0 ≤ I < N"},
		{"-1/4", env(), 0, 0, "want 0 ≤ I < N"},
		{"1/0", env(), 0, 0, "want 0 ≤ I < N"},
		{"x/4", env(), 0, 0, "not an integer"},
		{"3", env(), 0, 0, "want I/N"},
		{"auto", env(), 0, 0, "SLURM_ARRAY_TASK_ID"},
		{"auto/8", env(), 0, 0, "JOB_COMPLETION_INDEX"},
		{"auto/8", env("JOB_COMPLETION_INDEX", "8"), 0, 0, "want 0 ≤ I < N"},
	} {
		i, n, err := ParseShard(c.spec, c.env)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err = %v, want %q", c.spec, err, c.err)
			}
		} else if err != nil || i != c.i || n != c.n {
			t.Errorf("%s: %d/%d, %v; want %d/%d", c.spec, i, n, err, c.i, c.n)
		}
	}
}

// TestShardAndMerge: five seed questions evaluated in N shards (N above the
// question count too) and merged give the single run's rows and summary;
// missing, duplicated and mismatched shards are refused.
func TestShardAndMerge(t *testing.T) {
	m, tok := loadTiny(t, "../testdata/tiny-qwen2-lora")
	qs, qb, _ := LoadQuestions("")
	qs = qs[:5] // enough for every case, quick on a CPU
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 5, StopIDs: m.Gen.EosIDs, Questions: SeedName, QuestionsHash: SHA256(qb),
		Adapters: []AdapterInfo{{Name: "lora", Dir: "../testdata/tiny-qwen2-lora"}}}
	hash := func() (string, error) { return "feed", nil }
	root := t.TempDir()
	single, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: filepath.Join(root, "single"), Batch: 4, Seed: 3, ModelSHA256: hash})
	if err != nil {
		t.Fatal(err)
	}
	runShards := func(n int, edit func(i int, s *Settings)) []string {
		var dirs []string
		for i := 0; i < n; i++ {
			s := set
			s.Shard = fmt.Sprintf("%d/%d", i, n)
			if edit != nil {
				edit(i, &s)
			}
			d := filepath.Join(root, fmt.Sprintf("n%d-%d-%p", n, i, edit))
			if _, err := Eval(qwen.NewRunner(m), tok, ShardQuestions(qs, i, n), s, Options{Out: d, Batch: 3, Seed: 3, ModelSHA256: hash}); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, d)
		}
		return dirs
	}
	rowsOf := func(dir string) []Result {
		rs, err := readResults(filepath.Join(dir, "results.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range rs { // timings and batch shapes differ by construction
			rs[i].BatchMS, rs[i].BatchRows, rs[i].LogLikMS = 0, 0, 0
		}
		return rs
	}
	want := rowsOf(filepath.Join(root, "single"))
	for _, n := range []int{1, 2, 7} { // 7: more shards than questions
		dirs := runShards(n, nil)
		out := filepath.Join(root, fmt.Sprintf("merged%d", n))
		sum, err := Merge(out, dirs, qs, SHA256(qb))
		if err != nil {
			t.Fatalf("N=%d: %v", n, err)
		}
		if got := rowsOf(out); !reflect.DeepEqual(got, want) {
			t.Fatalf("N=%d: merged rows differ from the single run's", n)
		}
		if !reflect.DeepEqual(sum.Comparisons, single.Comparisons) || !reflect.DeepEqual(sum.Means, single.Means) || !reflect.DeepEqual(sum.PerQuestion, single.PerQuestion) {
			t.Fatalf("N=%d: merged summary differs from the single run's", n)
		}
		for _, f := range []string{"summary.json", "report.md", "report.html", "settings.json", weightsFile} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Errorf("N=%d: %v", n, err)
			}
		}
		var s Settings
		b, _ := os.ReadFile(filepath.Join(out, "settings.json"))
		if json.Unmarshal(b, &s); s.Shard != "" {
			t.Errorf("N=%d: merged settings still name shard %q", n, s.Shard)
		}
	}
	dirs := runShards(3, nil)
	for _, c := range []struct {
		dirs []string
		want string
	}{
		{dirs[:2], "shard 2 of 3 is missing"},
		{append(dirs[:1:1], dirs[0], dirs[1], dirs[2]), "both shard 0 of 3"},
		{append(dirs[:2:2], runShards(3, func(i int, s *Settings) { s.MaxNewTokens = 6 })[2]), "other settings"},
	} {
		if _, err := Merge(filepath.Join(root, "bad"), c.dirs, qs, SHA256(qb)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err = %v, want %q", err, c.want)
		}
	}
	if _, err := Merge(filepath.Join(root, "bad"), dirs, qs, "other"); err == nil || !strings.Contains(err.Error(), "not the one the shards answered") {
		t.Errorf("other questions: %v", err)
	}
	// A shard an older qbench made (its hash of another definition) beside new ones.
	os.Remove(filepath.Join(dirs[1], weightsFile))
	os.WriteFile(filepath.Join(dirs[1], legacyWeightsFile), []byte("aaaa\n"), 0o644)
	if _, err := Merge(filepath.Join(root, "bad"), dirs, qs, SHA256(qb)); err == nil || !strings.Contains(err.Error(), "hash the weights differently") {
		t.Errorf("mixed versions: %v", err)
	}
}

// TestEvalOnSeveralEngines: three engines sharing one queue of batches give
// the one-engine run's rows (in question order) and summary.
func TestEvalOnSeveralEngines(t *testing.T) {
	m, tok := loadTiny(t, "../testdata/tiny-qwen2-lora")
	qs, _, _ := LoadQuestions("")
	qs = qs[:6]
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 5, StopIDs: m.Gen.EosIDs,
		Adapters: []AdapterInfo{{Name: "lora", Dir: "../testdata/tiny-qwen2-lora"}}}
	root := t.TempDir()
	one, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: filepath.Join(root, "one"), Batch: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	engines := []qwen.Engine{qwen.NewRunner(m), qwen.NewRunner(m), qwen.NewRunner(m)}
	many, err := EvalOn(engines, tok, qs, set, Options{Out: filepath.Join(root, "many"), Batch: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(timelessRows(t, filepath.Join(root, "many")), timelessRows(t, filepath.Join(root, "one"))) {
		t.Fatal("rows differ from the one-engine run's")
	}
	if !reflect.DeepEqual(many.Comparisons, one.Comparisons) || !reflect.DeepEqual(many.PerQuestion, one.PerQuestion) {
		t.Fatal("summary differs from the one-engine run's")
	}
}

// batchLogProbRunner is the CPU engine with qwen.BatchLogProbEngine's
// method (each sequence's logits from its own Forward), so that the eval's
// shared-pass path runs without a GPU.
type batchLogProbRunner struct {
	*qwen.Runner
	calls int
}

func (r *batchLogProbRunner) TargetLogProbsBatch(seqs []*qwen.Seq, tokens, targets [][]int) ([][]float64, error) {
	r.calls++
	V := r.Model().Config.Vocab
	out := make([][]float64, len(seqs))
	for i, s := range seqs {
		logits, err := r.Forward([]*qwen.Seq{s}, [][]int{tokens[i]}, true)
		if err != nil {
			return nil, err
		}
		for j, t := range targets[i] {
			out[i] = append(out[i], LogSoftmaxAt(logits[j*V:(j+1)*V], t))
		}
	}
	return out, nil
}

// TestBatchLogLikelihood: an engine that takes the reference
// log-likelihoods of a batch in shared passes gives the rows (answers,
// metrics, log-likelihoods) of one that takes them a pair at a time.
func TestBatchLogLikelihood(t *testing.T) {
	m, tok := loadTiny(t, "../testdata/tiny-qwen2-lora")
	qs, _, _ := LoadQuestions("")
	qs = qs[:5]
	set := Settings{Model: "tiny", Quant: m.Quant, MaxNewTokens: 5, StopIDs: m.Gen.EosIDs,
		Adapters: []AdapterInfo{{Name: "lora", Dir: "../testdata/tiny-qwen2-lora"}}}
	root := t.TempDir()
	one, err := Eval(qwen.NewRunner(m), tok, qs, set, Options{Out: filepath.Join(root, "one"), Batch: 4, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	br := &batchLogProbRunner{Runner: qwen.NewRunner(m)}
	shared, err := Eval(br, tok, qs, set, Options{Out: filepath.Join(root, "shared"), Batch: 4, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if br.calls != 3 { // 10 pairs in batches of 4
		t.Fatalf("%d shared log-likelihood calls, want 3", br.calls)
	}
	if !reflect.DeepEqual(timelessRows(t, filepath.Join(root, "shared")), timelessRows(t, filepath.Join(root, "one"))) {
		t.Fatal("rows differ from the pair-at-a-time run's")
	}
	if !reflect.DeepEqual(shared.PerQuestion, one.PerQuestion) {
		t.Fatal("summary differs from the pair-at-a-time run's")
	}
}

// timelessRows reads dir's results.jsonl with the timings zeroed, for
// comparing runs.
func timelessRows(t *testing.T, dir string) []Result {
	t.Helper()
	rs, err := readResults(filepath.Join(dir, "results.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range rs {
		rs[i].BatchMS, rs[i].LogLikMS = 0, 0
	}
	return rs
}
