//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qbench/qbench/eval"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

const (
	tinyDir = "../testdata/tiny-qwen2"
	bnbDir  = "../testdata/tiny-qwen2-bnb-4bit"
	loraDir = "../testdata/tiny-qwen2-lora"
	golden  = "../testdata/tiny-qwen2-golden.safetensors"
)

// loadEngine loads a model directory and puts it on the device (an engine
// for one sequence), closed when the test ends.
func loadEngine(t *testing.T, d *Device, dir string, opt qwen.LoadOptions) (*qwen.Model, *Engine) {
	t.Helper()
	m, err := qwen.Load(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(d, m, 256, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return m, e
}

// TestModelParity runs the tiny model's fixture variants through the GPU
// engine: logits at every position against the CPU reference (both fp32:
// 1e-4 absolute) and the Python reference's top-8 (1e-3), and the 16 greedy
// tokens through the CUDA-graph decode path.
func TestModelParity(t *testing.T) {
	d := device(t)
	g, err := tensor.Open(golden)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ints := func(name string) []int {
		tn, err := g.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := tn.I64()
		out := make([]int, len(v))
		for i, x := range v {
			out[i] = int(x)
		}
		return out
	}
	cases := []struct {
		variant, dir, quant string
		lora                bool
	}{
		{"bf16", tinyDir, "", false},
		{"bf16_lora", tinyDir, "", true},
		{"nf4dq", tinyDir, "nf4-dq", false},
		{"nf4dq_lora", tinyDir, "nf4-dq", true},
		{"nf4", tinyDir, "nf4", false},
		{"nf4dq", bnbDir, "", false},
		{"nf4dq_lora", bnbDir, "", true},
	}
	for _, c := range cases {
		t.Run(c.variant+"/"+c.dir[len("../testdata/"):], func(t *testing.T) {
			opt := qwen.LoadOptions{Quant: c.quant}
			adapter := -1
			if c.lora {
				opt.Adapters, adapter = []string{loraDir}, 0
			}
			m, e := loadEngine(t, d, c.dir, opt)
			cpu := qwen.NewRunner(m)
			V := m.Config.Vocab
			for k := 0; k < 3; k++ {
				name := fmt.Sprintf("seq%d", k)
				ids := ints(name + ".input_ids")
				s, err := e.NewSeq(len(ids), adapter)
				if err != nil {
					t.Fatal(err)
				}
				got, err := e.Forward([]*qwen.Seq{s}, [][]int{ids}, true)
				e.Release(s)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := cpu.Forward([]*qwen.Seq{m.NewSeq(len(ids), adapter)}, [][]int{ids}, true)
				var worst float64
				for i := range want {
					worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
				}
				if !(worst <= 1e-4) {
					t.Errorf("%s: GPU vs CPU logits max |Δ| = %.3g > 1e-4", name, worst)
				}
				top, _ := g.Get(name + "." + c.variant + ".top8_vals")
				topv := top.F32()
				topi := ints(name + "." + c.variant + ".top8_ids")
				for p := range ids {
					for j := 0; j < 8; j++ {
						if dd := math.Abs(float64(got[p*V+topi[p*8+j]] - topv[p*8+j])); dd > 1e-3 {
							t.Fatalf("%s pos %d: logit %d off the reference by %.3g", name, p, topi[p*8+j], dd)
						}
					}
					if a := qwen.Argmax(got[p*V : (p+1)*V]); a != topi[p*8] {
						t.Errorf("%s pos %d: top-1 %d, reference %d", name, p, a, topi[p*8])
					}
				}
				out, err := qwen.Generate(e, [][]int{ids}, []int{adapter}, []*qwen.Sampler{qwen.NewSampler(qwen.Sampling{})}, qwen.GenerateOptions{MaxNewTokens: 16})
				if err != nil {
					t.Fatal(err)
				}
				if w := ints(name + "." + c.variant + ".greedy"); fmt.Sprint(out[0]) != fmt.Sprint(w) {
					t.Errorf("%s greedy = %v, reference %v", name, out[0], w)
				}
				t.Logf("%s: GPU vs CPU max |Δ| %.3g", name, worst)
			}
		})
	}
}

// TestBatchedAdaptersOnGPU: base and adapter rows in one GPU batch give the
// tokens they give alone, and the tokens of the CPU reference.
func TestBatchedAdaptersOnGPU(t *testing.T) {
	d := device(t)
	m, e := loadEngine(t, d, bnbDir, qwen.LoadOptions{Adapters: []string{loraDir, loraDir}})
	prompts := [][]int{{151644, 872, 198, 3838, 374}, {9707, 11, 1879}, {151644, 872, 198, 3838, 374}, {9707, 11, 1879, 0}}
	adapters := []int{-1, 0, 1, 0}
	greedy := func(n int) []*qwen.Sampler {
		s := make([]*qwen.Sampler, n)
		for i := range s {
			s[i] = qwen.NewSampler(qwen.Sampling{})
		}
		return s
	}
	opt := qwen.GenerateOptions{MaxNewTokens: 20}
	batched, err := qwen.Generate(e, prompts, adapters, greedy(4), opt)
	if err != nil {
		t.Fatal(err)
	}
	cpu, _ := qwen.Generate(qwen.NewRunner(m), prompts, adapters, greedy(4), opt)
	for i := range prompts {
		alone, err := qwen.Generate(e, prompts[i:i+1], adapters[i:i+1], greedy(1), opt)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(alone[0]) != fmt.Sprint(batched[i]) || fmt.Sprint(cpu[i]) != fmt.Sprint(batched[i]) {
			t.Errorf("row %d: batched %v, alone %v, CPU %v", i, batched[i], alone[0], cpu[i])
		}
	}
}

// TestLogProbsOnDevice: the teacher-forced log-likelihood computed on the
// device (target_logprob) equals the CPU reference's.
func TestLogProbsOnDevice(t *testing.T) {
	d := device(t)
	m, e := loadEngine(t, d, bnbDir, qwen.LoadOptions{Adapters: []string{loraDir}})
	prompt := []int{151644, 872, 198, 3838, 374, 21018, 22715, 11, 151645, 198, 151644, 77091, 198}
	expected := []int{1654, 3042, 264, 29728, 8806, 34647}
	for _, adapter := range []int{-1, 0} {
		gpu, err := eval.LogLikelihood(e, prompt, expected, adapter)
		if err != nil {
			t.Fatal(err)
		}
		cpu, err := eval.LogLikelihood(qwen.NewRunner(m), prompt, expected, adapter)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(gpu-cpu) > 1e-4 {
			t.Errorf("adapter %d: log-likelihood GPU %v, CPU %v", adapter, gpu, cpu)
		}
	}
}

// TestTensorCoreModel runs a small synthetic model whose shapes the
// tensor-core kernels take (hidden 256, head_dim 64) with a LoRA adapter,
// batched rows on both adapters, through the engine built for batches (MMA)
// and for one sequence (nf4_lut), against the CPU reference.
func TestTensorCoreModel(t *testing.T) {
	d := device(t)
	cfg := smallConfig()
	m := SyntheticModel(cfg, 7)
	AddSyntheticAdapter(m, 16, 8)
	prompts := [][]int{{1, 2, 3, 4, 5, 6, 7}, {9, 8, 7}, {100, 200, 300, 400}}
	adapters := []int{0, -1, 0}
	cpu := qwen.NewRunner(m)
	var want []float32
	for i, p := range prompts {
		s := m.NewSeq(len(p), adapters[i])
		l, err := cpu.Forward([]*qwen.Seq{s}, [][]int{p}, true)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, l...)
	}
	for _, batch := range []int{1, 4} {
		e, err := NewEngine(d, m, 64, batch)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[int]kernelKind{1: kindLUTNF4, 4: kindMMANF4}[batch]; e.layers[0].qkv.kind != want || e.layers[0].down.kind != want {
			t.Fatalf("engine for batch %d runs q/k/v with kernel %d, down with %d, want %d", batch, e.layers[0].qkv.kind, e.layers[0].down.kind, want)
		}
		seqs := make([]*qwen.Seq, len(prompts))
		for i, p := range prompts {
			if seqs[i], err = e.NewSeq(len(p), adapters[i]); err != nil {
				t.Fatal(err)
			}
		}
		got, err := e.Forward(seqs, prompts, true) // all rows of three sequences in one pass
		for _, s := range seqs {
			e.Release(s)
		}
		e.Close()
		if err != nil {
			t.Fatal(err)
		}
		if r := relErr(got, want); r > 1e-4 {
			t.Errorf("batch engine %d: logits relative error %.3g > 1e-4; %s", batch, r, firstMismatch(got, want, 1e-4))
		} else {
			t.Logf("batch engine %d: logits relative error %.3g", batch, r)
		}
	}
}

// TestLongPass: a prompt longer than one pass holds (the engine takes 256
// rows) runs in chunks; logits at every position and the teacher-forced
// log-probabilities match the CPU reference, which takes it in one pass.
func TestLongPass(t *testing.T) {
	d := device(t)
	m, e := loadEngine(t, d, bnbDir, qwen.LoadOptions{Adapters: []string{loraDir}})
	rng := rand.New(rand.NewPCG(rand.Uint64(), 9))
	const n = 600
	toks, targets := make([]int, n), make([]int, n)
	for i := range toks {
		toks[i], targets[i] = rng.IntN(m.Config.Vocab), rng.IntN(m.Config.Vocab)
	}
	cpu := qwen.NewRunner(m)
	cs := m.NewSeq(n, 0)
	want, err := cpu.Forward([]*qwen.Seq{cs}, [][]int{toks}, true)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := e.NewSeq(n, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release(gs)
	got, err := e.Forward([]*qwen.Seq{gs}, [][]int{toks}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || gs.Len != n {
		t.Fatalf("%d logits at length %d, want %d at %d", len(got), gs.Len, len(want), n)
	}
	if r := relErr(got, want); r > 1e-4 {
		t.Errorf("logits over %d positions: relative error %.3g; %s", n, r, firstMismatch(got, want, 1e-4))
	}
	ls, err := e.NewSeq(n, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release(ls)
	lp, err := e.TargetLogProbs(ls, toks, targets)
	if err != nil {
		t.Fatal(err)
	}
	V := m.Config.Vocab
	for i := range toks {
		if w := eval.LogSoftmaxAt(want[i*V:(i+1)*V], targets[i]); math.Abs(lp[i]-w) > 1e-4 {
			t.Fatalf("position %d: log p %v, want %v", i, lp[i], w)
		}
	}
}

// TestTwoEngines: two engines on one device decode step by step in turn;
// each must replay its own graphs (they were once cached on the device by
// shape, so the second engine replayed the first's) and match its CPU run.
func TestTwoEngines(t *testing.T) {
	d := device(t)
	ma, ea := loadEngine(t, d, tinyDir, qwen.LoadOptions{Quant: "nf4-dq"})
	mb, eb := loadEngine(t, d, bnbDir, qwen.LoadOptions{Adapters: []string{loraDir}})
	prompt := []int{151644, 872, 198, 3838, 374, 21018, 22715}
	greedy := func(e qwen.Engine, adapter int) []int {
		toks, err := qwen.Generate(e, [][]int{prompt}, []int{adapter}, []*qwen.Sampler{qwen.NewSampler(qwen.Sampling{})}, qwen.GenerateOptions{MaxNewTokens: 12})
		if err != nil {
			t.Fatal(err)
		}
		return toks[0]
	}
	wantA, wantB := greedy(qwen.NewRunner(ma), -1), greedy(qwen.NewRunner(mb), 0)
	sa, err := ea.NewSeq(32, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ea.Release(sa)
	sb, err := eb.NewSeq(32, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer eb.Release(sb)
	step := func(e *Engine, s *qwen.Seq, toks []int) int {
		ids, err := e.ForwardArgmax([]*qwen.Seq{s}, [][]int{toks})
		if err != nil {
			t.Fatal(err)
		}
		return ids[0]
	}
	ta, tb := step(ea, sa, prompt), step(eb, sb, prompt)
	gotA, gotB := []int{ta}, []int{tb}
	for len(gotA) < len(wantA) { // one graph-replayed step each, in turn: the same shapes
		ta, tb = step(ea, sa, []int{ta}), step(eb, sb, []int{tb})
		gotA, gotB = append(gotA, ta), append(gotB, tb)
	}
	if fmt.Sprint(gotA) != fmt.Sprint(wantA[:len(gotA)]) || fmt.Sprint(gotB[:len(wantB)]) != fmt.Sprint(wantB) {
		t.Fatalf("engine A %v, want %v; engine B %v, want %v", gotA, wantA, gotB, wantB)
	}
}

// TestDecodeStepsLoRA: decode steps (one new row a sequence, graphs, the o
// shrink folded into attn_combine_lora) give the CPU reference's logits, for
// rows of two adapters of different ranks (16 and 40: rmax 40 takes three
// rounds of 16 outputs, and zeros past the smaller rank) and rows without
// one, in engines for one sequence and for batches (3 rows: graphs; 17:
// direct launches, directRows); the o shrink's heads met in a cluster
// (attn_combine_lora_c, on Hopper: batch 1) and through a counter; the
// attention in one launch with the o shrink (attn_decode_lora_c, on Hopper:
// batches 4 and 32).
func TestDecodeStepsLoRA(t *testing.T) {
	d := device(t)
	cfg := smallConfig()
	m := SyntheticModel(cfg, rand.Uint64())
	AddSyntheticAdapter(m, 16, rand.Uint64())
	AddSyntheticAdapter(m, 40, rand.Uint64())
	rng := rand.New(rand.NewPCG(rand.Uint64(), 5))
	many, more := make([]int, 17), make([]int, 40)
	for i := range more {
		more[i] = i%3 - 1
	}
	copy(many, more)
	defer func(cc bool) { d.combineCluster = cc }(d.combineCluster)
	cluster := d.combineCluster
	for _, c := range []struct {
		batch     int
		adapters  []int
		noCluster bool
	}{{1, []int{1}, false}, {1, []int{0}, false}, {1, []int{-1}, false}, {1, []int{1}, true}, {4, []int{0, -1, 1}, false}, {4, []int{0, -1, 1}, true},
		{32, many, false}, {40, more, false}} { // 40: decode steps finish o and down in resid_norm
		d.combineCluster = cluster && !c.noCluster
		n := len(c.adapters)
		e, err := NewEngine(d, m, 256, c.batch)
		if err != nil {
			t.Fatal(err)
		}
		cpu := qwen.NewRunner(m)
		gs, cs := make([]*qwen.Seq, n), make([]*qwen.Seq, n)
		for i := range gs {
			if gs[i], err = e.NewSeq(32, c.adapters[i]); err != nil {
				t.Fatal(err)
			}
			cs[i] = m.NewSeq(32, c.adapters[i])
		}
		toks := make([][]int, n) // prompts of 1 to 8 tokens
		for i := range toks {
			for range 1 + rng.IntN(8) {
				toks[i] = append(toks[i], rng.IntN(cfg.Vocab))
			}
		}
		stepsAgainstCPU(t, e, cpu, gs, cs, toks, rng, cfg.Vocab, fmt.Sprintf("batch %d, adapters %v, combine cluster %v, attention in one launch %v", c.batch, c.adapters, d.combineCluster, e.attnDecode(pass{rows: n, oneEach: true, splits: 1}, true)))
		for _, s := range gs {
			e.Release(s)
		}
		e.Close()
	}
}

// stepsAgainstCPU runs six forward passes of the sequences gs on e and of
// their CPU twins cs on cpu — first toks, then a random token a sequence —
// and fails where the logits differ by more than 1e-4 (relative).
func stepsAgainstCPU(t *testing.T, e *Engine, cpu *qwen.Runner, gs, cs []*qwen.Seq, toks [][]int, rng *rand.Rand, vocab int, what string) {
	t.Helper()
	for step := 0; step < 6; step++ {
		got, err := e.Forward(gs, toks, false)
		if err != nil {
			t.Fatal(err)
		}
		want, err := cpu.Forward(cs, toks, false)
		if err != nil {
			t.Fatal(err)
		}
		if r := relErr(got, want); r > 1e-4 {
			t.Errorf("%s, step %d: logits relative error %.3g > 1e-4; %s", what, step, r, firstMismatch(got, want, 1e-4))
		}
		toks = make([][]int, len(gs))
		for i := range toks {
			toks[i] = []int{rng.IntN(vocab)}
		}
	}
}

// TestFusedNorm: decode steps of an engine for one sequence without adapters
// run the RMSNorms inside nf4_lut (deferNorm: no norm launch in the step)
// and give the CPU reference's logits, as with the norms' own launches
// (QBENCH_NO_NORM_FUSE=1).
func TestFusedNorm(t *testing.T) {
	d := device(t)
	cfg := smallConfig()
	m := SyntheticModel(cfg, rand.Uint64())
	rng := rand.New(rand.NewPCG(rand.Uint64(), 6))
	for _, off := range []string{"", "1"} {
		t.Setenv("QBENCH_NO_NORM_FUSE", off)
		e, err := NewEngine(d, m, 256, 1)
		if err != nil {
			t.Fatal(err)
		}
		if e.layers[0].qkv.kind != kindLUTNF4 || e.layers[0].gateup.kind != kindLUTNF4 {
			t.Fatalf("q/k/v on kernel %d, gate/up on %d, want nf4_lut (%d)", e.layers[0].qkv.kind, e.layers[0].gateup.kind, kindLUTNF4)
		}
		cpu := qwen.NewRunner(m)
		gs, err := e.NewSeq(32, -1)
		if err != nil {
			t.Fatal(err)
		}
		toks := [][]int{{rng.IntN(cfg.Vocab), rng.IntN(cfg.Vocab), rng.IntN(cfg.Vocab)}}
		stepsAgainstCPU(t, e, cpu, []*qwen.Seq{gs}, []*qwen.Seq{m.NewSeq(32, -1)}, toks, rng, cfg.Vocab, fmt.Sprintf("QBENCH_NO_NORM_FUSE=%q", off))
		kt, err := e.ProfileStep([]*qwen.Seq{gs}, [][]int{{rng.IntN(cfg.Vocab)}}, 1, false)
		if err != nil {
			t.Fatal(err)
		}
		norms := 0
		for _, k := range kt {
			if k.Label == stepNormAttn || k.Label == stepNormMLP {
				norms += k.Calls
			}
		}
		if want := map[string]int{"": 0, "1": 2 * cfg.Layers}[off]; norms != want {
			t.Errorf("QBENCH_NO_NORM_FUSE=%q: %d norm launches a step, want %d", off, norms, want)
		}
		e.Release(gs)
		e.Close()
	}
}

// TestResidNorm: decode steps whose o and down finishes run fused with the
// next RMSNorm and its shrinks (resid_norm, a block a row; resid_norm_c, a
// cluster a row where the device has clusters) give the logits of the
// unfused launches (mmas_finish, rmsnorm_lora) to 1e-5 — the same
// arithmetic but for the order of the shrinks' and the norm's sums — with and
// without adapters, at 4, 17 and 40 rows. Two engines step side by side,
// each capturing its decode graph under its own setting.
func TestResidNorm(t *testing.T) {
	d := device(t)
	on, cl, all := d.residNorm, d.residCluster, d.residClusterAll
	defer func() { d.residNorm, d.residCluster, d.residClusterAll = on, cl, all }()
	cfg := smallConfig()
	rng := rand.New(rand.NewPCG(rand.Uint64(), 9))
	base := SyntheticModel(cfg, rand.Uint64())
	tuned := SyntheticModel(cfg, rand.Uint64())
	AddSyntheticAdapter(tuned, 16, rand.Uint64())
	type setting struct{ fused, cluster int } // fused: 0 off, 1 on; cluster: resid_norm_c's blocks (0: resid_norm)
	for _, c := range []struct {
		m       *qwen.Model
		rows    int
		fused   setting
		adapter int
	}{{base, 4, setting{1, 0}, -1}, {tuned, 17, setting{1, 4}, 0}, {tuned, 17, setting{1, 2}, 0}, {tuned, 40, setting{1, 0}, 0}, {tuned, 40, setting{1, 4}, 0}} {
		if c.fused.cluster > 0 && cl == 0 {
			continue // no clusters on this device (or QBENCH_RESID_CLUSTER=0)
		}
		set := func(s setting) {
			d.residNorm, d.residCluster, d.residClusterAll = s.fused == 1, s.cluster, s.cluster > 0
		}
		name := fmt.Sprintf("rows %d, cluster %d, adapter %d", c.rows, c.fused.cluster, c.adapter)
		var es [2]*Engine
		var gs [2][]*qwen.Seq
		for k := range es {
			var err error
			if es[k], err = NewEngine(d, c.m, 64, c.rows); err != nil {
				t.Fatal(err)
			}
			defer es[k].Close()
			for range c.rows {
				s, err := es[k].NewSeq(16, c.adapter)
				if err != nil {
					t.Fatal(err)
				}
				gs[k] = append(gs[k], s)
			}
		}
		toks := make([][]int, c.rows)
		for i := range toks {
			toks[i] = []int{rng.IntN(cfg.Vocab), rng.IntN(cfg.Vocab)}
		}
		for step := 0; step < 4; step++ {
			var got [2][]float32
			for k, s := range []setting{c.fused, {}} {
				set(s)
				var err error
				if got[k], err = es[k].Forward(gs[k], toks, false); err != nil {
					t.Fatal(err)
				}
			}
			if r := relErr(got[0], got[1]); r > 1e-5 {
				t.Errorf("%s, step %d: fused against unfused logits, relative error %.3g > 1e-5; %s", name, step, r, firstMismatch(got[0], got[1], 1e-5))
			}
			for i := range toks {
				toks[i] = []int{rng.IntN(cfg.Vocab)}
			}
		}
	}
}

// TestTargetLogProbsBatch: teacher-forced log-probabilities of sequences of
// three adapter values sharing passes (one of them longer than a pass, run
// alone in chunks; two filling a pass past prefillMin rows) match the CPU
// reference position by position.
func TestTargetLogProbsBatch(t *testing.T) {
	d := device(t)
	cfg := smallConfig()
	m := SyntheticModel(cfg, rand.Uint64())
	AddSyntheticAdapter(m, 16, rand.Uint64())
	AddSyntheticAdapter(m, 8, rand.Uint64())
	rng := rand.New(rand.NewPCG(rand.Uint64(), 7))
	lens, adapters := []int{5, 40, 300, 100, 130}, []int{0, -1, 1, 0, -1}
	e, err := NewEngine(d, m, 256, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cpu := qwen.NewRunner(m)
	seqs, toks, targets := make([]*qwen.Seq, len(lens)), make([][]int, len(lens)), make([][]int, len(lens))
	for i, n := range lens {
		for range n {
			toks[i], targets[i] = append(toks[i], rng.IntN(cfg.Vocab)), append(targets[i], rng.IntN(cfg.Vocab))
		}
		if seqs[i], err = e.NewSeq(n, adapters[i]); err != nil {
			t.Fatal(err)
		}
		defer e.Release(seqs[i])
	}
	got, err := e.TargetLogProbsBatch(seqs, toks, targets)
	if err != nil {
		t.Fatal(err)
	}
	V := cfg.Vocab
	for i, n := range lens {
		want, err := cpu.Forward([]*qwen.Seq{m.NewSeq(n, adapters[i])}, [][]int{toks[i]}, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(got[i]) != n || seqs[i].Len != n {
			t.Fatalf("sequence %d: %d log-probabilities at length %d, want %d", i, len(got[i]), seqs[i].Len, n)
		}
		for j := range n {
			if w := eval.LogSoftmaxAt(want[j*V:(j+1)*V], targets[i][j]); math.Abs(got[i][j]-w) > 1e-4 {
				t.Fatalf("sequence %d position %d: log p %v, want %v", i, j, got[i][j], w)
			}
		}
	}
}

// smallConfig is a two-layer Qwen2-shaped configuration small enough for the
// CPU reference, with GQA, a tied head and an intermediate size that is not
// a multiple of 256 (a partial last step in the NF4 kernels).
func smallConfig() *qwen.Config {
	return &qwen.Config{ModelType: "qwen2", Hidden: 256, Intermediate: 704, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 64,
		Vocab: 1000, RMSEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true}
}
