//go:build cuda

package kernels

// Go mirrors of the structs in common.cuh, field for field; device pointers
// are uint64. TestStructLayout checks the sizes and offsets against the
// compiled kernels.

const (
	maxAdapters = 8 // MAX_ADAPTERS
	maxSlots    = 3 // MAX_SLOTS
)

// matFmt is how a matrix is stored on the device (FMT_* in common.cuh): what
// the kernels read in Mat.fmt. Which kernel runs a matrix is a kernelKind.
type matFmt int32

const (
	fmtNF4  matFmt = 0
	fmtBF16 matFmt = 1
	fmtF32  matFmt = 2
	// fmtNF4Tiled is NF4 whose codes the engine reordered within each
	// 1024-column tile (tileNF4), so that a warp's x loads coalesce.
	fmtNF4Tiled matFmt = 3
	// fmtNF4LUT is NF4 whose codes the engine reordered per (row, 256
	// columns) (lutNF4) for the tensor-core kernels, nf4_lut and mmas_nf4.
	// (4 was a layout of the older batch kernel.)
	fmtNF4LUT matFmt = 5
)

// Epilogue modes of the matrix kernels (MODE_* in common.cuh).
const (
	modeStore  = 0
	modeResid  = 1
	modeQKV    = 2
	modeGateUp = 3
)

type mat struct {
	Packed, BF16, F32, QAbsmax, Absmax, Nested, Code, Bias uint64
	LoraB                                                  [maxAdapters]uint64
	LoraScale                                              [maxAdapters]float32
	LoraRank                                               [maxAdapters]int32
	Offset                                                 float32
	N, K                                                   int32
	Fmt                                                    matFmt
	BlockShift, NestedShift, Round, LoraSlot               int32
}

type rowMeta struct {
	Tok, Pos, Adapter, Cap int32
	K, V                   uint64
}

type gemvOp struct {
	Mat                                                   [3]mat
	X, Y, T, Rows, Rope                                   uint64
	Nmat, Mode, Ldy, TStride, Rmax, Layer, HeadDim, KVDim int32
}

type shrinkOp struct {
	A                        [maxSlots][maxAdapters]uint64
	Rank                     [maxSlots][maxAdapters]int32
	X, T, Rows               uint64
	NSlots, K, TStride, Rmax int32
}
