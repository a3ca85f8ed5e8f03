package kernels

import (
	"math/rand/v2"
	"testing"
)

// code is element (r, c)'s 4-bit code in bitsandbytes' packing.
func code(packed []byte, in, r, c int) byte {
	b := packed[(r*in+c)/2]
	if c%2 == 0 {
		return b >> 4
	}
	return b & 15
}

// TestLayouts checks each re-layout against where its kernel looks for
// element (r, c), written out from the kernel's own indexing, on random codes
// and shapes with partial tiles and steps.
func TestLayouts(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
	for _, sh := range [][2]int{{3, 2048 + 128}, {2, 1024}, {4, 64 * 7}, {2, 896}, {1, 64}} {
		out, in := sh[0], sh[1]
		packed := make([]byte, out*in/2)
		for i := range packed {
			packed[i] = byte(rng.Uint32())
		}
		// nibble returns the code at byte offset o (high nibble first when hi).
		nibble := func(t []byte, o int, hi bool) byte {
			if hi {
				return t[o] >> 4
			}
			return t[o] & 15
		}
		tiled, lut := tileNF4(nil, packed, out, in), lutNF4(nil, packed, out, in)
		for r := 0; r < out; r++ {
			for c := 0; c < in; c++ {
				want := code(packed, in, r, c)
				// tile_fma: lane l, group j of a whole tile holds columns 4l + 128j … +3.
				if tile := c / 1024 * 1024; tile+1024 <= in {
					l, j, i := (c%1024)%128/4, (c%1024)/128, c%4
					if got := nibble(tiled, (r*in+tile)/2+16*l+2*j+i/2, i%2 == 0); got != want {
						t.Fatalf("tileNF4 %dx%d: (%d, %d) = %d, want %d", out, in, r, c, got, want)
					}
				} else if got := code(tiled, in, r, c); got != want {
					t.Fatalf("tileNF4 %dx%d tail: (%d, %d) = %d, want %d", out, in, r, c, got, want)
				}
				if in%64 != 0 {
					continue
				}
				// load_raw and fetch_codes: step s, block b = its thread t: bytes 16t (first half) and 16·nb + 16t.
				st, b, byteInBlk := c/256, (c%256)/64, (c%64)/2
				nb := min(4, in/64-4*st)
				o := r*in/2 + 128*st + 16*b + byteInBlk
				if byteInBlk >= 16 {
					o = r*in/2 + 128*st + 16*nb + 16*b + byteInBlk - 16
				}
				if got := nibble(lut, o, c%2 == 0); got != want {
					t.Fatalf("lutNF4 %dx%d: (%d, %d) = %d, want %d", out, in, r, c, got, want)
				}
			}
		}
	}
}

// TestFlashTiles checks the attn_flash tiles of passes: every row of every
// sequence in exactly one tile of its own sequence, in order, at most
// flashRows a tile, consecutive rows.
func TestFlashTiles(t *testing.T) {
	for _, lens := range [][]int{{}, {1}, {64}, {65}, {128, 1, 63, 200}, {5, 0, 70}} {
		tokens := make([][]int, len(lens))
		for i, n := range lens {
			tokens[i] = make([]int, n)
		}
		tiles := flashTiles([]int32{-7}, tokens)[1:] // appends after what t holds
		if len(tiles)%2 != 0 {
			t.Fatalf("%v: odd tile list %v", lens, tiles)
		}
		next, seq, left := 0, 0, 0 // the next row expected, its sequence, rows of it still to come
		for k := 0; k < len(tiles); k += 2 {
			for left == 0 && seq < len(lens) {
				if left = lens[seq]; left == 0 {
					seq++
				}
			}
			r0, n := int(tiles[k]), int(tiles[k+1])
			if r0 != next || n < 1 || n > flashRows || n > left {
				t.Fatalf("%v: tile %d = {%d, %d}; want first row %d, 1…%d rows", lens, k/2, r0, n, next, min(flashRows, left))
			}
			next, left = next+n, left-n
			if left == 0 {
				seq++
			}
		}
		total := 0
		for _, n := range lens {
			total += n
		}
		if next != total {
			t.Fatalf("%v: tiles cover %d rows, want %d", lens, next, total)
		}
	}
}
