package eval

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
	"github.com/qbench/qbench/tokenizer"
)

// Settings are everything that determines the answers; a resumed run must
// have the same ones.
type Settings struct {
	Model         string        `json:"model"`
	ModelPrint    string        `json:"model_fingerprint"` // sha256 of config.json and the safetensors headers and sizes
	Quant         string        `json:"quantization"`
	Adapters      []AdapterInfo `json:"adapters"`
	Questions     string        `json:"questions"`
	QuestionsHash string        `json:"questions_sha256"`
	System        string        `json:"system_prompt,omitempty"`
	MaxNewTokens  int           `json:"max_new_tokens"`
	Sampling      qwen.Sampling `json:"sampling"`
	StopIDs       []int         `json:"stop_ids"`
	Shard         string        `json:"shard,omitempty"` // "I/N" when the run answers shard I of N (see shard.go)
}

// AdapterInfo describes one fine-tune variant.
type AdapterInfo struct {
	Name   string   `json:"name"`
	Dir    string   `json:"dir"`
	SHA256 string   `json:"sha256"` // of adapter_config.json and adapter_model.safetensors
	Rank   int      `json:"r"`
	Alpha  float64  `json:"lora_alpha"`
	RSLoRA bool     `json:"use_rslora,omitempty"`
	Ranks  []int    `json:"ranks"`
	Target []string `json:"target_modules"`
}

// Options are the run's settings that do not change answers.
type Options struct {
	Out      string
	Batch    int     // sequences per forward pass
	Tie      float64 // |difference| ≤ Tie is "similar"
	Force    bool    // discard results made with other settings
	Device   string
	Seed     uint64 // also seeds the bootstrap
	Progress func(done, total int)
	Version  string
	// ModelSHA256, if set, is called once generation is over for the content
	// hash of the model's weights (computed meanwhile, off the critical path).
	ModelSHA256 func() (string, error)
}

// Result is one (question, variant) answer; a line of results.jsonl.
type Result struct {
	ID        string             `json:"id"`
	Variant   string             `json:"variant"`
	Question  string             `json:"question"`
	Expected  string             `json:"expected"`
	Prompt    string             `json:"prompt"`
	Answer    string             `json:"answer"`
	Tokens    []int              `json:"tokens"`
	Stop      string             `json:"stop"` // "eos" or "length"
	Metrics   map[string]float64 `json:"metrics"`
	BatchMS   float64            `json:"batch_ms"`   // wall time of the batch that generated it
	BatchRows int                `json:"batch_rows"` // sequences in that batch
	LogLikMS  float64            `json:"loglik_ms"`  // wall time of its reference log-likelihood pass (the batch's shared passes, on engines that share them)
}

// Eval runs the evaluation, resuming from opt.Out when it holds results of
// the same settings, and writes results.jsonl, summary.json, report.md and
// report.html there. It returns the summary.
func Eval(e qwen.Engine, tok *tokenizer.Tokenizer, qs []Question, set Settings, opt Options) (*Summary, error) {
	return EvalOn([]qwen.Engine{e}, tok, qs, set, opt)
}

// EvalOn is Eval over several engines of one model (one a GPU): each takes
// the next pending batch from one queue, and every finished batch is
// written to opt.Out as it comes, so resume works as with one engine. The
// answers do not depend on which engine or batch a row went to (greedy
// decoding and the per-pair sampler seeds are batch-independent), so the
// reports are the one-engine run's.
func EvalOn(engines []qwen.Engine, tok *tokenizer.Tokenizer, qs []Question, set Settings, opt Options) (*Summary, error) {
	if len(engines) == 0 {
		return nil, errors.New("eval: no engine")
	}
	e := engines[0]
	start := time.Now()
	if err := os.MkdirAll(opt.Out, 0o755); err != nil {
		return nil, err
	}
	variants := []string{"base"}
	for _, a := range set.Adapters {
		variants = append(variants, a.Name)
	}
	done, err := resume(opt, set)
	if err != nil {
		return nil, err
	}
	if done, err = sameWeights(opt, done); err != nil {
		return nil, err
	}
	// Record the weights' content hash as soon as it is known, so that a
	// run interrupted later can still be resumed.
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		if opt.ModelSHA256 != nil {
			if h, err := opt.ModelSHA256(); err == nil {
				writeText(filepath.Join(opt.Out, weightsFile), h+"\n")
			}
		}
	}()
	defer func() { <-hashed }()
	items, err := prompts(tok, qs, set.System)
	if err != nil {
		return nil, err
	}
	var todo []pair
	for i := range items {
		for v := range variants {
			if _, ok := done[key(items[i].q.ID, variants[v])]; !ok {
				todo = append(todo, pair{i, v})
			}
		}
	}
	results := make([]Result, 0, len(items)*len(variants))
	for _, r := range done {
		results = append(results, r)
	}
	batch := max(opt.Batch, 1)
	if results, err = runQueue(engines, tok, items, variants, todo, batch, set, opt, results); err != nil {
		return nil, err
	}
	if len(qs) == 0 { // a shard with no questions (N above the question count): nothing to report
		return &Summary{Variants: variants}, nil
	}
	sortResults(results, qs, variants)
	if err := writeResults(opt.Out, set, results); err != nil { // in question order, however the batches finished
		return nil, err
	}
	sum := Summarize(results, qs, variants, opt.Tie, opt.Seed)
	var modelSHA string
	if opt.ModelSHA256 != nil {
		if modelSHA, err = opt.ModelSHA256(); err != nil {
			return nil, err
		}
	}
	c := e.Model().Config
	sum.Repro = Repro{ModelSHA256: modelSHA, Version: opt.Version, Settings: set, Device: opt.Device, Date: time.Now().UTC().Format(time.RFC3339),
		Batch: batch, Tie: opt.Tie, Seed: opt.Seed, WallSeconds: time.Since(start).Seconds(), Variants: variants,
		Model: ModelInfo{Layers: c.Layers, Hidden: c.Hidden, Vocab: c.Vocab, Quant: e.Model().Quant}}
	if err := writeReports(opt.Out, sum); err != nil {
		return nil, err
	}
	return sum, nil
}

// runQueue answers the pending pairs in batches of batch, each engine
// taking the next batch when it is free; every finished batch joins results
// and is written out (with the settings) before the next is reported.
func runQueue(engines []qwen.Engine, tok *tokenizer.Tokenizer, items []item, variants []string, todo []pair, batch int,
	set Settings, opt Options, results []Result) ([]Result, error) {
	if err := writeResults(opt.Out, set, results); err != nil { // the settings file exists from the start
		return nil, err
	}
	type done struct {
		rs  []Result
		err error
	}
	queue := make(chan []pair)
	out := make(chan done)
	stop := make(chan struct{}) // closed at the first error: no further batches are handed out
	var wg sync.WaitGroup
	for _, e := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for chunk := range queue {
				rs, err := runFitting(e, tok, items, variants, chunk, set)
				out <- done{rs, err}
			}
		}()
	}
	go func() { // feed the batches, then let the workers end
		defer close(queue)
		for lo := 0; lo < len(todo); lo += batch {
			select {
			case queue <- todo[lo:min(lo+batch, len(todo))]:
			case <-stop:
				return
			}
		}
	}()
	go func() { wg.Wait(); close(out) }()
	var first error
	finished := 0
	for d := range out { // drain even after an error, so every worker ends
		if first != nil {
			continue
		}
		if d.err != nil {
			first = d.err
			close(stop)
			continue
		}
		results = append(results, d.rs...)
		finished += len(d.rs)
		if err := writeResults(opt.Out, set, results); err != nil {
			first = err
			close(stop)
			continue
		}
		if opt.Progress != nil {
			opt.Progress(finished, len(todo))
		}
	}
	return results, first
}

// runFitting is runBatch, in halves (and their halves) when the device runs
// out of memory for a batch: the default batch is the fastest measured, not
// what every model and prompt length fits. The answers do not depend on the
// batching (each pair's sampler has its own seed).
func runFitting(e qwen.Engine, tok *tokenizer.Tokenizer, items []item, variants []string, chunk []pair, set Settings) ([]Result, error) {
	rs, err := runBatch(e, tok, items, variants, chunk, set)
	if err == nil || !errors.Is(err, qwen.ErrOutOfMemory) || len(chunk) == 1 {
		return rs, err
	}
	h := len(chunk) / 2
	a, err := runFitting(e, tok, items, variants, chunk[:h], set)
	if err != nil {
		return nil, err
	}
	b, err := runFitting(e, tok, items, variants, chunk[h:], set)
	if err != nil {
		return nil, err
	}
	return append(a, b...), nil
}

// item is one question with its prompt through the chat template.
type item struct {
	q           Question
	prompt      string
	ids, expIDs []int
}

// pair is one (question, variant) to answer: indexes into the items and variants.
type pair struct{ q, v int }

// prompts renders each question through the model's chat template (with the
// system prompt, if any) and tokenizes it and its expected answer.
func prompts(tok *tokenizer.Tokenizer, qs []Question, system string) ([]item, error) {
	items := make([]item, len(qs))
	for i, q := range qs {
		var msgs []tokenizer.Message
		if system != "" {
			msgs = append(msgs, tokenizer.Message{Role: "system", Content: system})
		}
		text, err := tok.ApplyChatTemplate(append(msgs, tokenizer.Message{Role: "user", Content: q.Question}), true)
		if err != nil {
			return nil, err
		}
		it := item{q, text, tok.Encode(text), tok.Encode(q.Expected)}
		if len(it.ids) == 0 {
			return nil, fmt.Errorf("question %s: the chat template (tokenizer_config.json) rendered an empty prompt", q.ID)
		}
		items[i] = it
	}
	return items, nil
}

// runBatch answers one batch of pairs, all sharing every forward pass: each
// pair's reference log-likelihood first (one forward of prompt and expected
// answer, whose cache then serves the generation: rewound to the prompt less
// its last token, which the first step feeds — see qwen.Seq), then the
// generation of all of them together.
func runBatch(e qwen.Engine, tok *tokenizer.Tokenizer, items []item, variants []string, chunk []pair, set Settings) ([]Result, error) {
	seqs := make([]*qwen.Seq, 0, len(chunk))
	defer func() { // the caches go back after each batch
		for _, s := range seqs {
			e.Release(s)
		}
	}()
	prompts := make([][]int, len(chunk))
	samplers := make([]*qwen.Sampler, len(chunk))
	lls, llMS := make([]float64, len(chunk)), make([]float64, len(chunk))
	for j, p := range chunk {
		it := items[p.q]
		prompts[j] = it.ids
		sp := set.Sampling
		sp.Seed = pairSeed(sp.Seed, it.q.ID, variants[p.v]) // independent of batching
		samplers[j] = qwen.NewSampler(sp)
		need, maxPos := len(it.ids)+max(len(it.expIDs), set.MaxNewTokens), e.Model().Config.MaxPositions
		if need > maxPos {
			return nil, fmt.Errorf("question %s: a prompt of %d tokens and %d more (the expected answer or --max-new-tokens) exceed the model's %d positions (max_position_embeddings)",
				it.q.ID, len(it.ids), need-len(it.ids), maxPos)
		}
		s, err := e.NewSeq(need, p.v-1)
		if err != nil {
			return nil, err
		}
		seqs = append(seqs, s)
		if _, ok := e.(qwen.BatchLogProbEngine); ok {
			continue // all of them below, in shared passes
		}
		t1 := time.Now()
		if lls[j], err = logLikelihood(e, s, it.ids, it.expIDs); err != nil {
			return nil, err
		}
		llMS[j] = msSince(t1)
		s.Len = len(it.ids) - 1
	}
	if be, ok := e.(qwen.BatchLogProbEngine); ok {
		t1 := time.Now()
		if err := batchLogLikelihood(be, seqs, items, chunk, lls); err != nil {
			return nil, err
		}
		for j, p := range chunk {
			llMS[j] = msSince(t1) // the passes the batch shared
			seqs[j].Len = len(items[p.q].ids) - 1
		}
	}
	t0 := time.Now()
	outs, err := qwen.GenerateFrom(e, seqs, prompts, samplers, qwen.GenerateOptions{MaxNewTokens: set.MaxNewTokens, StopIDs: set.StopIDs})
	if err != nil {
		return nil, err
	}
	batchMS := msSince(t0)
	results := make([]Result, len(chunk))
	for j, p := range chunk {
		it, toks := items[p.q], outs[j]
		stop := "length"
		if n := len(toks); n > 0 && contains(set.StopIDs, toks[n-1]) {
			stop = "eos"
		}
		if toks == nil {
			toks = []int{}
		}
		answer := tok.Decode(toks, true)
		r := Result{ID: it.q.ID, Variant: variants[p.v], Question: it.q.Question, Expected: it.q.Expected,
			Prompt: it.prompt, Answer: answer, Tokens: toks, Stop: stop, Metrics: TextMetrics(it.q.Expected, answer),
			BatchMS: batchMS, BatchRows: len(chunk), LogLikMS: llMS[j]}
		r.Metrics[MetricLogLik] = lls[j]
		results[j] = r
	}
	return results, nil
}

// sortResults puts results in question order, variants in their order.
func sortResults(results []Result, qs []Question, variants []string) {
	order := map[string]int{}
	for i, q := range qs {
		order[q.ID] = i
	}
	vorder := map[string]int{}
	for i, v := range variants {
		vorder[v] = i
	}
	sort.SliceStable(results, func(i, j int) bool {
		a, b := results[i], results[j]
		if order[a.ID] != order[b.ID] {
			return order[a.ID] < order[b.ID]
		}
		return vorder[a.Variant] < vorder[b.Variant]
	})
}

func key(id, variant string) string { return id + "\x00" + variant }

// pairSeed derives a sampler seed for one (question, variant) from the run's seed.
func pairSeed(seed uint64, id, variant string) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s\x00%s", seed, id, variant)
	return h.Sum64()
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func contains(v []int, x int) bool {
	for _, y := range v {
		if x == y {
			return true
		}
	}
	return false
}

// LogLikelihood is the mean log-probability per token of expected following
// prompt, teacher-forced in one forward pass, under the given adapter.
func LogLikelihood(e qwen.Engine, prompt, expected []int, adapter int) (float64, error) {
	s, err := e.NewSeq(len(prompt)+len(expected), adapter)
	if err != nil {
		return 0, err
	}
	defer e.Release(s)
	return logLikelihood(e, s, prompt, expected)
}

// batchLogLikelihood is logLikelihood for every pair of chunk, in shared
// passes: lls[j] for pair j, through its empty sequence seqs[j].
func batchLogLikelihood(e qwen.BatchLogProbEngine, seqs []*qwen.Seq, items []item, chunk []pair, lls []float64) error {
	var js []int
	var ss []*qwen.Seq
	var toks, targets [][]int
	for j, p := range chunk {
		it := items[p.q]
		if len(it.expIDs) == 0 || len(it.ids) == 0 {
			lls[j] = math.NaN()
			if len(it.ids) > 0 { // the generation expects the prompt in the cache, as logLikelihood leaves it
				toks, targets = append(toks, it.ids), append(targets, make([]int, len(it.ids)))
				js, ss = append(js, -1), append(ss, seqs[j])
			}
			continue
		}
		all, tg := teacherForced(it.ids, it.expIDs)
		js, ss, toks, targets = append(js, j), append(ss, seqs[j]), append(toks, all), append(targets, tg)
	}
	if len(ss) == 0 {
		return nil
	}
	out, err := e.TargetLogProbsBatch(ss, toks, targets)
	if err != nil {
		return err
	}
	for k, j := range js {
		if j >= 0 {
			it := items[chunk[j].q]
			lls[j] = meanExpected(out[k], len(it.ids), len(it.expIDs))
		}
	}
	return nil
}

// teacherForced is prompt and expected as one sequence, and its targets:
// each expected token at the position that predicts it, zeros before.
func teacherForced(prompt, expected []int) (all, targets []int) {
	all = append(append([]int(nil), prompt...), expected...)
	targets = make([]int, len(all))
	copy(targets[len(prompt)-1:], expected)
	return all, targets
}

// meanExpected is the mean of the n expected tokens' log-probabilities in
// v (v[i]: position i's, of its target) after a prompt of p tokens.
func meanExpected(v []float64, p, n int) float64 {
	var sum float64
	for i := range n {
		sum += v[p-1+i]
	}
	return sum / float64(n)
}

// logLikelihood runs prompt+expected through the empty sequence s (which
// keeps the cache) and returns the mean log-probability of expected.
func logLikelihood(e qwen.Engine, s *qwen.Seq, prompt, expected []int) (float64, error) {
	if len(expected) == 0 || len(prompt) == 0 {
		return math.NaN(), nil
	}
	all, targets := teacherForced(prompt, expected)
	if lp, ok := e.(qwen.LogProbEngine); ok { // on the device: only the numbers come back
		v, err := lp.TargetLogProbs(s, all, targets)
		if err != nil {
			return 0, err
		}
		return meanExpected(v, len(prompt), len(expected)), nil
	}
	logits, err := e.Forward([]*qwen.Seq{s}, [][]int{all}, true)
	if err != nil {
		return 0, err
	}
	V := e.Model().Config.Vocab
	var sum float64
	for i, t := range expected {
		row := logits[(len(prompt)-1+i)*V : (len(prompt)+i)*V]
		sum += LogSoftmaxAt(row, t)
	}
	return sum / float64(len(expected)), nil
}

// LogSoftmaxAt is log(softmax(row)[t]), in float64 (also the reference of the GPU's target_logprob).
func LogSoftmaxAt(row []float32, t int) float64 {
	m := math.Inf(-1)
	for _, v := range row {
		m = math.Max(m, float64(v))
	}
	var s float64
	for _, v := range row {
		s += math.Exp(float64(v) - m)
	}
	return float64(row[t]) - m - math.Log(s)
}

const settingsFile = "settings.json"

// weightsFile holds the content hash of the weights the results were made
// with (HashFiles). legacyWeightsFile is where qbench before 2026-11-28 kept
// a hash of another definition (one sha256 stream), which cannot be compared.
const weightsFile, legacyWeightsFile = "weights.sha256", "model.sha256"

// sameWeights keeps earlier results only if they were made from weights with
// the same bytes (the fingerprint in the settings covers only their layout):
// it waits for this run's content hash and compares it with the recorded one.
func sameWeights(opt Options, done map[string]Result) (map[string]Result, error) {
	if len(done) == 0 || opt.ModelSHA256 == nil {
		return done, nil
	}
	path := filepath.Join(opt.Out, weightsFile)
	prev, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	cur, err := opt.ModelSHA256()
	if err != nil {
		return nil, err
	}
	_, legacyErr := os.Stat(filepath.Join(opt.Out, legacyWeightsFile))
	switch {
	case len(prev) == 0 && legacyErr == nil:
		if !opt.Force {
			return nil, fmt.Errorf("%s: its results were made by an older qbench, whose hash of the weights this one does not compute, so they cannot be checked; use --force to start over", opt.Out)
		}
	case len(prev) == 0:
		if !opt.Force {
			return nil, fmt.Errorf("%s: the earlier run stopped before recording its weights' sha256, so its results cannot be checked; use --force to start over", opt.Out)
		}
	case strings.TrimSpace(string(prev)) != cur:
		if !opt.Force {
			return nil, fmt.Errorf("%s: holds results made with other weights (sha256 %.12s…, now %.12s…); use another --out, or --force to discard them", opt.Out, strings.TrimSpace(string(prev)), cur)
		}
	default:
		return done, nil
	}
	return map[string]Result{}, nil
}

// resume returns the finished results in out, if made with the same
// settings; with other settings it refuses unless opt.Force.
func resume(opt Options, set Settings) (map[string]Result, error) {
	done := map[string]Result{}
	b, err := os.ReadFile(filepath.Join(opt.Out, settingsFile))
	if errors.Is(err, os.ErrNotExist) {
		return done, nil
	} else if err != nil {
		return nil, err
	}
	want, _ := json.Marshal(set)
	var prev Settings
	if err := json.Unmarshal(b, &prev); err != nil {
		if !opt.Force {
			return nil, fmt.Errorf("%s: bad JSON (%v); use --force to start over", filepath.Join(opt.Out, settingsFile), err)
		}
		return done, nil
	}
	got, _ := json.Marshal(prev)
	if !bytes.Equal(got, want) {
		if !opt.Force {
			return nil, fmt.Errorf("%s holds results made with other settings (model, adapters, questions or decoding); use another --out, or --force to discard them", opt.Out)
		}
		return done, nil
	}
	f, err := os.Open(filepath.Join(opt.Out, "results.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return done, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for n := 1; sc.Scan(); n++ {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: line %d: %v", f.Name(), n, err)
		}
		done[key(r.ID, r.Variant)] = r
	}
	return done, sc.Err()
}

// writeResults rewrites settings.json and results.jsonl atomically.
func writeResults(out string, set Settings, results []Result) error {
	if err := writeJSON(filepath.Join(out, settingsFile), set); err != nil {
		return err
	}
	return tensor.ReplaceFile(filepath.Join(out, "results.jsonl"), func(f *os.File) error {
		w := bufio.NewWriter(f)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return w.Flush()
	})
}

func writeJSON(path string, v any) error {
	return tensor.ReplaceFile(path, func(f *os.File) error {
		enc := json.NewEncoder(f)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	})
}
