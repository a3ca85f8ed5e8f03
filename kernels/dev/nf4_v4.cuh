// nf4_v4.cuh: the batch-1 NF4 product of kernels/dev/nf4_gemv.cu v4 (the
// engine's nf4_lut) that more than one benchmark uses: the matrix, a step's
// raw loads and its 16 MMAs, the codes' layout, the host's random numbers.
#pragma once
#include "common.cuh"
#include <algorithm>
#include <vector>

struct Q {
  const uint8_t* codes;   // [N*K/2], layout per version
  const uint8_t* qabsmax; // [N*K/64]
  const float* nested;    // [N*K/64/256 + 1]
  const float* code;      // [256] dynamic map
  float offset;
  int N, K;
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ uint32_t word(const uint4& u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

struct Raw {
  uint4 a0, a1, b0, b1;
  uint32_t qa, qb; // absmax codes
  float na, nb;    // nested scales
};

__device__ __forceinline__ Raw load_raw(const Q& q, int ra, int rb, int s, int t, int nblk) {
  Raw st;
  const int blk = 4 * s + t;
  if (blk < nblk) {
    const int nb = min(4, nblk - 4 * s);
    const uint8_t* pa = q.codes + (size_t)ra * (q.K / 2) + 128 * s;
    const uint8_t* pb = q.codes + (size_t)rb * (q.K / 2) + 128 * s;
    st.a0 = __ldg((const uint4*)(pa + 16 * t));
    st.a1 = __ldg((const uint4*)(pa + 16 * nb + 16 * t));
    st.b0 = __ldg((const uint4*)(pb + 16 * t));
    st.b1 = __ldg((const uint4*)(pb + 16 * nb + 16 * t));
    const unsigned ba = (unsigned)ra * nblk + blk, bb = (unsigned)rb * nblk + blk;
    st.qa = __ldg(q.qabsmax + ba);
    st.qb = __ldg(q.qabsmax + bb);
    st.na = __ldg(q.nested + (ba >> 8));
    st.nb = __ldg(q.nested + (bb >> 8));
  } else {
    st.a0 = st.a1 = st.b0 = st.b1 = make_uint4(0, 0, 0, 0);
    st.qa = st.qb = 0;
    st.na = st.nb = 0.0f; // run_raw zeroes the scale of a block past the row
  }
  return st;
}

// run_codes does one step's 16 MMAs: rows ra's and rb's 64 codes (a0, a1;
// b0, b1) at scales sa and sb, x's parts for the step at xb (this lane's).
__device__ __forceinline__ void run_codes(uint4 a0_, uint4 a1_, uint4 b0_, uint4 b1_, float sa, float sb, const uint2* xb, float* tot) {
  const Lut la = make_lut(sa), lb = make_lut(sb);
  float c0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int w = 0; w < 8; w++) {
    const uint32_t wa = word(w < 4 ? a0_ : a1_, w & 3), wb = word(w < 4 ? b0_ : b1_, w & 3);
    const uint32_t sa7 = wa & 0x77777777u, ha = ((wa >> 1) & 0x44444444u) | 0x32103210u;
    const uint32_t sb7 = wb & 0x77777777u, hb = ((wb >> 1) & 0x44444444u) | 0x32103210u;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int j = 2 * w + h;
      uint32_t a0, a1, a2, a3;
      lookup4(la, sa7 >> (16 * h), ha >> (16 * h), a0, a2);
      lookup4(lb, sb7 >> (16 * h), hb >> (16 * h), a1, a3);
      const uint2 b = xb[j * 12];
      mma16816(h ? c1 : c0, a0, a1, a2, a3, b.x, b.y);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) tot[i] += c0[i] + c1[i];
}

// raw_scale rebuilds a block's scale as bitsandbytes does (two roundings);
// 0 past the row (live false).
__device__ __forceinline__ float raw_scale(const Q& q, const float* code, uint32_t qa, float na, bool live) {
  return live ? __fadd_rn(__fmul_rn(code[qa], na), q.offset) : 0.0f;
}

// run_raw is run_codes over a step's raw loads; x split in fragment order
// at xsm ([step][16][3][4] uint2s), step s of it.
__device__ __forceinline__ void run_raw(const Raw& st, bool live, const Q& q, const float* code, const uint2* xsm, int s, int g3, int t,
                                        float* tot) {
  run_codes(st.a0, st.a1, st.b0, st.b1, raw_scale(q, code, st.qa, st.na, live), raw_scale(q, code, st.qb, st.nb, live),
            xsm + (s * 16 * 3 + g3) * 4 + t, tot);
}

// mma_layout: within each (row, 256-column step) of nb 64-blocks, the first
// 16 bytes of block t go to 16t, the second 16 to 16nb + 16t.
static void mma_layout(const std::vector<uint8_t>& in, std::vector<uint8_t>& out, int N, int K) {
  out.resize(in.size());
  const int nblk = K / 64;
  for (int r = 0; r < N; r++)
    for (int s = 0; 4 * s < nblk; s++) {
      const int nb = std::min(4, nblk - 4 * s);
      const size_t base = (size_t)r * (K / 2) + 128 * s;
      for (int t = 0; t < nb; t++)
        for (int i = 0; i < 16; i++) {
          out[base + 16 * t + i] = in[base + 32 * t + i];
          out[base + 16 * nb + 16 * t + i] = in[base + 32 * t + 16 + i];
        }
    }
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd() {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}
static float urand() { return (rnd() & 0xffffff) / 16777216.0f; }
