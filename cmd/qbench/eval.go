package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/qbench/qbench/eval"
	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/tokenizer"
)

var evalDoc = `Answers every question with the base model (adapter off) and with each
--adapter, all variants of a question in the same batches (each row of a batch
carries its adapter index, so they share every weight read), through the
model's chat template. Decoding is greedy unless --temperature is given; the
repetition penalty (and, when sampling, top-k and top-p) come from the model's
generation_config.json unless given as flags — as transformers' generate does
(Qwen2.5-Instruct's sets repetition_penalty 1.05, which then applies to greedy
decoding too). The report says what ran. Scores every answer against the
expected one, gives a verdict per question and metric (variant better, base
better, or similar when |difference| ≤ --tie), and per metric the counts, the
means, an exact two-sided sign test and a seeded paired-bootstrap 95% interval
of the mean difference.

Questions: JSON Lines with "question" and "expected" ("id" optional, else the
line number), or Alpaca's "instruction", optional "input", "output". Without
--questions, the ten seed questions embedded in qbench are used.

Metrics:
` + metricList() + `
Writes to --out: results.jsonl (one line per question and variant),
summary.json, report.md and report.html (self-contained). Rerunning with the
same --out skips finished pairs (after checking that the weights' bytes are
the same); other settings are refused unless --force, and a second eval on
the same --out fails at once. --shard I/N answers a 1/N of the questions for
qbench merge; the GPU build spreads batches over --devices.`

// autoBatch is the most rows eval decodes together by default: the fastest
// batch measured (Qwen2.5-3B shape on an H200, LoRA r16 on / off, 2026-11-28,
// batch kernels v10b + v11: 3,677 / 4,491 tok/s at 20, 6,408 / 8,444 at 64,
// 6,653 / 8,880 at 128); on the CPU more rows a pass share each weight's
// decoding too. Each row's KV cache is on the device (3B: ~73 KB a token); a
// batch that does not fit runs in halves (eval.runFitting).
const autoBatch = 128

func metricList() string {
	var b strings.Builder
	for _, m := range eval.Metrics {
		fmt.Fprintf(&b, "  %s: %s\n", m, eval.MetricDoc[m])
	}
	return b.String()
}

func runEval(args []string) error {
	fs := newFlags("eval", "--model DIR [--adapter DIR]... [flags]", evalDoc)
	var mf modelFlags
	mf.register(fs, true)
	var sf samplingFlags
	sf.register(0, fs)
	questions := fs.String("questions", "", "JSON Lines question `FILE` (default: the embedded seed questions)")
	out := fs.String("out", "", "output `DIR` (default a new ./qbench-eval-<time>-<random>)")
	maxNew := fs.Int("max-new-tokens", 256, "most tokens per answer")
	system := fs.String("system", "", "system prompt (default: the chat template's)")
	batch := fs.Int("batch", 0, "sequences per forward pass (0: every row, up to 128 an engine, the rows shared evenly between the GPUs); a batch the GPU has no memory for runs in halves")
	tie := fs.Float64("tie", 0, "differences up to this are 'similar' (0 = identical scores, as the seed counted)")
	force := fs.Bool("force", false, "discard results in --out made with other settings")
	quiet := fs.Bool("quiet", false, "no progress bars")
	devices := fs.String("devices", "all", "with --device cuda: the GPUs to use, `all` or a list like 0,1 (one engine each, sharing the queue of batches)")
	shardSpec := fs.String("shard", "", "answer only shard I of N of the questions: `I/N`, auto (a Slurm array job) or auto/N (a Kubernetes Indexed Job); combine the shards with qbench merge")
	if err := parse(fs, args); err != nil {
		return err
	}
	shard, shards := 0, 1
	if *shardSpec != "" {
		var err error
		if shard, shards, err = eval.ParseShard(*shardSpec, os.Getenv); err != nil {
			return err
		}
	}
	if *maxNew <= 0 || *batch < 0 || !(*tie >= 0) || math.IsInf(*tie, 0) {
		return fmt.Errorf("--max-new-tokens must be positive, --batch ≥ 0, --tie a finite number ≥ 0")
	}
	if err := sf.check(); err != nil {
		return err
	}
	if sf.temperature < 0 {
		return fmt.Errorf("--temperature must be ≥ 0")
	}
	qs, qBytes, err := eval.LoadQuestions(*questions)
	if err != nil {
		return err
	}
	qs = eval.ShardQuestions(qs, shard, shards)
	if *out == "" {
		if *out, err = eval.NewOutDir("."); err != nil {
			return err
		}
	}
	unlock, err := eval.LockOut(*out)
	if err != nil {
		return err
	}
	defer unlock()
	// Hash the weights in the background while the evaluation runs (remembered
	// across runs of the same files: eval.CachedHashFiles).
	hashDone := make(chan struct{})
	var modelHash string
	var hashErr error
	go func() {
		defer close(hashDone)
		files, _ := filepath.Glob(filepath.Join(mf.model, "*.safetensors"))
		sort.Strings(files)
		modelHash, hashErr = eval.CachedHashFiles(eval.HashCacheFile(), append([]string{filepath.Join(mf.model, "config.json")}, files...)...)
	}()

	// The GPUs and the tokenizer get ready while the weights load.
	warmDevices(mf.device, *devices)
	type loaded struct {
		tok *tokenizer.Tokenizer
		err error
	}
	tokDone := make(chan loaded, 1)
	go func() {
		tok, err := tokenizer.Load(mf.model)
		tokDone <- loaded{tok, err}
	}()
	m, err := mf.load(*quiet)
	if err != nil {
		return err
	}
	bar := newBar(1+len(mf.adapters), "tokenizer and adapters", *quiet)
	tl := <-tokDone
	if tl.err != nil {
		return tl.err
	}
	tok := tl.tok
	bar.Add(1)
	set := eval.Settings{Model: mf.model, Quant: m.Quant, MaxNewTokens: *maxNew, System: *system,
		Sampling: sf.resolve(m.Gen), StopIDs: m.Gen.EosIDs, Questions: *questions}
	if set.Questions == "" {
		set.Questions = eval.SeedName
	}
	if *shardSpec != "" {
		set.Shard = fmt.Sprintf("%d/%d", shard, shards)
	}
	if set.ModelPrint, err = eval.Fingerprint(mf.model); err != nil {
		return err
	}
	set.QuestionsHash = eval.SHA256(qBytes)
	names := map[string]bool{"base": true}
	for i, dir := range mf.adapters {
		a := m.Adapters[i]
		name := a.Name
		for n := 2; names[name]; n++ {
			name = fmt.Sprintf("%s-%d", a.Name, n)
		}
		names[name] = true
		h, err := eval.HashFiles(filepath.Join(dir, "adapter_config.json"), filepath.Join(dir, "adapter_model.safetensors"))
		if err != nil {
			return err
		}
		set.Adapters = append(set.Adapters, adapterInfo(name, dir, h, a))
		bar.Add(1)
	}
	bar.Finish()
	total := len(qs) * (1 + len(mf.adapters))
	b := *batch
	if b == 0 {
		b = autoBatch
	}
	engines, err := newEngines(m, mf.device, *devices, max(1, min(b, total)))
	if err != nil {
		return err
	}
	if *batch == 0 { // every row, shared evenly, up to autoBatch a pass
		b = max(1, min(autoBatch, (total+len(engines)-1)/len(engines)))
	}
	gbar := newBar(total, "generating", *quiet)
	device := mf.device
	if len(engines) > 1 {
		device = fmt.Sprintf("%s ×%d", mf.device, len(engines))
	}
	sum, err := eval.EvalOn(engines, tok, qs, set, eval.Options{
		Out: *out, Batch: b, Tie: *tie, Force: *force, Device: device, Seed: sf.seed, Version: version(),
		Progress: func(done, todo int) { gbar.ChangeMax(todo); gbar.Set(done) },
		ModelSHA256: func() (string, error) {
			<-hashDone
			return modelHash, hashErr
		},
	})
	gbar.Finish()
	if err != nil {
		return err
	}
	if len(qs) == 0 {
		fmt.Printf("shard %s holds no questions; wrote %s/results.jsonl (empty)\n", set.Shard, *out)
		return nil
	}
	fmt.Print(sum.Table())
	fmt.Printf("\nwrote %s/{results.jsonl,summary.json,report.md,report.html} in %.1fs\n", *out, sum.Repro.WallSeconds)
	return nil
}

var mergeDoc = `Combines the directories of a sharded evaluation (qbench eval --shard I/N,
one directory a shard) into --out: checks that the shards were made with the
same model, weights, adapters, questions and settings, that their indexes
cover 0 … N−1 once each and that every (question, variant) row is answered
exactly once, then writes results.jsonl, summary.json, report.md and
report.html as a single run would (rows in question order; the timings are
the shards'). The questions file is read from the path the shards recorded
unless --questions names it (its sha256 must match).`

func runMerge(args []string) error {
	fs := newFlags("merge", "--out DIR SHARD_DIR... [--questions FILE]", mergeDoc)
	out := fs.String("out", "", "output `DIR`")
	questions := fs.String("questions", "", "the questions `FILE` the shards answered (default: the path they recorded)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		return fmt.Errorf("--out and at least one shard directory are required")
	}
	path := *questions
	if path == "" { // the shards' record; the seed set is embedded
		b, err := os.ReadFile(filepath.Join(fs.Arg(0), "settings.json"))
		if err != nil {
			return fmt.Errorf("%s: not an eval directory (%v)", fs.Arg(0), err)
		}
		var set eval.Settings
		if err := json.Unmarshal(b, &set); err != nil {
			return fmt.Errorf("%s: bad JSON: %v", filepath.Join(fs.Arg(0), "settings.json"), err)
		}
		if set.Questions != eval.SeedName {
			path = set.Questions
		}
	}
	qs, qBytes, err := eval.LoadQuestions(path)
	if err != nil {
		return err
	}
	sum, err := eval.Merge(*out, fs.Args(), qs, eval.SHA256(qBytes))
	if err != nil {
		return err
	}
	fmt.Print(sum.Table())
	fmt.Printf("\nmerged %d shards into %s/{results.jsonl,summary.json,report.md,report.html}\n", fs.NArg(), *out)
	return nil
}

func adapterInfo(name, dir, hash string, a *lora.Adapter) eval.AdapterInfo {
	return eval.AdapterInfo{Name: name, Dir: dir, SHA256: hash, Rank: a.Config.R, Alpha: a.Config.Alpha,
		RSLoRA: a.Config.RSLoRA, Ranks: a.Ranks(), Target: a.Config.Targets()}
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v
}
