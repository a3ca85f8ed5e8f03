//go:build cuda

package kernels

import (
	"fmt"

	"gorgonia.org/cu"
)

// One typed launcher per kernel: each returns a call (kernel, geometry,
// arguments) that the engine's forward pass, the profiler and the tests run
// through Device.run. Launch geometry lives here and nowhere else.

// call is one kernel launch.
type call struct {
	name  string
	grid  [3]int
	block int
	shmem int // dynamic shared memory, bytes
	args  []any
	pdl   bool // a programmatic dependent of the previous kernel (when Device.PDL)
	// clusterX > 0: thread-block clusters of that many blocks along x
	// (resid_norm_c's blocks of a row, which meet in distributed shared memory).
	clusterX int
	// fin: an mmas_finish's parameters (finishCall), for a launch that
	// takes its work over (residNormCall); nil for every other kernel.
	fin *finish
}

// finish is what an mmas_finish launch finishes: batch rows m0 … m0+n−1 of
// op (rows in all) from the splits partial sums, mp batch rows each, in ws.
type finish struct {
	op                      *gemvOp
	rows, m0, n, splits, mp int
	ws                      Buf
}

// run launches c on the device's stream (on its thread).
func (d *Device) run(c call) error {
	return d.launchEx(c.name, c.grid, c.block, c.shmem, c.pdl && d.PDL, c.clusterX, c.args...)
}

// embedCall: x[m] = embedding row of token rows[m].tok (bf16 or fp32 table),
// and row m's RoPE cos/sin for its position (rope [rows, half, 2]).
func embedCall(x, table Buf, bf16 bool, meta Buf, hidden int, rope, invFreq Buf, half, rows int) call {
	flag := 0
	if bf16 {
		flag = 1
	}
	return call{name: "embed", grid: [3]int{rows}, block: 256, args: []any{x, table, flag, meta, hidden, rope, invFreq, half}}
}

// rmsnormCall: out[i] = w·x[r]/rms(x[r]) for r = idx[i] (idx null: r = i), i < rows.
func rmsnormCall(out, x, w, idx Buf, hidden int, eps float32, rows int) call {
	return call{name: "rmsnorm", grid: [3]int{rows}, block: 256, args: []any{out, x, w, idx, hidden, eps}}
}

// rmsnormLoRACall: rmsnorm of all rows, with the LoRA shrink A·out of the
// shrink op's slots (q/k/v or gate/up) computed by extra blocks, each taking
// per outputs: the most (of 1, 2, 4, 8) that still leave a shrink block for
// every multiprocessor of sms.
func rmsnormLoRACall(out, x, w Buf, hidden int, eps float32, shrink *shrinkOp, slots, rmax, rows, sms int) call {
	outs, per := slots*rmax, 1
	for per < 8 && rows*((outs+2*per-1)/(2*per)) >= sms {
		per *= 2
	}
	return call{name: "rmsnorm_lora", grid: [3]int{rows, 1 + (outs+per-1)/per}, block: 256, shmem: 4 * hidden,
		args: []any{out, x, w, hidden, eps, shrink, per}}
}

// residNormCall is resid_norm: fin (a residual op's mmas_finish over its
// whole batch) fused with rmsnorm of the rows into out and the LoRA shrinks
// of sh (nil: none), a block a row; with cluster > 0, resid_norm_c, a
// cluster of that many blocks a row.
func residNormCall(fin *finish, out, w Buf, hidden int, eps float32, sh *shrinkOp, cluster int) call {
	if sh == nil {
		sh = &shrinkOp{}
	}
	args := []any{fin.op, fin.ws, fin.splits, fin.mp, out, w, eps, sh}
	if cluster > 0 {
		return call{name: "resid_norm_c", grid: [3]int{cluster, fin.rows}, block: 256, shmem: 4 * (hidden + int(sh.NSlots*sh.Rmax)), clusterX: cluster, args: args}
	}
	return call{name: "resid_norm", grid: [3]int{fin.rows}, block: 1024, shmem: 8 * hidden, args: args}
}

// shrinkCall: t[m, slot, j] = A[adapter(m)][slot][j]·x[m], a block per output.
func shrinkCall(op *shrinkOp, rmax, slots, rows int) call {
	return call{name: "lora_shrink", grid: [3]int{rmax, slots, rows}, block: 256, shmem: int(op.K) * 4, args: []any{op, rows}}
}

// shrinkSplitCalls: the LoRA shrink with K split in chunks of ssCols
// columns and rows in groups of 32 (shrink_split), the chunks' partial sums
// in ws, then added in order (shrink_sum). outs = slots·rmax ≤ ssOuts.
func shrinkSplitCalls(op *shrinkOp, outs, k, rows int, ws Buf) []call {
	chunks := (k + ssCols - 1) / ssCols
	return []call{
		{name: "shrink_split", grid: [3]int{chunks, (rows + 31) / 32}, block: 256, shmem: outs * (ssCols + 4) * 4, args: []any{op, rows, ws}},
		{name: "shrink_sum", grid: [3]int{(rows*outs + 255) / 256}, block: 256, args: []any{op, rows, ws, chunks}},
	}
}

// ssCols and ssOuts are SS_COLS and SS_OUTS in rmsnorm.cu.
const ssCols, ssOuts = 256, 64

// shrinkWSBytes is the partial sums shrink_split writes for rows rows.
func shrinkWSBytes(outs, k, rows int) int64 {
	return int64((k+ssCols-1)/ssCols) * int64(rows) * int64(outs) * 4
}

// layoutCall writes the C structs' sizes and offsets into out (9 int64s),
// for TestStructLayout.
func layoutCall(out Buf) call {
	return call{name: "layout", grid: [3]int{1}, block: 1, args: []any{out}}
}

// argmaxWS is argmax's scratch: each slice's best value and index [rows,
// argmaxMaxSlices], and a counter a row (zeros; each launch leaves them so).
type argmaxWS struct{ v, i, count Buf }

const argmaxMaxSlices = 64

// argmaxSlices is how many blocks scan a row of vocab logits: a round of
// four 16-byte loads a thread of 256 each.
func argmaxSlices(vocab int) int { return min(argmaxMaxSlices, max(1, (vocab+4095)/4096)) }

// argmaxCall: ids[m] = argmax of logits row m (the lowest index on ties);
// adv (Ptr 0: none) the pass's row metadata, advanced for the next decode step.
func argmaxCall(ids, logits Buf, vocab, rows int, ws argmaxWS, adv Buf) call {
	return call{name: "argmax", grid: [3]int{argmaxSlices(vocab), rows}, block: 256, args: []any{ids, logits, vocab, ws.v, ws.i, ws.count, adv}}
}

// candSliceCall: the penalty on each row's seen tokens, then each slice's
// k-th largest logit and its list (sample.cu).
func candSliceCall(logits Buf, vocab int, seen, off, penalty, k, key, sid, info Buf, slices, rows int) call {
	return call{name: "cand_slice", grid: [3]int{slices, rows}, block: 256, args: []any{logits, vocab, seen, off, penalty, k, key, sid, info}}
}

// candMergeCall: each row's candidates, from its slices' lists.
func candMergeCall(key, sid, info, k Buf, slices, vocab int, id, val, count Buf, rows int) call {
	return call{name: "cand_merge", grid: [3]int{rows}, block: 256, args: []any{key, sid, info, k, slices, vocab, id, val, count}}
}

// targetLogprobCall: out[m] = log_softmax(logits[m])[targets[m]].
func targetLogprobCall(out, logits, targets Buf, vocab, rows int) call {
	return call{name: "target_logprob", grid: [3]int{rows}, block: 1024, args: []any{out, logits, targets, vocab}}
}

// kernelKind is which matrix kernel family runs a matrix (its matFmt says
// how the matrix is stored).
type kernelKind int

const (
	kindGemvNF4      kernelKind = iota // gemv_nf4_<MT>: NF4 rounded to bf16, plain or tiled codes
	kindGemvNF4Round                   // gemv_nf4r_<MT>: NF4 rounded to f16, or not rounded
	kindGemvDense                      // gemv_dense_<MT>: bf16 or fp32 weights
	kindMMANF4                         // mmas_nf4_<NT>: NF4 on the tensor cores, for batches, K split across blocks
	kindMMABF16                        // mmas_bf16_<NT>: bf16 on the tensor cores, for batches
	kindLUTNF4                         // nf4_lut_<R>: NF4 on the tensor cores, one or two rows a pass
)

// gemvMT are the batch-row counts gemv is compiled for (GEMV(MT) in nf4_matmul.cu).
var gemvMT = []int{1, 2, 4, 8, 16}

// gemvMaxMT caps gemv's batch rows per pass (QBENCH_GEMV_MAXMT overrides it,
// for tuning). 4 won on an H200 (2026-11-26, 3B shape, batch 20: 535 tok/s
// against 311 with 16 rows a pass, whose 255 registers leave one block an SM).
var gemvMaxMT = envInt("QBENCH_GEMV_MAXMT", 4)

// targetWarps is about enough resident warps to keep a Hopper's 132 SMs busy.
const targetWarps = 132 * 32

// pow2Floor is the largest power of two ≤ v (1 for v < 1).
func pow2Floor(v int) int {
	w := 1
	for w*2 <= v {
		w *= 2
	}
	return w
}

// pow2Ceil is the smallest power of two ≥ v (1 for v < 1).
func pow2Ceil(v int) int {
	w := 1
	for w < v {
		w *= 2
	}
	return w
}

// matmulCall is one launch of a matrix kernel over op for rows batch rows: pairs output pairs (pair_rows in gemv.cuh),
// K input columns. The kernels are persistent: one wave of blocks (as many
// as are resident at once), each walking several tiles; wpp warps split K.
func (d *Device) matmulCall(kind kernelKind, op *gemvOp, rows, pairs, K int) (call, error) {
	c := call{block: 256}
	var wpp, units int // warps per unit of work, units (pairs or 8-pair tiles)
	switch kind {
	case kindMMANF4, kindMMABF16:
		return c, fmt.Errorf("cuda: the batch kernels run through matmulCalls")
	case kindLUTNF4: // tiles of 8 pairs (16 rows), steps of 256 columns
		units = pairs / 8
		steps := (K/64 + 3) / 4
		// Enough split-K warps for ~16 a multiprocessor, at least 2 (measured
		// best on gate/up, kernels/dev v4), at most one a step.
		wpp = min(pow2Floor(min(8, steps)), max(2, pow2Ceil((16*d.SMs+units-1)/units)))
		r := 1
		if rows >= 2 && lutShmem(K, 2) <= d.maxShmem {
			r = 2
		}
		c.name, c.shmem = fmt.Sprintf("nf4_lut_%d", r), lutShmem(K, r)
		if c.shmem > d.maxShmem {
			return c, fmt.Errorf("cuda: nf4_lut: K = %d needs %d bytes of shared memory, the device has %d", K, c.shmem, d.maxShmem)
		}
	default: // gemv: one warp per pair, MT batch rows a pass
		step := 256 // columns per warp-step: 8 a lane for bf16/fp32
		if kind != kindGemvDense {
			step = 1024 // 32 a lane for NF4
		}
		units = pairs
		wpp = pow2Floor(min(8, max(1, K/step), (targetWarps+units-1)/units))
		c.name = gemvName(kind, rows)
	}
	occ, err := d.occupancy(c.name, c.block, c.shmem)
	if err != nil {
		return c, err
	}
	per := 8 / wpp // units a block takes at once
	c.grid = [3]int{min((units+per-1)/per, max(1, occ)*d.SMs)}
	c.args = []any{op, rows, wpp}
	if kind == kindLUTNF4 {
		// Two blocks a tile where the tiles (a block each) would leave half
		// the card's block slots empty and the rows are long (the down
		// projection: 128 tiles of 43 steps at the 3B shape): all the tiles'
		// halves at once, one pass of rows, counters reserved.
		bpt, r := 1, 1
		if c.name == "nf4_lut_2" {
			r = 2
		}
		if wpp == 8 && (K/64+3)/4 >= 16 && rows <= r && 2*units <= max(1, occ)*d.SMs && int64(units) <= d.lutCount.Bytes/4 {
			bpt = 2
			c.grid[0] = 2 * units
		}
		c.args = append(c.args, bpt, d.lutWS, d.lutCount, Buf{}, float32(0)) // no norm (withNorm)
	}
	return c, nil
}

// withNorm is nf4_lut's launch c (one block a tile) with the RMSNorm of its
// input fused in: x (the residual stream) normed by w and eps in each
// block. False where c takes two blocks a tile.
func withNorm(c call, x, w Buf, eps float32) (call, bool) {
	if c.args[3] != 1 {
		return c, false
	}
	op := *c.args[0].(*gemvOp)
	op.X = uint64(x.Ptr)
	c.args = append(append([]any{&op}, c.args[1:6]...), w, eps)
	return c, true
}

// reserveLUT makes nf4_lut's two-blocks-a-tile meeting place hold tiles
// tiles: their sums ([tiles][2][2][16] floats) and a zeroed counter each.
// Replaced ones are kept, as grow's.
func (d *Device) reserveLUT(tiles int) error {
	if d.lutCount.Bytes >= int64(tiles)*4 {
		return nil
	}
	if err := d.grow(&d.lutWS, int64(tiles)*2*32*4, "nf4_lut split sums"); err != nil {
		return err
	}
	c, err := Upload(d, make([]int32, tiles), "nf4_lut split counters")
	if err != nil {
		return err
	}
	d.lutCount = c
	return nil
}

// matmulCalls are the launches of one matrix op over rows batch rows. NF4 in
// lutNF4's layout (kinds MMANF4 and LUTNF4) takes, by rows: nf4_lut (one or
// two), mmas_nf4 + mmas_finish (up to prefillMin, at most splitRows a
// launch), prefill_wgmma or prefill_nf4 (prefillCalls: more, and on
// devices with warpgroup MMAs batches of more than wideBatchMin rows over
// matrices of at least 64 pairs an SM). Dense bf16 of batch engines takes
// dense_wgmma on those devices for more than denseWGMin rows, else mmas_bf16
// (splitRows a launch); every other kind one matmulCall.
func (d *Device) matmulCalls(kind kernelKind, op *gemvOp, rows, pairs, K int) ([]call, error) {
	lut := kind == kindMMANF4 || kind == kindLUTNF4
	switch {
	case lut && (rows > prefillMin || d.WGMMA && rows > wideBatchMin && pairs >= d.wideBatchPairs):
		// Long passes; and on devices with warpgroup MMAs batches of more
		// than wideBatchMin rows over matrices whose 64-pair blocks fill the
		// card (gate/up), which prefill_wgmma takes in one pass of 64 or
		// 128 rows (batch 128: 7,038 → 8,331 tok/s, kernels/PERF.md).
		return d.prefillCalls(op, rows, pairs, K), nil
	case kind == kindLUTNF4 && rows > 2:
		kind = kindMMANF4
	case kind != kindMMANF4 && kind != kindMMABF16:
		c, err := d.matmulCall(kind, op, rows, pairs, K)
		return []call{c}, err
	}
	if kind == kindMMABF16 && rows > d.denseWGMin {
		if cs := d.wgmmaCalls("dense_wgmma", op, rows, pairs, K); cs != nil {
			return cs, nil
		}
	}
	if kind == kindMMANF4 && rows > d.wgSplitMin && rows <= splitRows {
		if cs := d.wgmmaSplitCalls(op, rows, pairs, K); cs != nil {
			return cs, nil
		}
	}
	var cs []call
	for m0 := 0; m0 < rows; m0 += splitRows {
		var c []call
		var err error
		if kind == kindMMANF4 {
			c, err = d.splitCalls(op, rows, m0, pairs, K)
		} else {
			c, err = d.bf16Call(op, rows, m0, pairs)
		}
		if err != nil {
			return nil, err
		}
		cs = append(cs, c...)
	}
	return cs, nil
}

// wideBatchMin: batches of more rows run the wide matrices on
// prefill_wgmma (matmulCalls), the others on wgmma_split_64.
const wideBatchMin = 32

// prefillMin is the most rows the NF4 kernels for batches take; longer
// passes run prefill_wgmma or prefill_nf4, whose grids of 64-pair blocks ×
// 128 (64) rows then hold enough blocks to fill the card even for the short
// matrices (o, down).
const prefillMin = 128

// prefillCall is prefill_nf4 over rows batch rows: blocks of 64 pairs ×
// PF_BM rows, each running its outputs' LoRA terms and epilogue.
func prefillCall(op *gemvOp, rows, pairs int) call {
	const bm, bn, ld, rmax = 64, 128, 64 + 8, 32                                         // PF_BM, PF_BN, PF_LDW = PF_LDX, PF_RMAX in prefill.cu
	return call{name: "prefill_nf4", block: 256, shmem: (bn*ld+2*bm*ld)*2 + 2*rmax*64*4, // PF_SMEM
		grid: [3]int{(pairs + 63) / 64, (rows + bm - 1) / bm}, args: []any{op, rows}}
}

// prefillCalls is an NF4 matrix op over a long pass: on devices with
// warpgroup MMAs (Device.WGMMA) whose x planes scratch holds the pass, x
// split into bf16 planes (split_planes) and prefill_wgmma (128 x rows a
// block; prefill_wgmma_64 for up to 64 rows); else prefillCall.
func (d *Device) prefillCalls(op *gemvOp, rows, pairs, K int) []call {
	if cs := d.wgmmaCalls("prefill_wgmma", op, rows, pairs, K); cs != nil {
		return cs
	}
	return []call{prefillCall(op, rows, pairs)}
}

// wgmmaCalls are split_planes and kernel (prefill_wgmma or dense_wgmma:
// 128 x rows a block, its _64 version for up to 64 rows) over rows rows;
// nil where the device has no warpgroup MMAs or its x planes scratch does
// not hold the pass.
func (d *Device) wgmmaCalls(kernel string, op *gemvOp, rows, pairs, K int) []call {
	plane := int64(rows) * int64(K) * 2
	if !d.WGMMA || 2*plane > d.planes.Bytes {
		return nil
	}
	hi, lo := d.planes, Buf{Ptr: d.planes.Ptr + cu.DevicePtr(plane), Bytes: plane}
	n4 := rows * K / 4
	name, nx := kernel, 128
	if rows <= 64 {
		name, nx = kernel+"_64", 64
	}
	smem := pwSmem(nx)
	return []call{
		{name: "split_planes", grid: [3]int{(n4 + 255) / 256}, block: 256, args: []any{cu.DevicePtr(op.X), hi, lo, n4}},
		{name: name, block: 256, shmem: smem, grid: [3]int{(pairs + 63) / 64, (rows + nx - 1) / nx}, args: []any{op, rows, hi, lo}},
	}
}

// wgmmaSplitCalls are split_planes, wgmma_split_64 — K split so that the
// matrix's 64-pair blocks make about two a multiprocessor, at least 4 steps
// of 64 columns a split — and mmas_finish, for batches of up to 64 rows (the
// narrow matrices of batches of 33–64: batch 64 +3 %, kernels/PERF.md); nil
// where the device has no warpgroup MMAs or its scratch does not hold the
// launch.
func (d *Device) wgmmaSplitCalls(op *gemvOp, rows, pairs, K int) []call {
	plane := int64(rows) * int64(K) * 2
	if !d.WGMMA || 2*plane > d.planes.Bytes || d.splitWS.Bytes < splitWSBytes(pairs, K) {
		return nil
	}
	steps, blocks := K/64, (pairs+63)/64
	sps := max(4, (steps*blocks+2*d.SMs-1)/(2*d.SMs))
	splits := (steps + sps - 1) / sps
	hi, lo := d.planes, Buf{Ptr: d.planes.Ptr + cu.DevicePtr(plane), Bytes: plane}
	n4 := rows * K / 4
	return []call{
		{name: "split_planes", grid: [3]int{(n4 + 255) / 256}, block: 256, args: []any{cu.DevicePtr(op.X), hi, lo, n4}},
		{name: "wgmma_split_64", block: 256, shmem: pwSmem(64), grid: [3]int{blocks, 1, splits}, args: []any{op, rows, hi, lo, d.splitWS, sps}},
		finishCall(op, rows, 0, rows, pairs, splits, 64, d.splitWS),
	}
}

// pwSmem is the dynamic shared memory of the warpgroup kernels over nx x
// rows a block: two stages of weights and x's two planes, and room to align
// them to 1,024 bytes (PW_SMEM in prefill_wgmma.cu).
func pwSmem(nx int) int { return 2*(128*64*2+2*nx*64*2) + 1024 }

// reservePlanes makes the x planes scratch of prefill_wgmma hold passes of
// rows rows of K columns (two bf16 planes), on devices that run it.
func (d *Device) reservePlanes(rows, K int) error {
	if !d.WGMMA {
		return nil
	}
	return d.grow(&d.planes, 4*int64(rows)*int64(K), "x planes for prefill_wgmma")
}

// batchNT is the n-tiles of 8 batch rows a batch-kernel launch over rows
// m0, m0+1, … takes (splitNT: the fewest that hold them, at most 8).
func batchNT(rows, m0 int) int {
	n := min(rows-m0, splitRows)
	for _, v := range splitNT {
		if 8*v >= n {
			return v
		}
	}
	return splitNT[len(splitNT)-1]
}

// bf16Call is mmas_bf16 over rows m0, m0+1, … (at most splitRows) of rows:
// one wave of blocks, 8 warps each taking a tile of 8 pairs, K walked in
// steps of 256 columns with x double-buffered in shared memory.
func (d *Device) bf16Call(op *gemvOp, rows, m0, pairs int) ([]call, error) {
	nt := batchNT(rows, m0)
	c := call{name: fmt.Sprintf("mmas_bf16_%d", nt), block: 256, shmem: 2 * 16 * (16*8*nt + 4) * 4} // two steps of sk_jw rows (mma.cu)
	occ, err := d.occupancy(c.name, c.block, c.shmem)
	if err != nil {
		return nil, err
	}
	c.grid = [3]int{max(1, min(max(1, occ)*d.SMs, (pairs/8+7)/8))}
	c.args = []any{op, rows, m0}
	return []call{c}, nil
}

// splitRows is the most batch rows one mmas_nf4 launch takes (NT = 8), and
// splitCols the columns of one step of its blocks (SK_COLS in mma.cu).
const splitRows, splitCols = 64, 256

// splitNT are the NT mmas_nf4 and mmas_bf16 are compiled for (MMAS, MMASB in mma.cu).
var splitNT = []int{1, 2, 3, 4, 8}

// splitCalls are mmas_nf4 and mmas_finish for rows m0, m0+1, … (at most
// splitRows) of rows. mmas_nf4: blocks (group, split of K), one wave, 8
// warps a block, each walking tiles of 8 pairs; mmas_finish: a thread a
// (pair, batch row).
func (d *Device) splitCalls(op *gemvOp, rows, m0, pairs, K int) ([]call, error) {
	n, nt := min(rows-m0, splitRows), batchNT(rows, m0)
	if need := splitWSBytes(pairs, K); d.splitWS.Bytes < need {
		return nil, fmt.Errorf("cuda: mmas_nf4: needs a split-K workspace of %d bytes, %d reserved (reserveSplit)", need, d.splitWS.Bytes)
	}
	// S, the 256-column steps a block takes: the most (1, 2 or 4) that still
	// leave two (tile, split) tasks for every warp the launch holds — fewer
	// splits, fewer partial sums to write and add. (3B, H200: gate/up takes
	// 2, the others 1; decode +2 % over 1 everywhere, 2 everywhere −5 %.)
	name, tiles := fmt.Sprintf("mmas_nf4_%d", nt), pairs/8
	shmem := func(S int) int { return S * 16 * (16*8*nt + 4) * 4 } // S·16 (step, j) rows of sk_jw words (mma.cu)
	S, occ := 1, 0
	for _, s := range []int{1, 2, 4} {
		if s > 1 && shmem(s) > d.maxShmem {
			break
		}
		o, err := d.occupancy(name, 256, shmem(s))
		if err != nil {
			return nil, err
		}
		if s > 1 && tiles*((K+s*splitCols-1)/(s*splitCols)) < 2*max(1, o)*d.SMs*8 {
			break
		}
		S, occ = s, o
	}
	if d.splitSteps > 0 { // forced (tests), halved until its x fits
		S = d.splitSteps
		for S > 1 && shmem(S) > d.maxShmem {
			S /= 2
		}
		var err error
		if occ, err = d.occupancy(name, 256, shmem(S)); err != nil {
			return nil, err
		}
	}
	splits := (K + S*splitCols - 1) / (S * splitCols)
	c := call{name: name, block: 256, shmem: shmem(S)}
	groups := max(1, min(max(1, occ)*d.SMs/splits, (tiles+7)/8))
	c.grid = [3]int{groups, splits}
	c.args = []any{op, rows, m0, d.splitWS, S}
	return []call{c, finishCall(op, rows, m0, n, pairs, splits, 8*nt, d.splitWS)}, nil
}

// finishCall is mmas_finish over the n batch rows m0, m0+1, … of a launch
// whose splits partial sums of mp rows each are in ws: a thread a (pair,
// batch row).
func finishCall(op *gemvOp, rows, m0, n, pairs, splits, mp int, ws Buf) call {
	rpb := min(8, pow2Ceil(n)) // batch rows a block (mmas_finish; 8 against 1 at batch 20 with adapters: +1.4 %)
	per := 256 / rpb
	return call{name: "mmas_finish", grid: [3]int{(pairs + per - 1) / per, (n + rpb - 1) / rpb}, block: 256, args: []any{op, rows, m0, ws, splits, mp, rpb},
		fin: &finish{op, rows, m0, n, splits, mp, ws}}
}

// splitWSBytes is the split-K workspace one mmas_nf4 launch over a matrix
// op of pairs pairs and K columns may need: a partial sum for each split,
// batch row of a launch and output row.
func splitWSBytes(pairs, K int) int64 {
	return int64((K+splitCols-1)/splitCols) * splitRows * 2 * int64(pairs) * 4
}

// reserveSplit makes the split-K workspace at least bytes (on the device's
// thread).
func (d *Device) reserveSplit(bytes int64) error {
	return d.grow(&d.splitWS, bytes, "split-K workspace")
}

// grow makes the device scratch *b at least bytes (on the device's thread).
// A smaller one it replaces is not freed: CUDA graphs another engine
// captured may still name it (the context's end frees it).
func (d *Device) grow(b *Buf, bytes int64, what string) error {
	if b.Bytes >= bytes {
		return nil
	}
	nb, err := d.Alloc(bytes, what)
	if err != nil {
		return err
	}
	*b = nb
	return nil
}

// lutShmem is nf4_lut's dynamic shared memory: x split into 3 bf16 parts a
// row, 8 bytes per (part, 4 columns), over whole 256-column steps.
func lutShmem(K, rows int) int { return (K/64 + 3) / 4 * 16 * 3 * rows * 4 * 8 }

// gemvName picks the gemv variant for a kind and M batch rows: the smallest
// row count per pass that covers M, up to gemvMaxMT (then several passes).
func gemvName(kind kernelKind, rows int) string {
	mt := 1
	for _, v := range gemvMT {
		if v <= gemvMaxMT {
			mt = v
		}
	}
	for _, v := range gemvMT {
		if v >= rows && v <= gemvMaxMT {
			mt = v
			break
		}
	}
	switch kind {
	case kindGemvNF4:
		return fmt.Sprintf("gemv_nf4_%d", mt)
	case kindGemvNF4Round:
		return fmt.Sprintf("gemv_nf4r_%d", mt)
	}
	return fmt.Sprintf("gemv_dense_%d", mt)
}

// quantizeCall: the NF4 codes and block absmax of n bf16 weights w (one
// thread per code byte, a warp per 64-block), the lowest non-finite index
// into bad.
func quantizeCall(packed, absmax, bad, w Buf, n int) call {
	return call{name: "nf4_quantize", grid: [3]int{(n/2 + 255) / 256}, block: 256, args: []any{packed, absmax, bad, w, n}}
}
