//go:build cuda

package kernels

import "fmt"

// The attention's launches: flash-decoding (attn_split + a combine), the
// one-launch form of short decode steps (attn_decode_c) and prefill passes'
// flash attention (attn_flash_<D>); forward picks among them.

// attnSplitCall: each row's attention over its cache, one block per (head,
// row, chunk of attnChunk positions), partial results into part. Passes of
// at most attnKVRows rows stage each chunk's K and V rows in shared memory
// (attn_split_kv); early: each row is the only new token of its sequence
// (decode steps), so the rows' earlier positions are copied before the
// kernel waits for the q/k/v launch.
func attnSplitCall(part, q, meta Buf, layer, heads, kvHeads, hd, splits, rows int, early bool) call {
	c := call{name: "attn_split", grid: [3]int{heads, rows, splits}, block: 128, args: []any{part, q, meta, layer, heads, kvHeads, hd, splits}}
	if rows <= attnKVRows {
		c.name, c.shmem, c.args = "attn_split_kv", 2*attnChunk*hd*4, append(c.args, boolInt(early))
	}
	return c
}

// attnKVRows is the most rows whose attention takes attn_split_kv: at batch 1
// (3B, H200) it made the step 2–4 % faster; at batch 20, where its 32 KB of
// shared memory a block (hd 128) halve the blocks an SM, 3,937 → 3,836 tok/s.
var attnKVRows = envInt("QBENCH_ATTN_KV_ROWS", 1)

// attnCombineCall merges the chunks' partial softmax results into att.
func attnCombineCall(att, part Buf, heads, hd, splits, rows int) call {
	return call{name: "attn_combine", grid: [3]int{heads, rows}, block: 128, args: []any{att, part, heads, hd, splits}}
}

// attnCombineLoRACall is attnCombineCall with the o_proj LoRA shrink of the
// rows (shrink op sh, one slot) folded in: per-head partial dots in tp [rows,
// heads, rmax], added in head order by the last head block of each row
// (count [rows] int32, zero between passes).
func attnCombineLoRACall(att, part Buf, heads, hd, splits, rows int, sh *shrinkOp, tp, count Buf) call {
	return call{name: "attn_combine_lora", grid: [3]int{heads, rows}, block: 128, args: []any{att, part, heads, hd, splits, sh, tp, count}}
}

// attnCombineLoRACCall is attnCombineLoRACall with each row's heads (at most
// 16) a thread-block cluster that adds the heads' partials in distributed
// shared memory (attn_combine_lora_c; compute capability 9.0, rmax ≤ 64).
func attnCombineLoRACCall(att, part Buf, heads, hd, splits, rows int, sh *shrinkOp) call {
	return call{name: "attn_combine_lora_c", grid: [3]int{heads, rows}, block: 128, clusterX: heads, args: []any{att, part, heads, hd, splits, sh}}
}

const attnChunk = 32 // CHUNK in attention.cu: positions per attn_split block

// attnDecodeCall: the attention of a decode step in one launch, a row's
// heads one cluster (attn_decode_c; with sh, attn_decode_lora_c, which also
// computes the o_proj LoRA shrink into sh's t, as attn_combine_lora_c).
func attnDecodeCall(att, q, meta Buf, layer, heads, kvHeads, hd, rows int, sh *shrinkOp) call {
	c := call{name: "attn_decode_c", grid: [3]int{heads, rows}, block: 256, shmem: 2 * attnDecodeKeys * hd * 4, clusterX: heads,
		args: []any{att, q, meta, layer, heads, kvHeads, hd}}
	if sh != nil {
		c.name, c.args = "attn_decode_lora_c", append(c.args, sh)
	}
	return c
}

const attnDecodeKeys = 64 // DK in attention.cu: the positions attn_decode_c holds at once

// attnDecode reports whether the attention of pass p runs as attnDecodeCall:
// decode steps of at most attnDecodeRows rows, on devices with wide
// clusters, for the shapes the kernel is built for (heads ≤ 16, ≤ 8 query
// heads a KV head, head size ≤ 128, LoRA rank ≤ 64), but not
//   - a single row with adapters: attn_split_kv + attn_combine_lora_c
//     measured as fast or faster there (H200, 3B: 357–361 against 353–358
//     tok/s; the o shrink's dots after the merge lengthen the one launch by
//     ~3 µs);
//   - sequences of more than attnDecodeMax positions (2× that from 16 rows):
//     the kernel takes any length, in slices of attnDecodeKeys, but its
//     blocks' serial work grows with it, and under 16 rows its clusters do
//     not fill the card (batch 1, 352 positions: 396 against 409 tok/s
//     without adapters; batch 20, 352 positions: 3,933 / 5,091 against 3,697
//     / 4,545).
//
// H200, 3B, ~200 positions, adapter on / off: batch 1 off +2–3 %, 4 +2 / +4 %,
// 8 +2 / +3 %, 20 +6 / +7 %, 32 +3 / +6 %; 64 −2 / +2 %, so not there
// (kernels/PERF.md, sixteenth session).
func (e *Engine) attnDecode(p pass, lora bool) bool {
	c := e.cfg
	maxPos := attnDecodeMax
	if p.rows >= 16 {
		maxPos *= 2
	}
	return p.tiles == 0 && p.oneEach && p.rows <= attnDecodeRows && (p.rows > 1 || !lora) && p.splits*attnChunk <= maxPos && e.Dev.combineCluster &&
		c.Heads <= 16 && c.Heads%c.KVHeads == 0 && c.Heads/c.KVHeads <= 8 && c.HeadDim <= 128 && c.HeadDim%4 == 0 && (!lora || e.rmax <= 64)
}

// attnDecodeRows and attnDecodeMax bound attnDecode (QBENCH_ATTN_DECODE_ROWS,
// QBENCH_ATTN_DECODE_MAX; kernels/PERF.md, sixteenth session).
var attnDecodeRows, attnDecodeMax = envInt("QBENCH_ATTN_DECODE_ROWS", 32), envInt("QBENCH_ATTN_DECODE_MAX", 256)

// attnFlashCall: the causal attention of a prefill pass, a block per (tile
// of up to flashRows rows of one sequence, head), straight into att.
func attnFlashCall(att, q, meta, tiles Buf, layer, heads, kvHeads, hd, ntiles int) call {
	return call{name: fmt.Sprintf("attn_flash_%d", hd), grid: [3]int{ntiles, heads}, block: 128, shmem: flashShmem(hd),
		args: []any{att, q, meta, tiles, layer, heads, kvHeads}}
}

// flashKeys is the keys attn_flash takes a step (FK in attn_flash.cu).
const flashKeys = 32

// flashShmem is attn_flash's dynamic shared memory for head size hd
// (its layout in attn_flash.cu): the rows' q, K and V split into two planes
// each, the 4 warps' P.
func flashShmem(hd int) int {
	return (flashRows*(hd+4) + 2*flashKeys*(hd+4) + 2*flashKeys*(hd+8) + 4*16*(flashKeys+4)) * 4
}
