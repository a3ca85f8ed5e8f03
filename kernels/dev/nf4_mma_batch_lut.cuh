// nf4_mma_batch_lut.cuh: versions v7 and v8 of the nf4_mma_batch benchmark,
// dequantising by nf4_lut's per-block table (nf4_mma_batch.cuh has v0–v6 and
// what each measured, nf4_mma_batch.cu the harness).
#pragma once
#include "nf4_mma_batch.cuh"

// ---------------------------------------------------------------------------
// v7: nf4_lut's per-block table in v5's frame (see the top).


// stage_lut writes x[:, kbeg, kbeg + 256·steps) as two bf16 parts in the
// permuted order: sx[(s·16 + j)·JW + ((2p + o/2)·MP + m)·4 + t] = part p of
// x[m][kbeg + 256s + 64t + 4j + o … + 1] (rows past M as zeros). JW = 16·MP
// + 4 words a (s, j): the 4 words of padding put a warp's 16 j of one row in
// different banks (without them its stores conflicted 16-way).
template <int MP>
__host__ __device__ constexpr int lut_jw() { return 16 * MP + 4; }
template <int T, int MP>
__device__ __forceinline__ void stage_lut(uint32_t* sx, const float* __restrict__ x, int M, int K, int kbeg, int steps) {
  const int per = 64 * steps; // float4s of a row in the chunk
  for (int i = threadIdx.x; i < MP * per; i += T) {
    const int m = i / per, c4 = i % per, s = c4 / 64, t = (c4 / 16) & 3, j = c4 & 15;
    float4 v = make_float4(0, 0, 0, 0);
    if (m < M) v = __ldg((const float4*)(x + (size_t)m * K + kbeg + 4 * c4));
    uint32_t h01, l01, h23, l23;
    split2(v.x, v.y, h01, l01);
    split2(v.z, v.w, h23, l23);
    uint32_t* o = sx + (s * 16 + j) * lut_jw<MP>() + m * 4 + t;
    o[0 * MP * 4] = h01;
    o[1 * MP * 4] = h23;
    o[2 * MP * 4] = l01;
    o[3 * MP * 4] = l23;
  }
}

// lut_step runs one 256-column step of a tile (v7, v8): rows ra's and rb's
// 64 codes (a0 a1, b0 b1: the first and second 16 bytes of the thread's
// block) looked up in their blocks' tables, 32·NT MMAs against the staged x
// at xl (this lane's ldmatrix row of the step at j = 0, n-tile 0).
template <int NT, int JW>
__device__ __forceinline__ void lut_step(float (&acc)[NT][4], uint4 a0, uint4 a1, uint4 b0, uint4 b1, const Lut& la, const Lut& lb,
                                         const uint32_t* xl) {
#pragma unroll
  for (int w = 0; w < 8; w++) { // a 32-bit word of each row: the codes of MMAs j = 2w, 2w + 1
    const uint32_t wa = word_of(w < 4 ? a0 : a1, w & 3), wb = word_of(w < 4 ? b0 : b1, w & 3);
    const uint32_t sa = wa & 0x77777777u, ha = ((wa >> 1) & 0x44444444u) | 0x32103210u;
    const uint32_t sb = wb & 0x77777777u, hb = ((wb >> 1) & 0x44444444u) | 0x32103210u;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      uint32_t f0, f1, f2, f3;
      lookup4(la, sa >> (16 * h), ha >> (16 * h), f0, f2);
      lookup4(lb, sb >> (16 * h), hb >> (16 * h), f1, f3);
      const int j = 2 * w + h;
      uint32_t bm[NT][4];
#pragma unroll
      for (int n = 0; n < NT; n++) ldmatrix_x4(bm[n], xl + j * JW + 32 * n);
#pragma unroll
      for (int n = 0; n < NT; n++) mma16816(acc[n], f0, f1, f2, f3, bm[n][0], bm[n][1]); // hi
#pragma unroll
      for (int n = 0; n < NT; n++) mma16816(acc[n], f0, f1, f2, f3, bm[n][2], bm[n][3]); // lo
    }
  }
}

// v7_part<NT, WARPS, KC, MINB>: grid (groups, K/KC), K % 256 == 0; shared
// memory KC/16 · lut_jw<NT·8>() words. MINB 3 and 4 (fifth session, not yet
// run) cap the registers at 80 and 64 (ptxas sm_80: 84 and 184 bytes of
// spills) for 6 and 8 warps a scheduler: Nsight Compute on v7 saw 4 warps a
// scheduler, 0.84 eligible, issue 33 % busy — latency, not instruction count.
template <int NT, int WARPS, int KC, int MINB = 1>
__global__ void __launch_bounds__(WARPS * 32, MINB) v7_part(Q q, const float* __restrict__ x, float* __restrict__ part, int M) {
  constexpr int T = WARPS * 32, MP = NT * 8, S = KC / 256;
  extern __shared__ uint32_t sx[];
  __shared__ float code[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, mi = lane >> 3;
  const int K = q.K, nblk = K / 64, kbeg = blockIdx.y * KC, steps = min(S, (K - kbeg) / 256);
  const int tiles = q.N / 16, stride = gridDim.x * WARPS;
  uint4 ca0[S], ca1[S], cb0[S], cb1[S];
  uint32_t qa[S], qb[S];
  float na[S], nb[S];
  auto fetch = [&](int tl, int s) {
    ca0[s] = ca1[s] = cb0[s] = cb1[s] = make_uint4(0, 0, 0, 0);
    qa[s] = qb[s] = 0;
    na[s] = nb[s] = 0.0f;
    if (tl < tiles && s < steps) {
      const int ra = tl * 16 + g, rb = ra + 8, blk = kbeg / 64 + 4 * s + t;
      const uint8_t* pa = q.lut + (size_t)ra * (K / 2) + kbeg / 2 + 128 * s + 16 * t;
      const uint8_t* pb = pa + (size_t)8 * (K / 2);
      ca0[s] = __ldg((const uint4*)pa);
      ca1[s] = __ldg((const uint4*)(pa + 64));
      cb0[s] = __ldg((const uint4*)pb);
      cb1[s] = __ldg((const uint4*)(pb + 64));
      qa[s] = __ldg(q.qabsmax + (size_t)ra * nblk + blk);
      qb[s] = __ldg(q.qabsmax + (size_t)rb * nblk + blk);
      na[s] = __ldg(q.nested + (((unsigned)ra * nblk + blk) >> 8));
      nb[s] = __ldg(q.nested + (((unsigned)rb * nblk + blk) >> 8));
    }
  };
  int tile = blockIdx.x * WARPS + warp;
#pragma unroll
  for (int s = 0; s < S; s++) fetch(tile, s);
  for (int i = threadIdx.x; i < 256; i += T) code[i] = q.code[i];
  stage_lut<T, MP>(sx, x, M, K, kbeg, steps);
  __syncthreads();
  float* out = part + (size_t)blockIdx.y * M * q.N;
  const uint32_t* bl = sx + (mi * MP + (lane & 7)) * 4; // this lane's ldmatrix row, before (s, j, n-tile) offsets
  for (; tile < tiles; tile += stride) {
    const int ra = tile * 16 + g, rb = ra + 8;
    float acc[NT][4] = {};
#pragma unroll
    for (int s = 0; s < S; s++) {
      if (s >= steps) break;
      const uint4 a0 = ca0[s], a1 = ca1[s], b0 = cb0[s], b1 = cb1[s];
      const uint32_t qas = qa[s], qbs = qb[s];
      const float nas = na[s], nbs = nb[s];
      fetch(tile + stride, s); // the next tile's step s, in flight during this one
      const Lut la = make_lut(__fadd_rn(__fmul_rn(code[qas], nas), q.offset));
      const Lut lb = make_lut(__fadd_rn(__fmul_rn(code[qbs], nbs), q.offset));
      lut_step<NT, lut_jw<MP>()>(acc, a0, a1, b0, b1, la, lb, bl + s * 16 * lut_jw<MP>());
    }
    store_part(out, acc, M, q.N, ra, rb, t);
  }
}

// ---------------------------------------------------------------------------
// v8: v7 (KC = 256) with the codes through a per-warp cp.async ring.

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool live) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  // src-size 0 fills the 16 bytes with zeros: a tile past the end, or a block past K.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(live ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// v8_part<NT, WARPS, STAGES, MINB>: grid (groups, K/256); shared memory: x as
// v7 (16·lut_jw<NT·8>() words), then WARPS·STAGES·2 KB of codes. MINB = 3 asks
// for ≤ 85 registers: 24 warps an SM.
template <int NT, int WARPS, int STAGES, int MINB = 1>
__global__ void __launch_bounds__(WARPS * 32, MINB) v8_part(Q q, const float* __restrict__ x, float* __restrict__ part, int M) {
  constexpr int T = WARPS * 32, MP = NT * 8, JW = lut_jw<MP>();
  extern __shared__ uint32_t sx[];
  uint4* ring = (uint4*)(sx + 16 * JW) + (threadIdx.x >> 5) * STAGES * 128; // [STAGES][32 lanes][4 uint4]
  __shared__ float code[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, mi = lane >> 3;
  const int K = q.K, nblk = K / 64, kbeg = blockIdx.y * 256;
  const int tiles = q.N / 16, stride = gridDim.x * WARPS;
  // fill: this thread's 64 code bytes of tile tl into slot sl (zeros past the end).
  auto fill = [&](int tl, int sl) {
    const bool live = tl < tiles;
    const int ra = live ? tl * 16 + g : 0;
    const uint8_t* pa = q.lut + (size_t)ra * (K / 2) + kbeg / 2 + 16 * t;
    const uint8_t* pb = pa + (size_t)8 * (K / 2);
    uint4* r = ring + (sl * 32 + lane) * 4;
    cp_async16(r + 0, pa, live);
    cp_async16(r + 1, pa + 64, live);
    cp_async16(r + 2, pb, live);
    cp_async16(r + 3, pb + 64, live);
    cp_async_commit();
  };
  uint32_t qa = 0, qb = 0;
  float na = 0.0f, nb = 0.0f;
  auto scales = [&](int tl) { // one tile ahead, in registers
    qa = qb = 0;
    na = nb = 0.0f;
    if (tl < tiles) {
      const unsigned ba = (unsigned)(tl * 16 + g) * nblk + kbeg / 64 + t, bb = ba + 8u * nblk;
      qa = __ldg(q.qabsmax + ba);
      qb = __ldg(q.qabsmax + bb);
      na = __ldg(q.nested + (ba >> 8));
      nb = __ldg(q.nested + (bb >> 8));
    }
  };
  int tile = blockIdx.x * WARPS + warp;
#pragma unroll
  for (int i = 0; i < STAGES - 1; i++) fill(tile + i * stride, i);
  scales(tile);
  for (int i = threadIdx.x; i < 256; i += T) code[i] = q.code[i];
  stage_lut<T, MP>(sx, x, M, K, kbeg, 1);
  __syncthreads();
  float* out = part + (size_t)blockIdx.y * M * q.N;
  const uint32_t* bl = sx + (mi * MP + (lane & 7)) * 4;
  for (int it = 0; tile < tiles; tile += stride, it++) {
    const int ra = tile * 16 + g, rb = ra + 8;
    fill(tile + (STAGES - 1) * stride, (it + STAGES - 1) % STAGES);
    cp_async_wait<STAGES - 1>(); // this tile's group has landed (each thread reads only what it copied)
    const uint4* r = ring + ((it % STAGES) * 32 + lane) * 4;
    const uint4 a0 = r[0], a1 = r[1], b0 = r[2], b1 = r[3];
    const uint32_t qas = qa, qbs = qb;
    const float nas = na, nbs = nb;
    scales(tile + stride);
    const Lut la = make_lut(__fadd_rn(__fmul_rn(code[qas], nas), q.offset));
    const Lut lb = make_lut(__fadd_rn(__fmul_rn(code[qbs], nbs), q.offset));
    float acc[NT][4] = {};
    lut_step<NT, JW>(acc, a0, a1, b0, b1, la, lb, bl);
    store_part(out, acc, M, q.N, ra, rb, t);
  }
  cp_async_wait<0>();
}
