//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qbench/qbench/eval"
	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

// TestRMSNormLoRA checks the fused rmsnorm_lora against its two unfused
// references: rmsnorm then lora_shrink on the GPU (kernel bugs: bit-equal
// norm, shrink within fp32 summation order) and RefRMSNorm + A·xn in float64,
// with 1, 2, 4 and 8 outputs a shrink block; and shrink_split + shrink_sum
// (K in 9 chunks, the last partial; 37 rows: two row groups, three adapter
// values in each) against the float64 reference.
func TestRMSNormLoRA(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 6))
	const M, H = 37, 2048 + 96
	adapters := make([]int, M)
	for m := range adapters {
		adapters[m] = m%3 - 1 // −1 (no adapter), 0, 1
	}
	x, w := randSlice(rng, M*H, 2), randSlice(rng, H, 1)
	ls := []*qwen.Linear{ // two slots; adapter 1 skips the second, adapter 0 has rank 4 < rmax
		{Name: "gate_proj", In: H, Out: 8, LoRA: []*lora.Module{{Rank: 4, In: H, A: randSlice(rng, 4*H, 0.1)}, {Rank: 8, In: H, A: randSlice(rng, 8*H, 0.1)}}},
		{Name: "up_proj", In: H, Out: 8, LoRA: []*lora.Module{{Rank: 4, In: H, A: randSlice(rng, 4*H, 0.1)}, nil}},
	}
	e := &Engine{Dev: d, rmax: 12}
	defer e.Close()
	for _, per := range []int{1, 2, 4, 8} {
		checkRMSNormLoRA(t, d, e, x, w, ls, adapters, per)
	}
}

func checkRMSNormLoRA(t *testing.T, d *Device, e *Engine, x, w []float32, ls []*qwen.Linear, adapters []int, per int) {
	const H, rmax = 2048 + 96, 12 // 24 outputs
	M := len(adapters)
	// the launcher's sms for per at M = 37 rows and 24 outputs: it doubles per
	// while M·⌈24 / 2per⌉ ≥ sms
	sms := map[int]int{1: 1 << 20, 2: 300, 4: 150, 8: 1}[per]
	meta := make([]rowMeta, M)
	for m, a := range adapters {
		meta[m].Adapter = int32(a)
	}
	var fusedXN, plainXN, fusedT, plainT, rowsT []float32
	err := d.Do(func() error {
		var err error
		if e.meta, err = uploadTo(e, meta, "meta"); err != nil {
			return err
		}
		xb, _ := uploadTo(e, x, "x")
		wb, _ := uploadTo(e, w, "w")
		run := func(kind string) ([]float32, []float32, error) {
			xn, _ := e.alloc(int64(M*H*4), "xn")
			tb, _ := e.alloc(int64(M*2*rmax*4), "t")
			d.Poison(xn)
			d.Poison(tb)
			sh, err := e.uploadShrink(ls, xn, tb, H)
			if err != nil {
				return nil, nil, err
			}
			switch {
			case kind == "rmsnorm_lora":
				c := rmsnormLoRACall(xn, xb, wb, H, 1e-6, sh.desc, 2, rmax, M, sms)
				if c.args[6] != per {
					return nil, nil, fmt.Errorf("rmsnormLoRACall with %d SMs: %v outputs a block, want %d", sms, c.args[6], per)
				}
				err = d.run(c)
			case kind == "lora_shrink":
				if err = d.run(rmsnormCall(xn, xb, wb, Buf{}, H, 1e-6, M)); err == nil {
					err = d.run(shrinkCall(sh.desc, rmax, 2, M))
				}
			default: // shrink_split
				if err = d.reserveSplit(shrinkWSBytes(2*rmax, H, M)); err != nil {
					return nil, nil, err
				}
				if err = d.run(rmsnormCall(xn, xb, wb, Buf{}, H, 1e-6, M)); err == nil {
					for _, c := range shrinkSplitCalls(sh.desc, 2*rmax, H, M, d.splitWS) {
						if err = d.run(c); err != nil {
							break
						}
					}
				}
			}
			if err != nil {
				return nil, nil, err
			}
			gx, gt := make([]float32, M*H), make([]float32, M*2*rmax)
			if err := Read(gx, xn); err != nil {
				return nil, nil, err
			}
			return gx, gt, Read(gt, tb)
		}
		if fusedXN, fusedT, err = run("rmsnorm_lora"); err != nil {
			return err
		}
		if _, rowsT, err = run("shrink_split"); err != nil {
			return err
		}
		plainXN, plainT, err = run("lora_shrink")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d outputs a shrink block", per)
	for i := range plainXN {
		if fusedXN[i] != plainXN[i] {
			t.Fatalf("normed output %d: fused %v, unfused %v (the same arithmetic: must be equal)", i, fusedXN[i], plainXN[i])
		}
	}
	if r := relErr(fusedT, plainT); r > fp32Tol {
		t.Errorf("shrink, fused vs unfused: relative error %.3g; %s", r, firstMismatch(fusedT, plainT, fp32Tol))
	}
	want := make([]float32, M*2*rmax)
	for m, a := range adapters {
		xn := RefRMSNorm(x[m*H:(m+1)*H], w, 1e-6)
		for s, l := range ls {
			if a < 0 || l.LoRA[a] == nil {
				continue
			}
			mod := l.LoRA[a]
			for j := 0; j < mod.Rank; j++ {
				var acc float64
				for k := 0; k < H; k++ {
					acc += float64(mod.A[j*H+k]) * float64(xn[k])
				}
				want[m*2*rmax+s*rmax+j] = float32(acc)
			}
		}
	}
	if r := relErr(fusedT, want); r > fp32Tol {
		t.Errorf("shrink vs float64 reference: relative error %.3g; %s", r, firstMismatch(fusedT, want, fp32Tol))
	}
	if r := relErr(rowsT, want); r > fp32Tol {
		t.Errorf("shrink_split vs float64 reference: relative error %.3g; %s", r, firstMismatch(rowsT, want, fp32Tol))
	}
}

// TestLoRAShrinkLong checks lora_shrink on rows longer than one round of
// its loads and than 48 KB of shared memory (the 7B shape's down projection,
// K = 18,944) against a float64 reference: rows without an adapter and ranks
// past an adapter's get zeros.
func TestLoRAShrinkLong(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 9))
	const K, rmax = 18944, 4
	adapters := []int{0, -1, 1}
	M := len(adapters)
	x := randSlice(rng, M*K, 1)
	ls := []*qwen.Linear{{Name: "down_proj", In: K, Out: 8, LoRA: []*lora.Module{{Rank: 4, In: K, A: randSlice(rng, 4*K, 0.1)}, {Rank: 2, In: K, A: randSlice(rng, 2*K, 0.1)}}}}
	e := &Engine{Dev: d, rmax: rmax}
	defer e.Close()
	meta := make([]rowMeta, M)
	for m, a := range adapters {
		meta[m].Adapter = int32(a)
	}
	got := make([]float32, M*rmax)
	err := d.Do(func() error {
		var err error
		if e.meta, err = uploadTo(e, meta, "meta"); err != nil {
			return err
		}
		xb, _ := uploadTo(e, x, "x")
		tb, _ := e.alloc(int64(M*rmax*4), "t")
		d.Poison(tb)
		sh, err := e.uploadShrink(ls, xb, tb, K)
		if err != nil {
			return err
		}
		if err := d.run(shrinkCall(sh.desc, rmax, 1, M)); err != nil {
			return err
		}
		return Read(got, tb)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, M*rmax)
	for m, a := range adapters {
		if a < 0 {
			continue
		}
		mod := ls[0].LoRA[a]
		for j := 0; j < mod.Rank; j++ {
			var acc float64
			for k := 0; k < K; k++ {
				acc += float64(mod.A[j*K+k]) * float64(x[m*K+k])
			}
			want[m*rmax+j] = float32(acc)
		}
	}
	if r := relErr(got, want); r > fp32Tol {
		t.Errorf("lora_shrink at K = %d vs float64 reference: relative error %.3g; %s", K, r, firstMismatch(got, want, fp32Tol))
	}
}

// TestEmbed checks the embedding gather (bf16 and fp32 tables) and the RoPE
// table against the CPU's arithmetic.
func TestEmbed(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 7))
	const vocab, H, hd = 300, 96, 32
	table := randSlice(rng, vocab*H, 1)
	for i := range table {
		table[i] = tensor.RoundBF16(table[i])
	}
	toks, pos := []int{299, 0, 17, 17}, []int{0, 5, 1000, 32767}
	meta := make([]rowMeta, len(toks))
	for m := range toks {
		meta[m] = rowMeta{Tok: int32(toks[m]), Pos: int32(pos[m])}
	}
	for _, bf16 := range []bool{true, false} {
		var gx, grope []float32
		err := d.Do(func() error {
			var tb Buf
			if bf16 {
				tb, _ = Upload(d, bf16Bits(table), "table")
			} else {
				tb, _ = Upload(d, table, "table")
			}
			mb, _ := Upload(d, meta, "meta")
			ib, _ := Upload(d, qwen.RopeInvFreq(&qwen.Config{HeadDim: hd, RopeTheta: 1e6}), "inv")
			xb, _ := d.Alloc(int64(len(toks)*H*4), "x")
			rb, _ := d.Alloc(int64(len(toks)*hd*4), "rope")
			defer func() { d.Free(&tb); d.Free(&mb); d.Free(&ib); d.Free(&xb); d.Free(&rb) }()
			d.Poison(xb)
			d.Poison(rb)
			if err := d.run(embedCall(xb, tb, bf16, mb, H, rb, ib, hd/2, len(toks))); err != nil {
				return err
			}
			gx, grope = make([]float32, len(toks)*H), make([]float32, len(toks)*hd)
			if err := Read(gx, xb); err != nil {
				return err
			}
			return Read(grope, rb)
		})
		if err != nil {
			t.Fatal(err)
		}
		for m, tok := range toks {
			for k := 0; k < H; k++ {
				if gx[m*H+k] != table[tok*H+k] {
					t.Fatalf("bf16 %v: row %d (token %d) column %d: %v, want %v", bf16, m, tok, k, gx[m*H+k], table[tok*H+k])
				}
			}
		}
		if r := relErr(grope, ropeTable(pos, hd, 1e6)); r > 1e-6 {
			t.Errorf("RoPE table: relative error %.3g", r)
		}
	}
}

// TestTargetLogprob checks log_softmax(logits)[target] against float64 on
// a full vocabulary with a dominant logit, a flat row and a target at the end.
func TestTargetLogprob(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 8))
	const V = 151936
	l := randSlice(rng, 3*V, 3)
	l[0*V+5] = 40
	for i := V; i < 2*V; i++ {
		l[i] = 0.25
	}
	targets := []int32{5, 77, V - 1}
	var got []float32
	err := d.Do(func() error {
		lb, _ := Upload(d, l, "logits")
		tb, _ := Upload(d, targets, "targets")
		ob, _ := d.Alloc(3*4, "out")
		defer func() { d.Free(&lb); d.Free(&tb); d.Free(&ob) }()
		d.Poison(ob)
		if err := d.run(targetLogprobCall(ob, lb, tb, V, 3)); err != nil {
			return err
		}
		got = make([]float32, 3)
		return Read(got, ob)
	})
	if err != nil {
		t.Fatal(err)
	}
	for m, tg := range targets {
		want := eval.LogSoftmaxAt(l[m*V:(m+1)*V], int(tg))
		if d := math.Abs(float64(got[m]) - want); !(d <= 1e-5*math.Max(1, math.Abs(want))) {
			t.Errorf("row %d target %d: %v, want %v", m, tg, got[m], want)
		}
	}
}
