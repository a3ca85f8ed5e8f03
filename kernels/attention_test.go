//go:build cuda

package kernels

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAttentionDecode checks attn_decode_c and attn_decode_lora_c (the
// attention of short decode steps in one launch, a row's heads a cluster)
// against RefAttention in float64, and the latter's o shrink against A·att in
// float64 for rows of two adapters (ranks 16 and 40: rmax 40, three rounds of
// 16 outputs, zeros past the smaller rank) and a row without one: heads over
// KV heads 4/2, 14/2 and 16/2 (groups of 2, 7 and 8 blocks), head sizes 32,
// 64 and 128, positions from 0 to 1,100 (a block's keys in one slice of 64
// and in up to three), layer 1 of 2; the outputs poisoned first.
func TestAttentionDecode(t *testing.T) {
	d := device(t)
	if !d.combineCluster {
		t.Skip("attn_decode_c needs clusters of up to 16 blocks (compute capability 9.0)")
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 13))
	for _, c := range []struct {
		heads, kvHeads, hd int
		poss               []int
	}{{4, 2, 32, []int{0, 70, 130}}, {14, 2, 64, []int{3, 200, 447}}, {16, 2, 128, []int{0, 9, 300, 1100}}} {
		const layers, capTok, rmax = 2, 1200, 40
		kvDim, qDim, M := c.kvHeads*c.hd, c.heads*c.hd, len(c.poss)
		q := randSlice(rng, M*qDim, 1)
		ranks := []int{16, rmax}
		As := [][]float32{randSlice(rng, ranks[0]*qDim, 1), randSlice(rng, ranks[1]*qDim, 1)}
		var Ks, Vs [][]float32
		var att [2][]float32
		var tt []float32
		err := d.Do(func() error {
			var meta []rowMeta
			var bufs []Buf
			defer func() {
				for i := range bufs {
					d.Free(&bufs[i])
				}
			}()
			up := func(v []float32, what string) Buf {
				b, err := Upload(d, v, what)
				if err != nil {
					t.Fatal(err)
				}
				bufs = append(bufs, b)
				return b
			}
			for m, p := range c.poss {
				K, V := randSlice(rng, layers*capTok*kvDim, 1), randSlice(rng, layers*capTok*kvDim, 1)
				Ks, Vs = append(Ks, K), append(Vs, V)
				kb, vb := up(K, "K"), up(V, "V")
				meta = append(meta, rowMeta{Pos: int32(p), Cap: capTok, Adapter: int32(m%3 - 1), K: uint64(kb.Ptr), V: uint64(vb.Ptr)})
			}
			mb, err := Upload(d, meta, "meta")
			if err != nil {
				return err
			}
			bufs = append(bufs, mb)
			qb := up(q, "q")
			ab, err := d.Alloc(int64(M*qDim*4), "att")
			if err != nil {
				return err
			}
			tb, err := d.Alloc(int64(M*rmax*4), "t")
			if err != nil {
				return err
			}
			bufs = append(bufs, ab, tb)
			sh := &shrinkOp{T: uint64(tb.Ptr), Rows: uint64(mb.Ptr), NSlots: 1, K: int32(qDim), TStride: rmax, Rmax: rmax}
			for i, A := range As {
				sh.A[0][i], sh.Rank[0][i] = uint64(up(A, "A").Ptr), int32(ranks[i])
			}
			for i, s := range []*shrinkOp{nil, sh} {
				d.Poison(ab)
				d.Poison(tb)
				if err := d.run(attnDecodeCall(ab, qb, mb, 1, c.heads, c.kvHeads, c.hd, M, s)); err != nil {
					return err
				}
				att[i] = make([]float32, M*qDim)
				if err := Read(att[i], ab); err != nil {
					return err
				}
			}
			tt = make([]float32, M*rmax)
			return Read(tt, tb)
		})
		if err != nil {
			t.Fatal(err)
		}
		for m, p := range c.poss {
			off := 1 * capTok * kvDim // layer 1
			want := RefAttention(q[m*qDim:(m+1)*qDim], Ks[m][off:], Vs[m][off:], p, c.heads, c.kvHeads, c.hd)
			for i, a := range att {
				g := a[m*qDim : (m+1)*qDim]
				if r := relErr(g, want); r > fp32Tol {
					t.Errorf("%d/%d heads, hd %d, %s, row %d (pos %d): relative error %.3g; %s", c.heads, c.kvHeads, c.hd,
						[]string{"attn_decode_c", "attn_decode_lora_c"}[i], m, p, r, firstMismatch(g, want, fp32Tol))
				}
			}
			wt := make([]float32, rmax) // zeros past the rank, and without an adapter
			if ad := m%3 - 1; ad >= 0 {
				for j := range ranks[ad] {
					var s float64
					for k := range qDim {
						s += float64(As[ad][j*qDim+k]) * float64(want[k])
					}
					wt[j] = float32(s)
				}
			}
			g := tt[m*rmax : (m+1)*rmax]
			if r := relErr(g, wt); r > fp32Tol || (m%3 == 0 && slices.ContainsFunc(g, func(v float32) bool { return v != 0 })) {
				t.Errorf("%d/%d heads, hd %d, row %d (adapter %d): o shrink relative error %.3g; %s", c.heads, c.kvHeads, c.hd, m, m%3-1, r, firstMismatch(g, wt, fp32Tol))
			}
		}
	}
}

// TestFlashAttention checks attn_flash (prefill passes) against RefAttention
// in float64: one pass over three sequences — 70 new rows after 30 cached
// positions (a full tile and a partial one), 5 rows from position 0, 130 rows
// after 200 (three tiles, keys past one tile) — at head sizes 64 and 128, 4
// query heads over 2 KV heads, layer 1 of 2; the output poisoned first.
func TestFlashAttention(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 12))
	for _, hd := range []int{64, 128} {
		const heads, kvHeads, layers = 4, 2, 2
		starts, lens := []int{30, 0, 200}, []int{70, 5, 130}
		kvDim := kvHeads * hd
		var Ks, Vs [][]float32
		var meta []rowMeta
		tokens := make([][]int, len(lens))
		rows := 0
		for i := range lens {
			capTok := starts[i] + lens[i] + 3
			Ks, Vs = append(Ks, randSlice(rng, layers*capTok*kvDim, 1)), append(Vs, randSlice(rng, layers*capTok*kvDim, 1))
			tokens[i] = make([]int, lens[i])
			rows += lens[i]
		}
		q := randSlice(rng, rows*heads*hd, 1)
		tiles := flashTiles(nil, tokens)
		var att []float32
		err := d.Do(func() error {
			var bufs []Buf
			defer func() {
				for i := range bufs {
					d.Free(&bufs[i])
				}
			}()
			meta = meta[:0]
			for i := range lens {
				kb, _ := Upload(d, Ks[i], "K")
				vb, _ := Upload(d, Vs[i], "V")
				bufs = append(bufs, kb, vb)
				for j := 0; j < lens[i]; j++ {
					meta = append(meta, rowMeta{Pos: int32(starts[i] + j), Cap: int32(starts[i] + lens[i] + 3), K: uint64(kb.Ptr), V: uint64(vb.Ptr)})
				}
			}
			mb, _ := Upload(d, meta, "meta")
			qb, _ := Upload(d, q, "q")
			tb, _ := Upload(d, tiles, "tiles")
			ab, _ := d.Alloc(int64(rows*heads*hd*4), "att")
			bufs = append(bufs, mb, qb, tb, ab)
			d.Poison(ab)
			if err := d.run(attnFlashCall(ab, qb, mb, tb, 1, heads, kvHeads, hd, len(tiles)/2)); err != nil {
				return err
			}
			att = make([]float32, rows*heads*hd)
			return Read(att, ab)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(tiles) != 2*(2+1+3) {
			t.Fatalf("hd %d: %d tiles, want 6: %v", hd, len(tiles)/2, tiles)
		}
		m := 0
		for i := range lens {
			capTok := starts[i] + lens[i] + 3
			off := 1 * capTok * kvDim // layer 1
			for j := 0; j < lens[i]; j, m = j+1, m+1 {
				want := RefAttention(q[m*heads*hd:(m+1)*heads*hd], Ks[i][off:], Vs[i][off:], starts[i]+j, heads, kvHeads, hd)
				g := att[m*heads*hd : (m+1)*heads*hd]
				if r := relErr(g, want); r > fp32Tol {
					t.Fatalf("hd %d, sequence %d row %d (pos %d): relative error %.3g; %s", hd, i, j, starts[i]+j, r, firstMismatch(g, want, fp32Tol))
				}
			}
		}
	}
}
