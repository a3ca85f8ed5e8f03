package kernels

// Host-side re-layouts of NF4 codes, each in the order one kernel reads them.
// Packed codes are bitsandbytes': the codes of a row-major [out, in] matrix,
// two per byte, element 2i in the high nibble of byte i. Untagged, so CI
// tests each against a plain index formula (layout_test.go). Each writes into
// t when it has the room (a buffer of an earlier layer, reused), else into a
// new slice, and returns it.

// tileNF4 reorders the codes within each whole 1024-column tile of each row
// (for gemv_nf4): lane l of a warp gets, in its 16 bytes, the codes of
// columns 4l + 128j … 4l + 128j + 3 for j = 0…7 (2 bytes a group), so that
// the x values a warp needs for one group are one contiguous 512-byte run.
// Columns past the last whole tile keep their order.
func tileNF4(t, packed []byte, out, in int) []byte {
	t = append(t[:0], packed...)
	for r := 0; r < out; r++ {
		for c := 0; c+1024 <= in; c += 1024 {
			base := (r*in + c) / 2 // a tile is 512 bytes of codes
			for l := 0; l < 32; l++ {
				for j := 0; j < 8; j++ {
					t[base+16*l+2*j] = packed[base+2*l+64*j]
					t[base+16*l+2*j+1] = packed[base+2*l+64*j+1]
				}
			}
		}
	}
	return t
}

// lutNF4 reorders the codes within each 256-column step of each row (for
// nf4_lut and mmas_nf4; in % 64 == 0): a step holds nb 64-blocks (4, or fewer at the end
// of a row), 32 bytes each; the first 16 bytes of block b go to 16b, the
// second 16 to 16·nb + 16b, so that the four threads of a quad, each owning
// one block, read one contiguous 64-byte run per 16-byte load.
func lutNF4(t, packed []byte, out, in int) []byte {
	t = room(t, len(packed))
	nblk := in / 64
	for r := 0; r < out; r++ {
		for s := 0; 4*s < nblk; s++ {
			nb := min(4, nblk-4*s)
			base := r*in/2 + 128*s
			for b := 0; b < nb; b++ {
				copy(t[base+16*b:base+16*b+16], packed[base+32*b:base+32*b+16])
				copy(t[base+16*nb+16*b:base+16*nb+16*b+16], packed[base+32*b+16:base+32*b+32])
			}
		}
	}
	return t
}

// room is t resized to n bytes, or a new slice when t is too small; every
// byte is written by the caller.
func room(t []byte, n int) []byte {
	if cap(t) < n {
		return make([]byte, n)
	}
	return t[:n]
}

// flashRows is the rows of an attn_flash tile (FQ in attn_flash.cu).
const flashRows = 64

// flashTiles appends to t the attn_flash tiles {first row, rows} of a pass
// whose sequences bring len(tokens[i]) rows each, in order: up to flashRows
// consecutive rows of one sequence a tile.
func flashTiles(t []int32, tokens [][]int) []int32 {
	r0 := 0
	for _, ts := range tokens {
		for j := 0; j < len(ts); j += flashRows {
			t = append(t, int32(r0+j), int32(min(flashRows, len(ts)-j)))
		}
		r0 += len(ts)
	}
	return t
}
