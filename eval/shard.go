package eval

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Shards split an evaluation over machines without a scheduler of our own:
// shard I of N answers the questions whose index (0-based, in file order) is
// I modulo N — every variant of a question in the same shard, so base and
// adapters still share their batches — into its own directory, and Merge
// checks and combines the directories into what a single run writes.

// ParseShard reads a --shard value: "I/N"; "auto" for a Slurm array job
// (index SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT);
// "auto/N" for a Kubernetes Indexed Job (index JOB_COMPLETION_INDEX of N).
// getenv reads the environment (os.Getenv).
func ParseShard(spec string, getenv func(string) string) (i, n int, err error) {
	atoi := func(name, s string) (int, error) {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return 0, fmt.Errorf("--shard %s: %s = %q is not an integer", spec, name, s)
		}
		return v, nil
	}
	switch {
	case spec == "auto":
		id, err := atoi("SLURM_ARRAY_TASK_ID", getenv("SLURM_ARRAY_TASK_ID"))
		if err != nil {
			return 0, 0, fmt.Errorf("%v (auto reads a Slurm array job's variables; auto/N a Kubernetes Indexed Job's)", err)
		}
		lo, err := atoi("SLURM_ARRAY_TASK_MIN", getenv("SLURM_ARRAY_TASK_MIN"))
		if err != nil {
			return 0, 0, err
		}
		if n, err = atoi("SLURM_ARRAY_TASK_COUNT", getenv("SLURM_ARRAY_TASK_COUNT")); err != nil {
			return 0, 0, err
		}
		i = id - lo
	case strings.HasPrefix(spec, "auto/"):
		if n, err = atoi("N", spec[len("auto/"):]); err != nil {
			return 0, 0, err
		}
		if i, err = atoi("JOB_COMPLETION_INDEX", getenv("JOB_COMPLETION_INDEX")); err != nil {
			return 0, 0, fmt.Errorf("%v (auto/N reads a Kubernetes Indexed Job's index)", err)
		}
	default:
		a, b, ok := strings.Cut(spec, "/")
		if !ok {
			return 0, 0, fmt.Errorf("--shard %q: want I/N, auto or auto/N", spec)
		}
		if i, err = atoi("I", a); err != nil {
			return 0, 0, err
		}
		if n, err = atoi("N", b); err != nil {
			return 0, 0, err
		}
	}
	if n < 1 || n > 1<<20 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("--shard %s: shard %d of %d: want 0 ≤ I < N", spec, i, n)
	}
	return i, n, nil
}

// ShardQuestions keeps the questions of shard i of n.
func ShardQuestions(qs []Question, i, n int) []Question {
	var out []Question
	for k, q := range qs {
		if k%n == i {
			out = append(out, q)
		}
	}
	return out
}

// shardOf parses Settings.Shard ("I/N"; "" = not sharded: 0/1).
func shardOf(s string) (i, n int, err error) {
	if s == "" {
		return 0, 1, nil
	}
	return ParseShard(s, func(string) string { return "" })
}

// Merge combines shard directories (each made by eval --shard I/N with the
// same settings) into out: it checks that they share settings, model,
// weights and questions and together hold every (question, variant) row
// exactly once, then writes results.jsonl, summary.json, report.md and
// report.html as a single run would (rows in question order; the timings
// are the shards'). qs is the full question set (LoadQuestions of the
// settings' file); its hash must be the shards'.
func Merge(out string, dirs []string, qs []Question, qsHash string) (*Summary, error) {
	if len(dirs) == 0 {
		return nil, errors.New("no shard directories")
	}
	type shard struct {
		dir     string
		set     Settings
		i, n    int
		results []Result
		repro   *Repro
		weights string
		legacy  bool // an older qbench's hash of the weights (legacyWeightsFile)
	}
	var shards []shard
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, settingsFile))
		if err != nil {
			return nil, fmt.Errorf("%s: not an eval directory (%v)", d, err)
		}
		sh := shard{dir: d}
		if err := json.Unmarshal(b, &sh.set); err != nil {
			return nil, fmt.Errorf("%s: bad JSON: %v", filepath.Join(d, settingsFile), err)
		}
		if sh.i, sh.n, err = shardOf(sh.set.Shard); err != nil {
			return nil, fmt.Errorf("%s: %v", d, err)
		}
		if sh.results, err = readResults(filepath.Join(d, "results.jsonl")); err != nil {
			return nil, err
		}
		if b, err := os.ReadFile(filepath.Join(d, "summary.json")); err == nil {
			var s Summary
			if err := json.Unmarshal(b, &s); err != nil {
				return nil, fmt.Errorf("%s: bad JSON: %v", filepath.Join(d, "summary.json"), err)
			}
			sh.repro = &s.Repro
		}
		if b, err := os.ReadFile(filepath.Join(d, weightsFile)); err == nil {
			sh.weights = strings.TrimSpace(string(b))
		} else if _, err := os.Stat(filepath.Join(d, legacyWeightsFile)); err == nil {
			sh.legacy = true
		}
		shards = append(shards, sh)
	}
	// One set of settings (the shard index aside), one N, every index once.
	base := shards[0].set
	base.Shard = ""
	want, _ := json.Marshal(base)
	n := shards[0].n
	seen := make([]string, n)
	var repro *Repro
	weights := ""
	for _, sh := range shards {
		s := sh.set
		s.Shard = ""
		if got, _ := json.Marshal(s); string(got) != string(want) {
			return nil, fmt.Errorf("%s: made with other settings than %s (model, adapters, questions or decoding)", sh.dir, shards[0].dir)
		}
		if sh.n != n {
			return nil, fmt.Errorf("%s: shard %d of %d, but %s is one of %d", sh.dir, sh.i, sh.n, shards[0].dir, n)
		}
		if seen[sh.i] != "" {
			return nil, fmt.Errorf("%s and %s are both shard %d of %d", seen[sh.i], sh.dir, sh.i, n)
		}
		seen[sh.i] = sh.dir
		if sh.legacy != shards[0].legacy {
			return nil, fmt.Errorf("%s and %s were made by qbench versions that hash the weights differently: their weights cannot be compared", shards[0].dir, sh.dir)
		}
		if sh.weights != "" {
			if weights != "" && sh.weights != weights {
				return nil, fmt.Errorf("%s: made from other weights (sha256 %.12s…, not %.12s…)", sh.dir, sh.weights, weights)
			}
			weights = sh.weights
		}
		if repro == nil && sh.repro != nil {
			repro = sh.repro
		} else if sh.repro != nil && (sh.repro.Tie != repro.Tie || sh.repro.Seed != repro.Seed) {
			return nil, fmt.Errorf("%s: --tie or --seed differ from the other shards'", sh.dir)
		}
	}
	for i, d := range seen {
		if d == "" {
			return nil, fmt.Errorf("shard %d of %d is missing", i, n)
		}
	}
	if base.QuestionsHash != qsHash {
		return nil, fmt.Errorf("the questions file %s is not the one the shards answered (sha256 differs)", base.Questions)
	}
	// Every row exactly once, each in the shard its question belongs to.
	index := map[string]int{}
	for k, q := range qs {
		index[q.ID] = k
	}
	variants := []string{"base"}
	for _, a := range base.Adapters {
		variants = append(variants, a.Name)
	}
	have := map[string]string{}
	var results []Result
	for _, sh := range shards {
		for _, r := range sh.results {
			k, ok := index[r.ID]
			if !ok {
				return nil, fmt.Errorf("%s: question %q is not in the questions file", sh.dir, r.ID)
			}
			if k%n != sh.i {
				return nil, fmt.Errorf("%s: holds question %q, which belongs to shard %d", sh.dir, r.ID, k%n)
			}
			if d, dup := have[key(r.ID, r.Variant)]; dup {
				return nil, fmt.Errorf("%s and %s both answer question %q with %s", d, sh.dir, r.ID, r.Variant)
			}
			have[key(r.ID, r.Variant)] = sh.dir
			results = append(results, r)
		}
	}
	for k, q := range qs {
		for _, v := range variants {
			if _, ok := have[key(q.ID, v)]; !ok {
				return nil, fmt.Errorf("%s: question %q has no %s answer (its run did not finish?)", seen[k%n], q.ID, v)
			}
		}
	}
	if repro == nil {
		return nil, errors.New("no shard wrote a summary.json (did every run finish?)")
	}
	unlock, err := LockOut(out)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sortResults(results, qs, variants)
	if err := writeResults(out, base, results); err != nil {
		return nil, err
	}
	if weights != "" {
		if err := writeText(filepath.Join(out, weightsFile), weights+"\n"); err != nil {
			return nil, err
		}
	}
	sum := Summarize(results, qs, variants, repro.Tie, repro.Seed)
	sum.Repro = *repro
	sum.Repro.Settings = base
	sum.Repro.Variants = variants
	if err := writeReports(out, sum); err != nil {
		return nil, err
	}
	return sum, nil
}

// readResults reads a results.jsonl (missing: none).
func readResults(path string) ([]Result, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Result
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for n := 1; sc.Scan(); n++ {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: line %d: %v", path, n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}
