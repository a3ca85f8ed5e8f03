// quantize.cu: NF4 quantisation of 16-bit weights at load, bit-exact with
// bitsandbytes' quantize_4bit (blocksize 64) and with tensor.QuantizeNF4, the
// CPU reference it is tested against.
//
// nf4_quantize: one thread per output byte (two weights), one warp per
// 64-weight block: the block's absmax by a warp max of |w|, then each weight
// times fp32(1/absmax) coded by bitsandbytes' dQuantizeNF4 decision tree, the
// same fp32 comparisons as tensor's quantizeNF4 (a zero block gives 0·∞ =
// NaN, which compares false: code 0, as on the CPU). w is bf16 (the compute
// dtype: what bitsandbytes quantises). A non-finite weight cannot be
// quantised: the lowest such index goes to bad (set to n beforehand).
// Bytes: 2n read, n/2 + n/16 written.
#include "common.cuh"

// tensor's nf4Mid: the midpoints of neighbouring NF4 values, as fp32 bits.
__constant__ unsigned nf4_mid_bits[15] = {0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec,
                                          0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64863, 0x3e5067e0,
                                          0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9};

__device__ __forceinline__ unsigned nf4_code(float x) {
  const float* mid = reinterpret_cast<const float*>(nf4_mid_bits);
  unsigned c = 0;
  if (x > mid[7]) c = 8;
  if (x > mid[c + 3]) c += 4;
  if (x > mid[c + 1]) c += 2;
  if (x > mid[c]) c++;
  return c;
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_quantize(unsigned char* packed, float* absmax, unsigned long long* bad, const unsigned short* w, long long n) {
  pdl_trigger();
  pdl_wait();
  const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x; // output byte
  const long long i = 2 * pair;
  const bool in = i < n; // n is even
  unsigned v = 0;
  if (in) v = *reinterpret_cast<const unsigned*>(w + i);
  const float a = __uint_as_float(v << 16), b = __uint_as_float(v & 0xffff0000u);
  if (in && ((v & 0x7f80u) == 0x7f80u || (v & 0x7f800000u) == 0x7f800000u))
    atomicMin(bad, (unsigned long long)((v & 0x7f80u) == 0x7f80u ? i : i + 1));
  float m = fmaxf(fabsf(a), fabsf(b));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (!in) return;
  const float inv = __frcp_rn(m);
  packed[pair] = (unsigned char)(nf4_code(__fmul_rn(a, inv)) << 4 | nf4_code(__fmul_rn(b, inv)));
  if ((threadIdx.x & 31) == 0) absmax[i >> 6] = m;
}
