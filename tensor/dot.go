package tensor

import "encoding/binary"

// The dot products of the CPU path: fp32, bf16 weights widened exactly, and
// packed NF4 codes through a block's 16-value table. Each runs its leading
// part on the vector unit where there is one (dot_amd64.s: AVX2 + FMA;
// QBENCH_NO_SIMD=1 keeps them scalar) and the rest in the scalar loops below.

// Dot is Σ a[i]·b[i] in fp32: the leading multiple of 32 elements on the
// vector unit where there is one (dotVec: 32 partial sums, fused
// multiply-adds), the rest with four partial sums to shorten the dependency
// chain.
func Dot(a, b []float32) float32 {
	b = b[:len(a)]
	v, i := dotVec(a, b)
	var s0, s1, s2, s3 float32
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return v + ((s0 + s1) + (s2 + s3))
}

// DotBF16 is Σ a[i]·b[i] over bf16 weights widened exactly, summed in dot's
// order (so the same sums as dot over the fp32 copy).
func DotBF16(a []uint16, b []float32) float32 {
	b = b[:len(a)]
	v, i := dotVecBF16(a, b)
	var s0, s1, s2, s3 float32
	for ; i+4 <= len(a); i += 4 {
		s0 += BF16ToF32(a[i]) * b[i]
		s1 += BF16ToF32(a[i+1]) * b[i+1]
		s2 += BF16ToF32(a[i+2]) * b[i+2]
		s3 += BF16ToF32(a[i+3]) * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += BF16ToF32(a[i]) * b[i]
	}
	return v + ((s0 + s1) + (s2 + s3))
}

// DotNF4 is Σ t[code_i]·x[i] over 16·m codes packed two a byte (element 2i
// in the high nibble), eight bytes a step, four partial sums; on the vector
// unit where there is one (dotVecNF4).
func DotNF4(t *[16]float32, p []byte, x []float32) float32 {
	if v, ok := dotVecNF4(t, p, x); ok {
		return v
	}
	var s0, s1, s2, s3 float32
	for i := 0; i+8 <= len(p); i += 8 {
		u := binary.LittleEndian.Uint64(p[i:])
		xx := x[2*i : 2*i+16]
		s0 += t[u>>4&15]*xx[0] + t[u&15]*xx[1] + t[u>>36&15]*xx[8] + t[u>>32&15]*xx[9]
		s1 += t[u>>12&15]*xx[2] + t[u>>8&15]*xx[3] + t[u>>44&15]*xx[10] + t[u>>40&15]*xx[11]
		s2 += t[u>>20&15]*xx[4] + t[u>>16&15]*xx[5] + t[u>>52&15]*xx[12] + t[u>>48&15]*xx[13]
		s3 += t[u>>28&15]*xx[6] + t[u>>24&15]*xx[7] + t[u>>60&15]*xx[14] + t[u>>56&15]*xx[15]
	}
	return (s0 + s1) + (s2 + s3)
}
