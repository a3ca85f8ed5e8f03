//go:build cuda

package kernels

// Go mirrors of the structs in common.cuh, field for field; device pointers
// are uint64. TestStructLayout checks the sizes and offsets against the
// compiled kernels.

const (
	maxAdapters = 8 // MAX_ADAPTERS
	maxSlots    = 3 // MAX_SLOTS
)

// Matrix formats and gemv epilogue modes (FMT_*, MODE_* in common.cuh).
const (
	fmtNF4  = 0
	fmtBF16 = 1
	fmtF32  = 2
	// fmtNF4Tiled is NF4 whose codes the engine reordered within each
	// 1024-column tile (tileNF4), so that a warp's x loads coalesce.
	fmtNF4Tiled = 3
	// fmtNF4MMA is NF4 whose codes the engine reordered within each 64-block
	// (mmaNF4) for the tensor-core kernels' fragments.
	fmtNF4MMA = 4

	// Launcher-only kinds beyond the formats.
	fmtNF4Round = 5 // NF4 with an f16 or no rounding: the gemv_nf4r kernels
	kindMMA     = 6 // NF4 on the tensor cores: the mma_nf4 kernels
	kindMMABF16 = 7 // dense bf16 on the tensor cores: the mma_bf16 kernels

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
	N, K, Fmt, BlockShift, NestedShift, Round, LoraSlot    int32
}

type rowMeta struct {
	Tok, Pos, Adapter, Cap int32
	K, V                   uint64
}

type gemvOp struct {
	Mat                                                   [3]mat
	X, Y, T, Rows, Rope                                   uint64
	Nmat, Mode, Ldy, TStride, Rmax, Layer, HeadDim, KVDim int32
	RopeTheta                                             float64
}

type shrinkOp struct {
	A                        [maxSlots][maxAdapters]uint64
	Rank                     [maxSlots][maxAdapters]int32
	X, T, Rows               uint64
	NSlots, K, TStride, Rmax int32
}
