//go:build cuda

package kernels

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/qbench/qbench/lora"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

var (
	devOnce sync.Once
	dev     *Device
	devErr  error
)

// device opens GPU 0 once for all tests, or skips with a one-line reason.
func device(t testing.TB) *Device {
	devOnce.Do(func() { dev, devErr = Open(0) })
	if errors.Is(devErr, ErrNoDevice) {
		t.Skipf("no usable CUDA device: %v", devErr)
	}
	if devErr != nil { // a device that fails to load the kernels is a failure, not a skip
		t.Fatal(devErr)
	}
	return dev
}

func TestStructLayout(t *testing.T) {
	d := device(t)
	got := make([]int64, 9)
	err := d.Do(func() error {
		b, err := d.Alloc(9*8, "layout")
		if err != nil {
			return err
		}
		defer d.Free(&b)
		if err := d.run(layoutCall(b)); err != nil {
			return err
		}
		return Read(got, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{int64(unsafe.Sizeof(mat{})), int64(unsafe.Sizeof(rowMeta{})), int64(unsafe.Sizeof(gemvOp{})), int64(unsafe.Sizeof(shrinkOp{})),
		int64(unsafe.Offsetof(mat{}.LoraScale)), int64(unsafe.Offsetof(mat{}.Offset)), int64(unsafe.Offsetof(gemvOp{}.X)),
		int64(unsafe.Offsetof(gemvOp{}.KVDim)), int64(unsafe.Offsetof(shrinkOp{}.X))}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("C layout %v, Go %v", got, want)
	}
}

func randSlice(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return v
}

// randLinear makes an [out, in] projection in format f ("nf4", "nf4dq",
// "bf16", "f32") with a bias and LoRA modules for adapters 0 (rank 4) and 1
// (rank 8, absent when skip1).
func randLinear(rng *rand.Rand, name string, out, in int, f string, skip1 bool) *qwen.Linear {
	w := randSlice(rng, out*in, 1/math.Sqrt(float64(in)))
	l := &qwen.Linear{Name: name, Out: out, In: in, W: w, Bias: randSlice(rng, out, 0.3), DType: tensor.F32}
	switch f {
	case "nf4", "nf4dq":
		for i := range w {
			w[i] = tensor.RoundBF16(w[i])
		}
		q, err := tensor.QuantizeNF4(w, []int{out, in}, tensor.BF16, f == "nf4dq")
		if err != nil {
			panic(err)
		}
		l.Quant, l.W = q, q.Dequantize()
	case "bf16":
		for i := range w {
			w[i] = tensor.RoundBF16(w[i])
		}
		l.DType = tensor.BF16
	}
	for a, r := range []int{4, 8} {
		if a == 1 && skip1 {
			l.LoRA = append(l.LoRA, nil)
			continue
		}
		l.LoRA = append(l.LoRA, &lora.Module{Rank: r, In: in, Out: out, A: randSlice(rng, r*in, 0.1), B: randSlice(rng, out*r, 0.1), Scale: 1.5})
	}
	return l
}

// relErr is max|got − want| / max|want|; NaN anywhere fails.
func relErr(got, want []float32) float64 {
	var d, m float64
	for i := range want {
		if math.IsNaN(float64(got[i])) {
			return math.Inf(1)
		}
		d = math.Max(d, math.Abs(float64(got[i]-want[i])))
		m = math.Max(m, math.Abs(float64(want[i])))
	}
	return d / m
}

func firstMismatch(got, want []float32, tol float64) string {
	var mx float64
	for _, v := range want {
		mx = math.Max(mx, math.Abs(float64(v)))
	}
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); !(d <= tol*mx) {
			return fmt.Sprintf("first mismatch at %d: got %v want %v", i, got[i], want[i])
		}
	}
	return ""
}

const fp32Tol = 1e-5 // fp32 accumulation in a different order than the float64 reference

// TestGemv runs every epilogue mode and weight format against RefLinear on
// fresh random inputs: sizes that are not multiples of the tiles, 11 batch
// rows (not a multiple of 8) with the adapter pattern −1, 0, 1, … (adapter 1
// skips the second matrix), outputs poisoned with NaN first.
func TestGemv(t *testing.T) {
	d := device(t)
	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 3))
	t.Logf("seed %d", seed)
	const K, hd = 96, 16
	wide, dense, wgSplit := d.wideBatchPairs, d.denseWGMin, d.wgSplitMin
	defer func() { d.wideBatchPairs, d.denseWGMin, d.wgSplitMin = wide, dense, wgSplit }()
	cycle := func(M, n int) []int { // −1, 0, 1, … n − 2, −1, …: base rows and adapters
		a := make([]int, M)
		for m := range a {
			a[m] = m%n - 1
		}
		return a
	}
	pattern := func(M int) []int { return cycle(M, 3) } // adapter 1 skips a matrix
	for _, f := range []string{"nf4dq", "nf4", "bf16", "f32", "nf4dq-tiled", "nf4dq-mma", "nf4-mma", "bf16-mma", "nf4dq-lut", "nf4-lut"} {
		K, eng, oN, guN := K, "", 40, 24 // row counts off the tiles
		batches := [][]int{pattern(11)}
		switch f {
		case "nf4dq-tiled": // in ≥ 1024: the codes are reordered into tiles on upload, a 128-column tail kept plain
			f, K = "nf4dq", 2048+128
		case "nf4dq-mma", "nf4-mma", "bf16-mma": // the tensor-core batch kernels: rows in 16s, whole 64-blocks, 9 steps of K (the last one block); NT = 2, 3, 8, then 8 in two launches
			f, K, eng, oN, guN = f[:len(f)-4], 2048+64, "mma", 48, 32
			batches = [][]int{pattern(11), pattern(20), pattern(37), pattern(40), pattern(50), pattern(70), pattern(100), pattern(130), pattern(300), cycle(130, 2)} // 50, 100 (below), 130, 300: prefill_nf4 (64-row blocks, a partial last one) or prefill_wgmma (its LoRA step: adapter 1, or 0 below rmax, and the epilogue's for 0)
		case "nf4dq-lut", "nf4-lut": // nf4_lut: rows in 16s, 33 blocks (a partial last step); one, two rows; eleven and 130 (mmas_nf4, prefill_nf4 on nf4_lut's codes)
			f, K, eng, oN, guN = f[:len(f)-4], 2048+64, "lut", 48, 32
			batches = [][]int{{0}, {1, -1}, pattern(11), pattern(130)}
		}
		for _, adapters := range batches {
			d.wideBatchPairs, d.denseWGMin, d.wgSplitMin = wide, 1<<30, 1<<30 // the batch kernels (mmas_nf4, mmas_bf16) but for
			if len(adapters) == 50 || len(adapters) == 100 {                  // prefill_wgmma(_64) and dense_wgmma(_64), as the engine runs the wide matrices and lm_head of batches
				d.wideBatchPairs, d.denseWGMin = 0, 0
			}
			if len(adapters) == 40 { // wgmma_split_64 (9 splits, the last of one step) and mmas_finish
				d.wgSplitMin = 0
			}
			for i, mode := range []int{modeStore, modeResid, modeGateUp, modeQKV} {
				wpp := []int{0, 2, 8, 4}[i] // the launcher's choice, and forced splits of K (8 leaves some warps no columns)
				t.Run(fmt.Sprintf("%s%s/K%d/M%d/mode%d/wpp%d", f, eng, K, len(adapters), mode, wpp), func(t *testing.T) {
					var ls []*qwen.Linear
					switch mode {
					case modeStore, modeResid:
						ls = []*qwen.Linear{randLinear(rng, "o_proj", oN, K, f, false)}
					case modeGateUp:
						ls = []*qwen.Linear{randLinear(rng, "gate_proj", guN, K, f, false), randLinear(rng, "up_proj", guN, K, f, true)}
					case modeQKV:
						ls = []*qwen.Linear{randLinear(rng, "q_proj", 2*hd, K, f, false), randLinear(rng, "k_proj", hd, K, f, true), randLinear(rng, "v_proj", hd, K, f, false)}
					}
					checkGemv(t, d, rng, ls, mode, adapters, hd, wpp, eng)
				})
			}
		}
	}
}

// ropeTable is the embed kernel's RoPE table for positions pos: [M, hd/2, 2]
// cos and sin of pos·invFreq (fp32 angle, as transformers).
func ropeTable(pos []int, hd int, theta float64) []float32 {
	inv := qwen.RopeInvFreq(&qwen.Config{HeadDim: hd, RopeTheta: theta})
	rope := make([]float32, len(pos)*hd)
	for m, p := range pos {
		for j, f := range inv {
			ang := float32(p) * f
			rope[(m*hd/2+j)*2], rope[(m*hd/2+j)*2+1] = float32(math.Cos(float64(ang))), float32(math.Sin(float64(ang)))
		}
	}
	return rope
}

// checkGemv runs one fused matrix op (after its LoRA shrink) through the
// kernel the engine picks for it (eng "mma": a batch engine, "lut": an
// engine for one sequence, "": neither) and compares with RefLinear.
func checkGemv(t *testing.T, d *Device, rng *rand.Rand, ls []*qwen.Linear, mode int, adapters []int, hd, wpp int, eng string) {
	M, K := len(adapters), ls[0].In
	x := randSlice(rng, M*K, 1)
	e := &Engine{Dev: d, MaxRows: M, rmax: 8, mma: eng == "mma", lut: eng == "lut"} // MaxRows: the x planes of prefill_wgmma and dense_wgmma (reservePlanes)
	defer e.Close()
	const layers, capTok, layer = 2, 8, 1
	kvDim := hd
	pos := make([]int, M)
	meta := make([]rowMeta, M)
	var caches []Buf
	var yInit []float32
	ldy := ls[0].Out // for QKV: q's width
	var got []float32
	var kGot, vGot [][]float32
	err := d.Do(func() error {
		for m := range meta {
			pos[m] = rng.IntN(capTok)
			kc, err := e.alloc(int64(layers*capTok*kvDim*4), "k")
			if err != nil {
				return err
			}
			vc, err := e.alloc(int64(layers*capTok*kvDim*4), "v")
			if err != nil {
				return err
			}
			d.Poison(kc)
			d.Poison(vc)
			caches = append(caches, kc, vc)
			meta[m] = rowMeta{Tok: 0, Pos: int32(pos[m]), Adapter: int32(adapters[m]), Cap: capTok, K: uint64(kc.Ptr), V: uint64(vc.Ptr)}
		}
		var err error
		if e.meta, err = uploadTo(e, meta, "meta"); err != nil {
			return err
		}
		xb, err := uploadTo(e, x, "x")
		if err != nil {
			return err
		}
		y, err := e.alloc(int64(M*ldy*4), "y")
		if err != nil {
			return err
		}
		if mode == modeResid {
			yInit = randSlice(rng, M*ldy, 1)
			if err := Write(y, yInit); err != nil {
				return err
			}
		} else if err := d.Poison(y); err != nil {
			return err
		}
		tb, err := e.alloc(int64(M*len(ls)*e.rmax*4), "t")
		if err != nil {
			return err
		}
		d.Poison(tb)
		sh, err := e.uploadShrink(ls, xb, tb, K)
		if err != nil {
			return err
		}
		rb, err := uploadTo(e, ropeTable(pos, hd, 1e6), "rope")
		if err != nil {
			return err
		}
		op := gemvOp{Nmat: int32(len(ls)), Mode: int32(mode), X: uint64(xb.Ptr), Y: uint64(y.Ptr), T: uint64(tb.Ptr), Rows: uint64(e.meta.Ptr), Rope: uint64(rb.Ptr),
			Ldy: int32(ldy), TStride: int32(len(ls) * e.rmax), Rmax: int32(e.rmax), Layer: layer, HeadDim: int32(hd), KVDim: int32(kvDim)}
		mo, err := e.uploadOp(op, ls, "op")
		if err != nil {
			return err
		}
		if err := d.run(shrinkCall(sh.desc, e.rmax, len(ls), M)); err != nil {
			return err
		}
		want := map[string]kernelKind{"mma": kindMMANF4, "lut": kindLUTNF4}[eng]
		if ls[0].Quant == nil && eng == "mma" {
			want = kindMMABF16
		}
		tc := mo.kind == kindMMANF4 || mo.kind == kindMMABF16 || mo.kind == kindLUTNF4
		if eng != "" && mo.kind != want || eng == "" && tc {
			return fmt.Errorf("kernel kind %d for engine %q", mo.kind, eng)
		}
		if mo.kind == kindMMANF4 { // the steps of K a block takes: the launcher's 1, or forced 2 and 4 (a one-step tail)
			d.splitSteps = map[int]int{2: 2, 8: 4, 4: 4}[wpp]
			defer func() { d.splitSteps = 0 }()
		}
		cs, err := d.matmulCalls(mo.kind, mo.desc, M, mo.pairs, K)
		if err != nil {
			return err
		}
		if d.WGMMA && eng == "mma" && M > wideBatchMin && M <= prefillMin && (mo.kind == kindMMABF16 && M > d.denseWGMin || mo.kind == kindMMANF4 && mo.pairs >= d.wideBatchPairs) {
			if n := cs[len(cs)-1].name; !strings.HasSuffix(n, "_wgmma") && !strings.HasSuffix(n, "_wgmma_64") {
				return fmt.Errorf("%d rows ran %s, not the warpgroup kernel", M, n)
			}
		}
		if d.WGMMA && eng == "mma" && mo.kind != kindMMABF16 && M > d.wgSplitMin && M <= splitRows && !(M > wideBatchMin && mo.pairs >= d.wideBatchPairs) && cs[1].name != "wgmma_split_64" {
			return fmt.Errorf("%d rows ran %s, not wgmma_split_64", M, cs[1].name)
		}
		for _, c := range cs {
			switch {
			case wpp > 0 && (c.name == "mmas_finish" || c.name == "prefill_nf4" || strings.HasSuffix(c.name, "_wgmma") || strings.HasSuffix(c.name, "_wgmma_64") || c.name == "wgmma_split_64" || c.name == "split_planes"): // not forced: the launcher's geometry
			case wpp > 0 && strings.HasPrefix(c.name, "mmas_nf4"): // one group a split: each warp walks several tiles (and blocks several steps: splitSteps)
				c.grid[0] = 1
			case wpp > 0 && mo.kind == kindMMABF16: // one block: it walks every tile group
				c.grid[0] = 1
			case wpp > 0: // force a split of K, and few blocks so that each walks several tiles
				c.args[2], c.grid = wpp, [3]int{2}
				if mo.kind == kindLUTNF4 && wpp == 8 { // and two blocks a tile, each half of K (met through lutWS)
					c.args[3] = 2
				}
			}
			if err := d.run(c); err != nil {
				return err
			}
		}
		if err := d.Sync(); err != nil {
			return err
		}
		got = make([]float32, M*ldy)
		if err := Read(got, y); err != nil {
			return err
		}
		if mode == modeQKV {
			for m := range meta {
				k := make([]float32, layers*capTok*kvDim)
				v := make([]float32, layers*capTok*kvDim)
				Read(k, caches[2*m])
				Read(v, caches[2*m+1])
				at := (layer*capTok + pos[m]) * kvDim
				kGot, vGot = append(kGot, k[at:at+kvDim]), append(vGot, v[at:at+kvDim])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tol := fp32Tol
	if eng == "mma" || eng == "lut" && M > 2 { // lut: passes of more rows run mmas_nf4 or prefill_nf4
		tol = twoPartTol // x in two bf16 parts, the k/v cache too
	}
	var want []float32
	switch mode {
	case modeStore:
		want = RefLinear(ls[0], x, adapters)
	case modeResid:
		want = RefLinear(ls[0], x, adapters)
		for i := range want {
			want[i] += yInit[i]
		}
	case modeGateUp:
		g, u := RefLinear(ls[0], x, adapters), RefLinear(ls[1], x, adapters)
		want = make([]float32, len(g))
		for i := range g {
			want[i] = float32(float64(g[i]) / (1 + math.Exp(-float64(g[i]))) * float64(u[i]))
		}
	case modeQKV:
		want = RefLinear(ls[0], x, adapters)
		RefRoPE(want, pos, hd, 1e6)
		kw := RefLinear(ls[1], x, adapters)
		RefRoPE(kw, pos, hd, 1e6)
		vw := RefLinear(ls[2], x, adapters)
		var kg, vg []float32
		for m := range kGot {
			kg, vg = append(kg, kGot[m]...), append(vg, vGot[m]...)
		}
		if r := relErr(kg, kw); r > tol {
			t.Errorf("k cache: relative error %.3g > %g; %s", r, tol, firstMismatch(kg, kw, tol))
		}
		if r := relErr(vg, vw); r > tol {
			t.Errorf("v cache: relative error %.3g > %g; %s", r, tol, firstMismatch(vg, vw, tol))
		}
	}
	if r := relErr(got, want); r > tol {
		t.Errorf("relative error %.3g > %g; %s", r, tol, firstMismatch(got, want, tol))
	}
}

// twoPartTol bounds mmas_nf4, prefill_nf4 and mmas_bf16, whose x enters as two bf16 parts (16
// significant bits): each product is off by ≤ 2^-17 of |w·x|, randomly
// signed, so a row's error is ~2^-17·√K·rms(w·x)/√3 against a largest
// output of ~3.5·√K·rms(w·x): ~1.3e-6 of it, 2e-5 leaves room for the
// worst of many rows and the fp32 sums.
const twoPartTol = 2e-5

func TestRMSNormAndAttention(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 4))
	const M, H = 5, 96
	x, w := randSlice(rng, M*H, 2), randSlice(rng, H, 1)
	rows := []int32{4, 0, 2}
	var got []float32
	err := d.Do(func() error {
		xb, _ := Upload(d, x, "x")
		wb, _ := Upload(d, w, "w")
		rb, _ := Upload(d, rows, "rows")
		ob, _ := d.Alloc(int64(len(rows)*H*4), "out")
		defer func() { d.Free(&xb); d.Free(&wb); d.Free(&rb); d.Free(&ob) }()
		d.Poison(ob)
		if err := d.run(rmsnormCall(ob, xb, wb, rb, H, 1e-6, len(rows))); err != nil {
			return err
		}
		got = make([]float32, len(rows)*H)
		return Read(got, ob)
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []float32
	for _, r := range rows {
		want = append(want, RefRMSNorm(x[int(r)*H:(int(r)+1)*H], w, 1e-6)...)
	}
	if r := relErr(got, want); r > fp32Tol {
		t.Errorf("rmsnorm: relative error %.3g; %s", r, firstMismatch(got, want, fp32Tol))
	}

	// Attention: 3 rows at positions 0, 70 and 130 (chunks of attnChunk = 32 positions), 4 heads over 2 KV heads, hd 32.
	const heads, kvHeads, hd, layers, capTok = 4, 2, 32, 2, 200
	poss := []int{0, 70, 130}
	kvDim := kvHeads * hd
	q := randSlice(rng, len(poss)*heads*hd, 1)
	var Ks, Vs, atts [][]float32
	err = d.Do(func() error {
		var meta []rowMeta
		var bufs []Buf
		for m, p := range poss {
			K, V := randSlice(rng, layers*capTok*kvDim, 1), randSlice(rng, layers*capTok*kvDim, 1)
			Ks, Vs = append(Ks, K), append(Vs, V)
			kb, _ := Upload(d, K, "K")
			vb, _ := Upload(d, V, "V")
			bufs = append(bufs, kb, vb)
			meta = append(meta, rowMeta{Pos: int32(p), Cap: capTok, Adapter: int32(m - 1), K: uint64(kb.Ptr), V: uint64(vb.Ptr)})
		}
		mb, _ := Upload(d, meta, "meta")
		qb, _ := Upload(d, q, "q")
		splits := (capTok + attnChunk - 1) / attnChunk
		pb, _ := d.Alloc(int64(len(poss)*heads*splits*(hd+2)*4), "part")
		ab, _ := d.Alloc(int64(len(poss)*heads*hd*4), "att")
		bufs = append(bufs, mb, qb, pb, ab)
		defer func() {
			for i := range bufs {
				d.Free(&bufs[i])
			}
		}()
		// attn_split, then attn_split_kv with all positions copied after the
		// kernel's wait, and with the rows' earlier positions before it (early).
		defer func(r int) { attnKVRows = r }(attnKVRows)
		for i, early := range []bool{false, false, true} {
			attnKVRows = 0
			if i > 0 {
				attnKVRows = len(poss)
			}
			d.Poison(pb)
			d.Poison(ab)
			if err := d.run(attnSplitCall(pb, qb, mb, 1, heads, kvHeads, hd, splits, len(poss), early)); err != nil {
				return err
			}
			if err := d.run(attnCombineCall(ab, pb, heads, hd, splits, len(poss))); err != nil {
				return err
			}
			a := make([]float32, len(poss)*heads*hd)
			if err := Read(a, ab); err != nil {
				return err
			}
			atts = append(atts, a)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, att := range atts {
		for m, p := range poss {
			off := 1 * capTok * kvDim // layer 1
			want := RefAttention(q[m*heads*hd:(m+1)*heads*hd], Ks[m][off:], Vs[m][off:], p, heads, kvHeads, hd)
			g := att[m*heads*hd : (m+1)*heads*hd]
			if r := relErr(g, want); r > fp32Tol {
				t.Errorf("attention (%s) row %d (pos %d): relative error %.3g; %s", []string{"attn_split", "attn_split_kv", "attn_split_kv early"}[i], m, p, r, firstMismatch(g, want, fp32Tol))
			}
		}
	}
}

func TestArgmax(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 5))
	for _, V := range []int{151936, 1001, 10001} { // rows of float4s (38 slices), and of single floats (1 and 3)
		const M = 6
		l := randSlice(rng, M*V, 1)
		l[0*V+777], l[0*V+900], l[0*V+V-5] = 50, 50, 50 // ties across threads and slices: the lower index wins
		l[1*V+V-1] = 60
		l[2*V+0] = 70
		l[3*V+9], l[3*V+8] = 40, 40 // a tie in one 16-byte load
		l[4*V+V/2] = float32(math.NaN())
		want := []int32{777, int32(V - 1), 0, 8, -1, int32(qwen.Argmax(l[5*V : 6*V]))}
		var ids []int32
		err := d.Do(func() error {
			lb, _ := Upload(d, l, "logits")
			ib, _ := d.Alloc(M*4, "ids")
			var ws argmaxWS
			ws.v, _ = d.Alloc(M*argmaxMaxSlices*4, "argmax slices")
			ws.i, _ = d.Alloc(M*argmaxMaxSlices*4, "argmax slices")
			ws.count, _ = Upload(d, make([]int32, M), "argmax counters")
			meta := make([]rowMeta, M)
			for i := range meta {
				meta[i] = rowMeta{Tok: 5, Pos: int32(10 * i), Adapter: -1, Cap: 99, K: 1, V: 2}
			}
			mb, _ := Upload(d, meta, "row metadata")
			defer func() {
				d.Free(&lb)
				d.Free(&ib)
				d.Free(&ws.v)
				d.Free(&ws.i)
				d.Free(&ws.count)
				d.Free(&mb)
			}()
			ids = make([]int32, M)
			for rep := range 2 { // the counters left at zero for the next launch
				d.Poison(ib)
				if err := d.run(argmaxCall(ib, lb, V, M, ws, mb)); err != nil {
					return err
				}
				if err := Read(ids, ib); err != nil {
					return err
				}
				if !slices.Equal(ids, want) {
					return fmt.Errorf("V %d, launch %d: argmax = %v, want %v", V, rep, ids, want)
				}
			}
			got := make([]rowMeta, M) // advanced twice: each row's id, its position + 2
			if err := Read(got, mb); err != nil {
				return err
			}
			for i := range got {
				if w := (rowMeta{Tok: want[i], Pos: int32(10*i + 2), Adapter: -1, Cap: 99, K: 1, V: 2}); got[i] != w {
					return fmt.Errorf("V %d: row %d metadata advanced to %+v, want %+v", V, i, got[i], w)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
