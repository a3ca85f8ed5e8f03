//go:build cuda

package kernels

import (
	"fmt"

	"github.com/qbench/qbench/qwen"
)

// pass is the shape of one forward pass.
type pass struct {
	rows   int // new tokens over all sequences
	nHead  int // rows that get logits
	splits int // attention chunks of attnChunk positions (the longest sequence's)
	// reserve: the splits to size the attention scratch for (decode steps:
	// the sequences' capacity, so that it is not regrown every attnChunk
	// tokens), if more than splits.
	reserve int
	tiles   int // attn_flash tiles (hostTile), or 0: flash-decoding (attn_split + attn_combine)
	// oneEach: every sequence has one new token in the pass (decode steps),
	// so no row reads cache slots another row of the pass writes.
	oneEach bool
	// pdl: launch the pass's kernels as programmatic dependents — for decode
	// steps, where it measured faster (H200: batch 1 +3 % with an adapter,
	// +9 % without; batch 20 +4 %, 64 +2 %); prefill passes measured slower
	// with it (kernels/PERF.md, v9).
	pdl bool
}

// prepare validates a pass (qwen's CheckBatch, as the CPU engine) and fills
// the host-side row metadata and the list of rows that get logits: every row
// when all, else each sequence's last.
func (e *Engine) prepare(seqs []*qwen.Seq, tokens [][]int, all bool) (pass, error) {
	rows, err := e.m.CheckBatch(seqs, tokens)
	if err != nil {
		return pass{}, err
	}
	if rows > e.MaxRows {
		return pass{}, fmt.Errorf("forward: %d rows in one pass, the engine holds %d", rows, e.MaxRows)
	}
	e.hostMeta, e.hostIdx = e.hostMeta[:0], e.hostIdx[:0]
	maxLen := 0
	for i, s := range seqs {
		ds, ok := s.Handle.(*devSeq)
		if !ok || ds.k.Ptr == 0 {
			return pass{}, fmt.Errorf("forward: sequence %d was not made by this engine", i)
		}
		for j, t := range tokens[i] {
			e.hostMeta = append(e.hostMeta, rowMeta{Tok: int32(t), Pos: int32(s.Len + j), Adapter: int32(s.Adapter), Cap: int32(s.Cap),
				K: uint64(ds.k.Ptr), V: uint64(ds.v.Ptr)})
			if all || j == len(tokens[i])-1 {
				e.hostIdx = append(e.hostIdx, int32(len(e.hostMeta)-1))
			}
		}
		maxLen = max(maxLen, s.Len+len(tokens[i]))
	}
	p := pass{rows: rows, nHead: len(e.hostIdx), splits: (maxLen + attnChunk - 1) / attnChunk, oneEach: rows == len(seqs)}
	e.hostTile = e.hostTile[:0]
	if e.flash(rows, len(seqs)) {
		e.hostTile = flashTiles(e.hostTile, tokens)
		p.tiles = len(e.hostTile) / 2
	}
	if p.nHead > e.maxHead {
		return pass{}, fmt.Errorf("forward: logits for %d rows in one pass, the engine returns at most %d", p.nHead, e.maxHead)
	}
	return p, nil
}

// stage sizes the attention scratch and, with write, copies the pass's row
// metadata and head-row list to the device (on its thread), once the previous
// pass is done with them (the copies do not wait for the non-blocking stream).
func (e *Engine) stage(p pass, write bool) error {
	if !write {
		return e.ensurePart(p.rows, max(p.splits, p.reserve))
	}
	if err := e.Dev.Sync(); err != nil {
		return err
	}
	if p.tiles > 0 {
		if err := Write(e.tiles, e.hostTile); err != nil {
			return err
		}
	} else if err := e.ensurePart(p.rows, max(p.splits, p.reserve)); err != nil {
		return err
	}
	if err := Write(e.meta, e.hostMeta); err != nil {
		return err
	}
	return Write(e.headIdx, e.hostIdx)
}

// flash reports whether a pass of rows rows over seqs sequences runs its
// attention as attn_flash: prefill passes (16 rows a sequence or more on
// average: a tile's unused rows cost little), head sizes it is built for, and
// its shared memory on this device. Decode steps (a row a sequence) keep
// flash-decoding, which splits each row's keys over many blocks.
func (e *Engine) flash(rows, seqs int) bool {
	hd := e.cfg.HeadDim
	return rows >= 16*seqs && (hd == 64 || hd == 128) && flashShmem(hd) <= e.Dev.maxShmem
}

// ensurePart sizes the split-attention scratch (outside any capture); the
// graphs that held the old buffer go.
func (e *Engine) ensurePart(rows, splits int) error {
	c := e.cfg
	need := int64(rows) * int64(c.Heads) * int64(splits) * int64(c.HeadDim+2) * 4
	if need <= e.part.Bytes {
		return nil
	}
	if e.part.Ptr != 0 {
		e.Dev.Free(&e.part)
	}
	e.dropGraphs()
	var err error
	e.part, err = e.Dev.Alloc(need, "attention partials")
	return err
}
