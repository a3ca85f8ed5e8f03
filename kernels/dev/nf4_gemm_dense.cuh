// nf4_gemm_dense.cuh: nf4_gemm.cu's v3 — dequantise once into a bf16
// scratch, split x into two bf16 planes, then a dense multistage GEMM — and
// the cp.async helpers v4/v5 share. Included by nf4_gemm.cu after W4 and
// dequant32.
#pragma once

// ---------------------------------------------------------------------------
// v3: dequantise once, then a dense GEMM. The weights go to a bf16 scratch
// [N][K] (bitsandbytes' values bit for bit; 2 bytes a weight written, read
// back by the GEMM mostly once: blocks sharing a weight tile run together),
// x to two bf16 planes (hi, lo), and gemm_bf16 runs a plain bf16 GEMM with
// two B operands: block tile 128 weight rows × 128 x rows, K in steps of 32
// through a STAGES-deep cp.async ring (W, x hi and x lo tiles, rows padded
// to 40 bf16: conflict-free ldmatrix), 8 warps as 2 (64 weight rows) × 4 (32
// x rows), 32 MMAs per 12 ldmatrix a k16 step. No dequantisation in the GEMM's
// loop, so the tensor cores are the bound, not the table lookups.

// dequant_bf16: a thread per 32 weights (16 code bytes, half a 64-block).
__global__ void dequant_bf16(W4 w, uint16_t* __restrict__ out) {
  const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, e = 32 * i;
  if (e >= (size_t)w.N * w.K) return;
  const size_t b = e / 64;
  uint32_t o[16];
  dequant32(__ldg((const uint4*)(w.codes + e / 2)),
            __fadd_rn(__fmul_rn(__ldg(w.code + __ldg(w.qabsmax + b)), __ldg(w.nested + (b >> 8))), w.offset), o);
  uint4* d = (uint4*)(out + e);
#pragma unroll
  for (int j = 0; j < 4; j++) d[j] = make_uint4(o[4 * j], o[4 * j + 1], o[4 * j + 2], o[4 * j + 3]);
}

// split_x: x → hi and lo bf16 planes, a thread per 4 values.
__global__ void split_x(const float* __restrict__ x, uint16_t* __restrict__ hi, uint16_t* __restrict__ lo, size_t n4) {
  const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 v = __ldg((const float4*)x + i);
  uint32_t h01, l01, h23, l23;
  split2(v.x, v.y, h01, l01);
  split2(v.z, v.w, h23, l23);
  ((uint2*)hi)[i] = make_uint2(h01, h23);
  ((uint2*)lo)[i] = make_uint2(l01, l23);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

constexpr int G_BN = 128, G_BM = 128, G_BK = 32, G_LD = G_BK + 8; // tile; bf16 a shared row

template <int STAGES>
constexpr int gemm3_smem() { return STAGES * 3 * 128 * G_LD * 2; }

// gemm_bf16<STAGES>: grid (⌈M/128⌉, ⌈N/128⌉) — x tiles fastest, so the
// blocks resident together share weight tiles —, 256 threads.
template <int STAGES>
__global__ void __launch_bounds__(256, 2) gemm_bf16(const uint16_t* __restrict__ W, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                     float* __restrict__ c, int M, int N, int K) {
  extern __shared__ __align__(16) uint16_t sm[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int wn = warp & 1, wm = warp >> 1;
  const int m0 = blockIdx.x * G_BM, n0 = blockIdx.y * G_BN, nk = K / G_BK;
  auto stage = [&](int s) { return sm + s * 3 * 128 * G_LD; }; // W, then x hi, then x lo: [128][G_LD] each
  auto load = [&](int s, int kt) {
    uint16_t* base = stage(s);
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int ch = threadIdx.x + 256 * u, r = ch >> 2, col = 8 * (ch & 3), k = kt * G_BK + col;
      const int n = n0 + r, m = m0 + r;
      cp_async16(base + r * G_LD + col, W + (size_t)min(n, N - 1) * K + k, n < N);
      cp_async16(base + (128 + r) * G_LD + col, xh + (size_t)min(m, M - 1) * K + k, m < M);
      cp_async16(base + (256 + r) * G_LD + col, xl + (size_t)min(m, M - 1) * K + k, m < M);
    }
  };
  float acc[4][4][4] = {};
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < nk) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads(); // stage kt is in; every warp is done with stage kt − 1, which the next load overwrites
    if (kt + STAGES - 1 < nk) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();
    const uint16_t* ws = stage(kt % STAGES);
    const uint16_t* hs = ws + 128 * G_LD;
    const uint16_t* ls = ws + 256 * G_LD;
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
      uint32_t a[4][4], bh[4][2], bl[4][2];
#pragma unroll
      for (int at = 0; at < 4; at++)
        ldmatrix_x4(a[at], (const uint32_t*)(ws + (64 * wn + 16 * at + (lane & 15)) * G_LD + 16 * ks + 8 * (lane >> 4)));
#pragma unroll
      for (int p = 0; p < 2; p++) { // n-tiles 2p, 2p + 1: lanes 0–15 the first, 16–31 the second
        const int off = (32 * wm + 8 * (2 * p + (lane >> 4)) + (lane & 7)) * G_LD + 16 * ks + 8 * ((lane >> 3) & 1);
        uint32_t r[4];
        ldmatrix_x4(r, (const uint32_t*)(hs + off));
        bh[2 * p][0] = r[0], bh[2 * p][1] = r[1], bh[2 * p + 1][0] = r[2], bh[2 * p + 1][1] = r[3];
        ldmatrix_x4(r, (const uint32_t*)(ls + off));
        bl[2 * p][0] = r[0], bl[2 * p][1] = r[1], bl[2 * p + 1][0] = r[2], bl[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int at = 0; at < 4; at++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], bh[nt][0], bh[nt][1]);
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], bl[nt][0], bl[nt][1]);
        }
    }
  }
  // acc[at][nt][j]: weight row n0 + 64wn + 16at + g (+ 8 for j ≥ 2), x row m0 + 32wm + 8nt + 2t + j % 2.
#pragma unroll
  for (int at = 0; at < 4; at++)
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int m = m0 + 32 * wm + 8 * nt + 2 * t + (j & 1), n = n0 + 64 * wn + 16 * at + g + 8 * (j >> 1);
        if (m < M && n < N) c[(size_t)m * N + n] = acc[at][nt][j];
      }
}

