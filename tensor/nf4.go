package tensor

import (
	"fmt"
	"math"
)

// NF4Table is bitsandbytes' 4-bit NormalFloat code book: quantiles of N(0,1)
// scaled to [-1, 1], with an exact zero at code 7.
var NF4Table = [16]float32{
	-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
	-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
	0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
	0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
}

// DynamicMap8 returns bitsandbytes' signed 8-bit dynamic code (256 values, ascending).
func DynamicMap8() []float32 {
	m := make([]float32, 256)
	for i, b := range dynamicMap8 {
		m[i] = math.Float32frombits(b)
	}
	return m
}

const (
	NF4BlockSize    = 64  // elements per absmax
	NestedBlockSize = 256 // absmax values per nested absmax (double quantisation)
)

// NF4 is a weight quantised as bitsandbytes stores it. The weight is
// flattened row-major; element 2j is the high nibble of Packed[j], 2j+1 the
// low; block b covers elements [64b, 64b+64) whatever the row boundaries.
type NF4 struct {
	Shape     []int  // the original weight's shape, [out, in]
	Packed    []byte // [n/2] codes
	BlockSize int    // 64
	Compute   DType  // BF16, F16 or F32: dequantised weights are rounded to it (F32: not rounded)

	// Without double quantisation: Absmax holds one fp32 scale per block.
	Absmax []float32 // [ceil(n/64)]

	// With double quantisation: the scales are 8-bit codes into NestedCode,
	// scaled per 256 scales by NestedAbsmax, plus Offset (their mean).
	QAbsmax         []byte    // [ceil(n/64)]
	NestedAbsmax    []float32 // [ceil(n/64/256)]
	NestedCode      []float32 // [256]
	NestedBlockSize int       // 256
	Offset          float32
}

// Double reports whether the scales are double-quantised.
func (q *NF4) Double() bool { return q.QAbsmax != nil }

// Len is the number of weight elements.
func (q *NF4) Len() int { return NumElements(q.Shape) }

// nf4Mid are bitsandbytes' dQuantizeNF4 thresholds, the midpoints of
// neighbouring NF4 values, ascending: code k+1 begins above nf4Mid[k].
var nf4Mid = [15]float32{
	-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
	-0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
	0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
	0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
}

// quantizeNF4 maps x (already divided by its block's absmax) to a code by
// bitsandbytes' dQuantizeNF4 decision tree: the same fp32 comparisons in the
// same order (x > 0.0398, then ±0.389 or -0.340, …), written as a four-step
// search over nf4Mid so it compiles to conditional moves, not branches that
// mispredict on every other weight. NaN compares false and gets code 0.
func quantizeNF4(x float32) byte {
	c := 0
	if x > nf4Mid[7] {
		c = 8
	}
	if x > nf4Mid[c+3] {
		c += 4
	}
	if x > nf4Mid[c+1] {
		c += 2
	}
	if x > nf4Mid[c] {
		c++
	}
	return byte(c)
}

// quantizeDynamic maps x in [-1,1] to the nearest entry of the sorted 256-entry
// code by bitsandbytes' dQuantize: a 7-step binary search from the middle,
// then a midpoint comparison with the bracketing neighbour.
func quantizeDynamic(code []float32, x float32) byte {
	pivot, upperPivot, lowerPivot := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for i := 64; i > 0; i >>= 1 {
		if x > val {
			lowerPivot, lower = pivot, val
			pivot += i
		} else {
			upperPivot, upper = pivot, val
			pivot -= i
		}
		val = code[pivot]
	}
	if upperPivot == 255 {
		upper = code[upperPivot]
	}
	if lowerPivot == 0 {
		lower = code[lowerPivot]
	}
	if x > val {
		if x > (upper+val)*0.5 {
			return byte(upperPivot)
		}
		return byte(pivot)
	}
	if x < (lower+val)*0.5 {
		return byte(lowerPivot)
	}
	return byte(pivot)
}

// blockAbsmax returns max |v| over each block of size bs of v.
func blockAbsmax(v []float32, bs int) []float32 {
	out := make([]float32, (len(v)+bs-1)/bs)
	for i, x := range v {
		if a := float32(math.Abs(float64(x))); a > out[i/bs] {
			out[i/bs] = a
		}
	}
	return out
}

// QuantizeNF4 quantises w (values already in the compute dtype, e.g. bf16
// widened to fp32) of the given shape exactly as bitsandbytes' quantize_4bit
// with blocksize 64: x·(1/absmax) is coded by the NF4 decision tree. With
// double, the absmax vector minus its mean is quantised blockwise (256) to the
// 8-bit dynamic map.
func QuantizeNF4(w []float32, shape []int, compute DType, double bool) (*NF4, error) {
	n := NumElements(shape)
	if n != len(w) || n%2 != 0 {
		return nil, fmt.Errorf("nf4: %d values for shape %v (need an even count equal to the shape)", len(w), shape)
	}
	for i, v := range w {
		if math.Float32bits(v)&0x7f800000 == 0x7f800000 { // exponent all ones: NaN or infinity
			return nil, fmt.Errorf("nf4: element %d is %v: a non-finite weight cannot be quantised", i, v)
		}
	}
	packed := make([]byte, n/2)
	absmax := blockAbsmax(w, NF4BlockSize)
	for b, a := range absmax {
		inv := 1 / a
		lo, hi := b*NF4BlockSize, min((b+1)*NF4BlockSize, n)
		for i := lo; i < hi; i += 2 {
			packed[i/2] = quantizeNF4(w[i]*inv)<<4 | quantizeNF4(w[i+1]*inv)
		}
	}
	return NewNF4(shape, compute, packed, absmax, double), nil
}

// NewNF4 assembles a quantised tensor from its codes (blocksize 64) and the
// fp32 absmax of each block, as QuantizeNF4 (or the GPU, which computes
// both the same way) made them; with double, the absmax are double-quantised
// as bitsandbytes does: their mean (torch's arithmetic) taken off, then
// blockwise (256) coded in the 8-bit dynamic map.
func NewNF4(shape []int, compute DType, packed []byte, absmax []float32, double bool) *NF4 {
	q := &NF4{Shape: append([]int(nil), shape...), BlockSize: NF4BlockSize, Compute: compute, Packed: packed}
	if !double {
		q.Absmax = absmax
		return q
	}
	q.Offset = torchMean(absmax)
	centered := make([]float32, len(absmax))
	for i, a := range absmax {
		centered[i] = a - q.Offset
	}
	q.NestedCode = DynamicMap8()
	q.NestedBlockSize = NestedBlockSize
	q.NestedAbsmax = blockAbsmax(centered, NestedBlockSize)
	q.QAbsmax = make([]byte, len(absmax))
	ForChunks(len(centered), 1<<15, func(lo, hi int) { // ~50 ns a value: on every core for a large matrix
		for i := lo; i < hi; i++ {
			q.QAbsmax[i] = quantizeDynamic(q.NestedCode, centered[i]*(1/q.NestedAbsmax[i/NestedBlockSize]))
		}
	})
	return q
}

// torchMean is torch's float32 mean on a CUDA device as bitsandbytes takes
// it (absmax.mean()): an fp32 reduction, then times fp32(1/n) — torch's mean
// multiplies by the reciprocal rather than divides. The reduction is
// emulated as torch's reduce kernel orders it for one block: 512 threads,
// each with 4 accumulators over a stride of 2,048 elements, the 4 added, then
// a halving tree over the threads.
//
// What is and is not reproducible: on an H200 (testdata/torch-mean.json, up
// to n = 352,256) this gives torch.mean's bits for every size tried, where
// the correctly rounded mean missed 2 of 5 and the correctly rounded sum
// times fp32(1/n) 3 of 5; torch on the CPU (a different order) differed
// from torch on CUDA at n = 768. For larger inputs torch's CUDA kernel
// splits the reduction over several blocks in an order that depends on the
// device's multiprocessor count, which this does not follow: an offset one
// ulp off changes the nested codes of the few values on a code boundary.
func torchMean(v []float32) float32 {
	const threads, vec = 512, 4
	var acc [threads * vec]float32
	for i := 0; i < len(v); i += threads * vec {
		for j := i; j < min(i+threads*vec, len(v)); j++ {
			acc[j-i] += v[j]
		}
	}
	var per [threads]float32
	for t := range per {
		per[t] = ((acc[t*vec] + acc[t*vec+1]) + acc[t*vec+2]) + acc[t*vec+3]
	}
	for w := threads / 2; w >= 1; w /= 2 {
		for t := 0; t < w; t++ {
			per[t] += per[t+w]
		}
	}
	return per[0] * (float32(1) / float32(len(v)))
}

// AbsmaxF32 returns the per-block scales in fp32, rebuilding double-quantised
// ones as bitsandbytes does: code[q]·nested_absmax[b/256] + offset.
func (q *NF4) AbsmaxF32() []float32 {
	if !q.Double() {
		return q.Absmax
	}
	out := make([]float32, len(q.QAbsmax))
	for i, c := range q.QAbsmax {
		out[i] = float32(q.NestedCode[c]*q.NestedAbsmax[i/q.NestedBlockSize]) + q.Offset // two roundings, as two torch ops
	}
	return out
}

// ScaleOf is block b's scale, rebuilt from the double quantisation as
// AbsmaxF32 does (two roundings, as two torch ops).
func (q *NF4) ScaleOf(b int) float32 {
	if !q.Double() {
		return q.Absmax[b]
	}
	return float32(q.NestedCode[q.QAbsmax[b]]*q.NestedAbsmax[b/q.NestedBlockSize]) + q.Offset
}

// Dequantize returns the weight as bitsandbytes' dequantize_4bit does:
// NF4[code]·absmax in fp32, rounded to the compute dtype (bf16 or f16; an
// fp32 compute dtype keeps the fp32 product), widened back to fp32.
func (q *NF4) Dequantize() []float32 {
	absmax := q.AbsmaxF32()
	n := q.Len()
	out := make([]float32, n)
	round := RoundBF16
	switch q.Compute {
	case F16:
		round = RoundF16
	case F32:
		round = func(f float32) float32 { return f }
	}
	for i := 0; i < n; i++ {
		code := q.Packed[i/2] >> 4
		if i%2 == 1 {
			code = q.Packed[i/2] & 0xf
		}
		out[i] = round(NF4Table[code] * absmax[i/q.BlockSize])
	}
	return out
}
