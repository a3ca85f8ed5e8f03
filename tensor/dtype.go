package tensor

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/x448/float16"
)

// DType is an element type of a stored tensor.
type DType int

const (
	F32 DType = iota
	BF16
	F16
	U8
	I64
)

var dtypeNames = [...]string{F32: "F32", BF16: "BF16", F16: "F16", U8: "U8", I64: "I64"}
var dtypeSizes = [...]int{F32: 4, BF16: 2, F16: 2, U8: 1, I64: 8}

// Size is the number of bytes of one element.
func (d DType) Size() int { return dtypeSizes[d] }

func (d DType) String() string { return dtypeNames[d] }

// ParseDType maps a safetensors dtype name ("F32", "BF16", ...) to a DType.
func ParseDType(s string) (DType, error) {
	for i, n := range dtypeNames {
		if n == s {
			return DType(i), nil
		}
	}
	return 0, fmt.Errorf("unsupported dtype %q", s)
}

// NumElements is the product of a shape's dimensions (1 for a scalar).
func NumElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// BF16ToF32 widens a bfloat16 bit pattern; exact.
func BF16ToF32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// F32ToBF16 rounds to the nearest bfloat16, ties to even; NaN stays NaN.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and non-zero
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// RoundBF16 rounds f to the nearest bfloat16 value and returns it as float32.
func RoundBF16(f float32) float32 { return BF16ToF32(F32ToBF16(f)) }

// ToF32 decodes little-endian elements of dtype d from src into dst, which must
// hold len(src)/d.Size() values. I64 and U8 convert by value.
func ToF32(dst []float32, src []byte, d DType) {
	switch d {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = float16.Frombits(binary.LittleEndian.Uint16(src[2*i:])).Float32()
		}
	case U8:
		for i := range dst {
			dst[i] = float32(src[i])
		}
	case I64:
		for i := range dst {
			dst[i] = float32(int64(binary.LittleEndian.Uint64(src[8*i:])))
		}
	}
}

// F32Bytes encodes float32 values little-endian.
func F32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// BF16Bytes encodes float32 values as bfloat16 (rounded), little-endian.
func BF16Bytes(v []float32) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], F32ToBF16(x))
	}
	return b
}

// I64Bytes encodes int64 values little-endian.
func I64Bytes(v []int64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return b
}

// RoundF16 rounds f to the nearest IEEE half value and returns it as float32.
func RoundF16(f float32) float32 { return float16.Fromfloat32(f).Float32() }
