// nf4_gemm.cu — standalone development benchmark of the prefill matrix
// product (issue 12: prefill ≥ 20,000 tok/s; llm.c dev/cuda style): C[M, N] =
// X[M, K]·W[N, K]ᵀ for many rows (M = 512 … 2,048 tokens), W bitsandbytes NF4
// with double quantisation, dequantised exactly as bitsandbytes (bf16(NF4[c]·s),
// s = fp32(fp32(code[q]·nested) + offset)), X fp32 entering the MMAs as two
// bf16 parts (hi + lo, as the engine's batch kernels: qwen's
// TestActivationSplit bounds what that moves). Checked against a float64 CPU
// reference on sampled outputs (every output checked for being written, the
// output poisoned first), timed with events over rotating weight copies ≥ 4×
// the L2. Build and run on the GPU machine:
//
//   BENCHES=nf4_gemm kernels/dev/run.sh
//
// Why: the engine's batch kernels (mmas_nf4) take 64 rows a launch, so a
// prefill of 1,280 tokens reads and dequantises every weight 20 times and runs
// at the decode rate of batch 64 (~8,000 tok/s at the 3B shape, H200). A tiled
// GEMM dequantises each weight once per BM rows into shared memory, and the
// tensor cores reuse it BM/8 times.
//
// Versions:
//   v1  block tile BM x-rows × 128 weight rows, K in steps of 64 (one NF4
//       block a weight row): each step the block dequantises its 128 × 64
//       weights into shared memory as bf16 (a thread a half-block: the
//       per-block table, 8 prmt for 4 weights) and splits x's BM × 64 into
//       hi and lo bf16 planes; 8 warps as 2 (x rows) × 4 (32 weight rows
//       each), A and B fragments by ldmatrix, two MMAs (hi, lo) a fragment.
//   v2  v1 with the next step's codes, scales and x loaded into registers
//       while this step's MMAs run (one barrier pair a step, latency hidden).
//       H200, fifth session: gate+up M 1,280 829 µs (278 TFLOP/s counting both
//       parts), down 529, q+k+v 129, o 104 (BM 128 slower everywhere).
//   v3  dequantise once into a bf16 scratch, x split into two bf16 planes,
//       then a dense multistage GEMM (below): the table lookups out of the
//       GEMM's loop.
//   v4  wgmma (sm_90a; `run.sh` builds for it): x split once into two bf16
//       planes (split_x), then a block of two warpgroups takes 128 weight
//       rows × 128 x rows; each 64-column step its 256 threads dequantise the
//       weights into shared memory in wgmma's 128-byte-swizzled K-major layout
//       and cp.async x's planes beside them, and each warpgroup issues 8
//       asynchronous m64n128k16 MMAs (4 k16 × hi, lo) over its 64 weight rows
//       that run on the tensor cores while the threads dequantise the next
//       step into the other buffer. Prediction: the tensor cores become the
//       bound (the dequantisation, ~160 instructions a thread a step, hides
//       under ~1,000 cycles of MMAs a step a block): gate+up M 1,280 ≥ 2×
//       v2 (~400 µs). Written in the sixth session without a GPU left to run
//       it (nvcc 11.8 here has no sm_90a): not yet compiled by ptxas nor run.
//
//   v5  v4 for decode batches: an x tile of 24, 32 or 64 rows (the wgmma's n)
//       and K split across blocks, partial sums added by a second launch in
//       split order. Prediction: gate+up at M 20 ≥ 3× the batch kernel
//       mmas_nf4 (37.7 µs). Written with v4, not yet run either.
//
// QUICK=1 runs gate+up alone, at M 20 and 64 (decode batches: v5, and v4's
// 128-row x tile mostly zeros) and 1,280.
#include "common.cuh"
#include <math.h>
#include <time.h>
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

struct W4 {
  const uint8_t* codes;   // [N·K/2], bitsandbytes order (row-major, high nibble first)
  const uint8_t* qabsmax; // [N·K/64]
  const float* nested;    // [N·K/64/256 + 1]
  const float* code;      // [256] dynamic map
  float offset;
  int N, K;
};

constexpr int BN = 128, LDW = 64 + 8, LDX = 64 + 8; // weight rows a block; bf16 a shared row (+8: conflict-free ldmatrix)

template <int BM>
constexpr int gemm_smem() { return (BN * LDW + 2 * BM * LDX) * 2; }

// Raw is one thread's global loads for one step: 16 code bytes (32 weights
// of its weight row), the scale's sources, and its share of x (BM/16 float4).
template <int BM>
struct Raw {
  uint4 cw;
  uint32_t q;
  float n;
  float4 xv[BM / 16];
};

// dequant32 turns 16 code bytes (32 weights, bitsandbytes order) of a block
// with scale sc into 16 bf16x2 words, bitsandbytes' values bit for bit (the
// per-block table: 8 prmt for 4 weights).
__device__ __forceinline__ void dequant32(const uint4& cw, float sc, uint32_t (&o)[16]) {
  const Lut L = make_lut(sc);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t wd = word_of(cw, i), sel = wd & 0x77777777u, hsel = ((wd >> 1) & 0x44444444u) | 0x32103210u;
    lookup4(L, sel, hsel, o[4 * i], o[4 * i + 1]);
    lookup4(L, sel >> 16, hsel >> 16, o[4 * i + 2], o[4 * i + 3]);
  }
}

template <int BM>
__device__ __forceinline__ void load_step(Raw<BM>& r, const W4& w, const float* __restrict__ x, int M, int n0, int m0, int kb) {
  const int K = w.K, nblk = K / 64;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1, n = n0 + row;
  r.cw = make_uint4(0, 0, 0, 0);
  r.q = 0;
  r.n = 0.0f;
  if (n < w.N) {
    const unsigned b = (unsigned)n * nblk + kb;
    r.cw = __ldg((const uint4*)(w.codes + (size_t)n * (K / 2) + 32 * kb + 16 * h));
    r.q = __ldg(w.qabsmax + b);
    r.n = __ldg(w.nested + (b >> 8));
  }
#pragma unroll
  for (int u = 0; u < BM / 16; u++) {
    const int i = threadIdx.x + 256 * u, m = m0 + i / 16, q = i % 16;
    r.xv[u] = m < M ? __ldg((const float4*)(x + (size_t)m * K + 64 * kb + 4 * q)) : make_float4(0, 0, 0, 0);
  }
}

// store_step dequantises the codes into ws [BN][LDW] and splits x into xs
// [2][BM][LDX] (hi, lo).
template <int BM>
__device__ __forceinline__ void store_step(const Raw<BM>& r, const W4& w, const float* code, uint16_t* ws, uint16_t* xs) {
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1;
  uint32_t o[16];
  dequant32(r.cw, __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset), o); // rows past N: garbage never stored
  uint4* d = (uint4*)(ws + row * LDW + 32 * h);
#pragma unroll
  for (int i = 0; i < 4; i++) d[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
#pragma unroll
  for (int u = 0; u < BM / 16; u++) {
    const int i = threadIdx.x + 256 * u, m = i / 16, q = i % 16;
    uint32_t h01, l01, h23, l23;
    split2(r.xv[u].x, r.xv[u].y, h01, l01);
    split2(r.xv[u].z, r.xv[u].w, h23, l23);
    *(uint2*)(xs + m * LDX + 4 * q) = make_uint2(h01, h23);
    *(uint2*)(xs + (BM + m) * LDX + 4 * q) = make_uint2(l01, l23);
  }
}

// gemm<BM, PIPE>: grid (⌈N/128⌉, ⌈M/BM⌉), 256 threads, gemm_smem<BM>() bytes
// of dynamic shared memory. PIPE (v2): the next step's loads in flight during
// this step's MMAs.
template <int BM, bool PIPE>
__global__ void __launch_bounds__(256) gemm(W4 w, const float* __restrict__ x, float* __restrict__ c, int M) {
  constexpr int WM = BM / 2, NT = WM / 8; // x rows a warp; its n-tiles of 8
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t* ws = sm;             // [BN][LDW] dequantised weights
  uint16_t* xs = sm + BN * LDW;  // [2][BM][LDX] x's hi and lo
  __shared__ float code[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int wm = warp / 4, wn = warp % 4;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM, nblk = w.K / 64;
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  float acc[2][NT][4] = {};
  Raw<BM> r;
  load_step<BM>(r, w, x, M, n0, m0, 0);
  // ldmatrix rows: A (weights) lane L → row L % 16, columns 8·(L / 16); B (x)
  // lane L → part L / 16, row L % 8, columns 8·((L / 8) % 2).
  const uint16_t* wa = ws + (wn * 32 + (lane & 15)) * LDW + 8 * (lane >> 4);
  const uint16_t* xb = xs + ((lane >> 4) * BM + wm * WM + (lane & 7)) * LDX + 8 * ((lane >> 3) & 1);
  for (int kb = 0; kb < nblk; kb++) {
    __syncthreads(); // the previous step's fragments are read (and code[] is written)
    store_step<BM>(r, w, code, ws, xs);
    __syncthreads();
    if (PIPE && kb + 1 < nblk) load_step<BM>(r, w, x, M, n0, m0, kb + 1);
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      uint32_t a[2][4];
#pragma unroll
      for (int at = 0; at < 2; at++) ldmatrix_x4(a[at], (const uint32_t*)(wa + at * 16 * LDW + 16 * ks));
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        uint32_t b[4]; // (hi, k 0-7), (hi, k 8-15), (lo, k 0-7), (lo, k 8-15)
        ldmatrix_x4(b, (const uint32_t*)(xb + nt * 8 * LDX + 16 * ks));
#pragma unroll
        for (int at = 0; at < 2; at++) {
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[0], b[1]);
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[2], b[3]);
        }
      }
    }
    if (!PIPE && kb + 1 < nblk) load_step<BM>(r, w, x, M, n0, m0, kb + 1);
  }
  // acc[at][nt][j]: weight row n0 + 32wn + 16at + g (j < 2; + 8 for j ≥ 2), x row m0 + wm·WM + 8nt + 2t + j % 2.
#pragma unroll
  for (int at = 0; at < 2; at++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int m = m0 + wm * WM + 8 * nt + 2 * t + (j & 1), n = n0 + wn * 32 + 16 * at + g + 8 * (j >> 1);
        if (m < M && n < w.N) c[(size_t)m * w.N + n] = acc[at][nt][j];
      }
}

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

// ---------------------------------------------------------------------------
// v4: wgmma. Shared memory per stage: the weights [128][64] bf16, then x hi
// and x lo [128][64] bf16, each K-major with the 128-byte swizzle (a row of
// 64 bf16 is 128 bytes; its 16-byte chunk c sits at c ^ (row % 8); 8 rows
// make a 1,024-byte atom), tiles 1,024-byte aligned.

constexpr int V4_TILE = 128 * 64 * 2, V4_STAGE = 3 * V4_TILE; // bytes
constexpr int v4_smem() { return 2 * V4_STAGE + 1024; }       // two stages, and room to align them

// sw128 is the byte offset of 16-byte chunk c of row r in a swizzled tile.
__device__ __forceinline__ uint32_t sw128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// desc128 is wgmma's shared-memory matrix descriptor of a K-major swizzled
// tile at shared address a: start address >> 4 (bits 0–13), leading byte
// offset 16 >> 4 (16–29; unused with this swizzle), stride byte offset
// 1,024 >> 4 between 8-row atoms (32–45), swizzle mode 1 = 128 bytes (62–63).
// Moving 16 columns along K is a = tile + 32 bytes.
__device__ __forceinline__ uint64_t desc128(uint32_t a) {
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define V4_BUILT 1
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// wgmma_128: d[64 weight rows × 128 x rows] += A·B, A (weights) and B (x)
// K-major from shared memory by descriptor. Thread (warp w, lane l) of the
// warpgroup holds d[4i + j]: weight row 16w + l/4 + 8·(j/2), x row
// 8i + 2·(l%4) + j%2.
__device__ __forceinline__ void wgmma_128(float (&d)[64], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1)); // scale-d 1: d += A·B (d starts at zero)
}
#else
#define V4_BUILT 0
#endif

// V4Raw is one thread's code loads for a step: half a block (32 weights) of
// weight row threadIdx.x / 2 and its scale's sources.
struct V4Raw {
  uint4 cw;
  uint32_t q;
  float n;
};

// gemm_wgmma: grid (⌈N/128⌉, ⌈M/128⌉), 256 threads (two warpgroups),
// v4_smem() bytes of dynamic shared memory; xh, xl: x's bf16 planes [M][K].
__global__ void __launch_bounds__(256, 2) gemm_wgmma(W4 w, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                     float* __restrict__ c, int M) {
#if V4_BUILT
  extern __shared__ __align__(16) uint8_t smraw[];
  __shared__ float code[256];
  const uint32_t sbase = ((uint32_t)__cvta_generic_to_shared(smraw) + 1023) & ~1023u; // 1,024-byte aligned stages
  uint8_t* sgen = smraw + (sbase - (uint32_t)__cvta_generic_to_shared(smraw));
  const int K = w.K, N = w.N, nblk = K / 64, n0 = blockIdx.x * 128, m0 = blockIdx.y * 128;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1; // this thread's weight row and half block
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  auto load_raw = [&](V4Raw& r, int kb) {
    const int n = n0 + row;
    r.cw = make_uint4(0, 0, 0, 0);
    r.q = 0;
    r.n = 0.0f;
    if (n < N) {
      const unsigned b = (unsigned)n * nblk + kb;
      r.cw = __ldg((const uint4*)(w.codes + (size_t)n * (K / 2) + 32 * kb + 16 * h));
      r.q = __ldg(w.qabsmax + b);
      r.n = __ldg(w.nested + (b >> 8));
    }
  };
  auto load_x = [&](int s, int kb) { // x's two [128][64] tiles of step kb into stage s, by cp.async
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int ch = threadIdx.x + 256 * u, r = ch >> 3, cc = ch & 7, m = m0 + r;
      const size_t src = (size_t)min(m, M - 1) * K + 64 * kb + 8 * cc;
      cp_async16(sgen + s * V4_STAGE + V4_TILE + sw128(r, cc), xh + src, m < M);
      cp_async16(sgen + s * V4_STAGE + 2 * V4_TILE + sw128(r, cc), xl + src, m < M);
    }
    cp_async_commit();
  };
  auto store_w = [&](int s, const V4Raw& r) { // the thread's 32 weights, dequantised, into stage s
    uint32_t o[16];
    dequant32(r.cw, __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset), o); // rows past N: zero codes, stored harmlessly
#pragma unroll
    for (int i = 0; i < 4; i++) *(uint4*)(sgen + s * V4_STAGE + sw128(row, 4 * h + i)) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
  };
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) acc[i] = 0.0f;
  V4Raw r;
  load_raw(r, 0);
  load_x(0, 0);
  __syncthreads(); // code[] is written
  store_w(0, r);
  if (nblk > 1) load_raw(r, 1);
  cp_async_wait<0>();
  fence_proxy_async(); // this thread's shared-memory writes are visible to the tensor cores' reads
  __syncthreads();
  for (int kb = 0; kb < nblk; kb++) {
    const int s = kb & 1;
    const uint32_t wa = sbase + s * V4_STAGE + wg * 64 * 128, xa = sbase + s * V4_STAGE + V4_TILE;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      wgmma_128(acc, desc128(wa + 32 * ks), desc128(xa + 32 * ks));
      wgmma_128(acc, desc128(wa + 32 * ks), desc128(xa + V4_TILE + 32 * ks));
    }
    wgmma_commit();
    if (kb + 1 < nblk) { // the next step into the other stage while the MMAs run
      load_x(s ^ 1, kb + 1);
      store_w(s ^ 1, r);
      if (kb + 2 < nblk) load_raw(r, kb + 2);
    }
    wgmma_wait0();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads(); // stage s is free, stage s ^ 1 is in
  }
#pragma unroll
  for (int i = 0; i < 16; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = m0 + 8 * i + 2 * (lane & 3) + (j & 1), n = n0 + 64 * wg + 16 * warp + (lane >> 2) + 8 * (j >> 1);
      if (m < M && n < N) c[(size_t)m * N + n] = acc[4 * i + j];
    }
#endif
}

// ---------------------------------------------------------------------------
// v5: v4 as a decode-batch kernel: M ≤ NX x rows (NX = 24, 32 or 64: the
// wgmma's n, so a batch of 20 runs 24 columns, not v4's 128), one x tile, and
// K split across blocks instead (grid (⌈N/128⌉, splits): the short matrices
// need it to fill the card); each block's sums go to ws[split][M][N] and
// reduce_splits adds them in split order. Prediction: at batch 20 the
// dequantisation (~5 instructions a weight, once per block) is the bound and
// the MMAs nearly free: gate+up ≥ 3× mmas_nf4 (v5 of nf4_mma_batch.cu: 37.7
// µs at M 20).

template <int NX>
__device__ __forceinline__ void wgmma_n(float (&d)[NX / 2], uint64_t a, uint64_t b);
#if V4_BUILT
template <>
__device__ __forceinline__ void wgmma_n<24>(float (&d)[12], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %14, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n24k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11}, "
      "%12, %13, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_n<32>(float (&d)[16], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
      "%16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_n<64>(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}
#endif

template <int NX>
constexpr int v5_smem() { return 2 * (V4_TILE + 2 * NX * 128) + 1024; }

template <int NX>
__global__ void __launch_bounds__(256, 2) gemm_wgmma_dec(W4 w, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                         float* __restrict__ ws, int M, int splits) {
#if V4_BUILT
  constexpr int XT = NX * 128, STAGE = V4_TILE + 2 * XT; // bytes: an x plane's tile, a stage (all multiples of 1,024)
  extern __shared__ __align__(16) uint8_t smraw[];
  __shared__ float code[256];
  const uint32_t sbase = ((uint32_t)__cvta_generic_to_shared(smraw) + 1023) & ~1023u;
  uint8_t* sgen = smraw + (sbase - (uint32_t)__cvta_generic_to_shared(smraw));
  const int K = w.K, N = w.N, nblk = K / 64, n0 = blockIdx.x * 128, sp = blockIdx.y;
  const int kb0 = sp * nblk / splits, kb1 = (sp + 1) * nblk / splits; // this block's steps (splits ≤ nblk: never empty)
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1;
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  auto load_raw = [&](V4Raw& r, int kb) {
    const int n = n0 + row;
    r.cw = make_uint4(0, 0, 0, 0);
    r.q = 0;
    r.n = 0.0f;
    if (n < N) {
      const unsigned b = (unsigned)n * nblk + kb;
      r.cw = __ldg((const uint4*)(w.codes + (size_t)n * (K / 2) + 32 * kb + 16 * h));
      r.q = __ldg(w.qabsmax + b);
      r.n = __ldg(w.nested + (b >> 8));
    }
  };
  auto load_x = [&](int s, int kb) {
    for (int ch = threadIdx.x; ch < NX * 8; ch += 256) {
      const int r = ch >> 3, cc = ch & 7;
      const size_t src = (size_t)min(r, M - 1) * K + 64 * kb + 8 * cc;
      cp_async16(sgen + s * STAGE + V4_TILE + sw128(r, cc), xh + src, r < M);
      cp_async16(sgen + s * STAGE + V4_TILE + XT + sw128(r, cc), xl + src, r < M);
    }
    cp_async_commit();
  };
  auto store_w = [&](int s, const V4Raw& r) {
    uint32_t o[16];
    dequant32(r.cw, __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset), o);
#pragma unroll
    for (int i = 0; i < 4; i++) *(uint4*)(sgen + s * STAGE + sw128(row, 4 * h + i)) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
  };
  float acc[NX / 2];
#pragma unroll
  for (int i = 0; i < NX / 2; i++) acc[i] = 0.0f;
  V4Raw r;
  load_raw(r, kb0);
  load_x(0, kb0);
  __syncthreads(); // code[] is written
  store_w(0, r);
  if (kb0 + 1 < kb1) load_raw(r, kb0 + 1);
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  for (int kb = kb0; kb < kb1; kb++) {
    const int s = (kb - kb0) & 1;
    const uint32_t wa = sbase + s * STAGE + wg * 64 * 128, xa = sbase + s * STAGE + V4_TILE;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      wgmma_n<NX>(acc, desc128(wa + 32 * ks), desc128(xa + 32 * ks));
      wgmma_n<NX>(acc, desc128(wa + 32 * ks), desc128(xa + XT + 32 * ks));
    }
    wgmma_commit();
    if (kb + 1 < kb1) {
      load_x(s ^ 1, kb + 1);
      store_w(s ^ 1, r);
      if (kb + 2 < kb1) load_raw(r, kb + 2);
    }
    wgmma_wait0();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
  }
  // acc[4i + j]: weight row n0 + 64wg + 16warp + lane/4 + 8·(j/2), x row 8i + 2·(lane%4) + j%2.
#pragma unroll
  for (int i = 0; i < NX / 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = 8 * i + 2 * (lane & 3) + (j & 1), n = n0 + 64 * wg + 16 * warp + (lane >> 2) + 8 * (j >> 1);
      if (m < M && n < N) ws[((size_t)sp * M + m) * N + n] = acc[4 * i + j];
    }
#endif
}

// reduce_splits: c[m][n] = Σ_s ws[s][m][n], in split order.
__global__ void reduce_splits(const float* __restrict__ ws, float* __restrict__ c, int MN, int splits) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= MN) return;
  float s = 0.0f;
  for (int p = 0; p < splits; p++) s += ws[(size_t)p * MN + i];
  c[i] = s;
}

// v4_built reports whether this build has v4 (sm_90a).
__global__ void v4_probe(int* out) { *out = V4_BUILT; }

// ---------------------------------------------------------------------------
// Host side.

int main() {
  CK(cudaMemcpyToSymbol(NF4_TABLE, NF4_HOST, sizeof NF4_HOST));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const double copy_gbs = copy_bandwidth();
  int v4 = 0, *dv4;
  CK(cudaMalloc(&dv4, 4));
  v4_probe<<<1, 1>>>(dv4);
  CK(cudaMemcpy(&v4, dv4, 4, cudaMemcpyDeviceToHost));
  printf("v4 (wgmma) %s\n\n", v4 ? "built" : "not built: needs -arch=sm_90a");
  srand(777 + (unsigned)time(nullptr));
  struct Case {
    const char* name;
    int N, K;
  } cases[] = {{"gate+up", 22016, 2048}, {"down", 2048, 11008}, {"q+k+v", 2560, 2048}, {"o", 2048, 2048}};
  std::vector<float> codemap(256);
  for (int i = 0; i < 256; i++) codemap[i] = -1.0f + 2.0f * i / 255.0f;
  const bool quick = getenv("QUICK") != nullptr;
  for (const Case& cs : cases) {
    if (quick && strcmp(cs.name, "gate+up") != 0) continue;
    const int N = cs.N, K = cs.K;
    const size_t nb = (size_t)N * K / 64, bytes = (size_t)N * K / 2 + nb + (nb / 256 + 1) * 4;
    std::vector<uint8_t> packed((size_t)N * K / 2), qa(nb);
    std::vector<float> nested(nb / 256 + 1);
    for (auto& v : packed) v = rand() & 255;
    for (auto& v : qa) v = rand() & 255;
    for (auto& v : nested) v = 0.01f + 0.02f * rand() / RAND_MAX;
    const float offset = 0.015f;
    const int copies = std::max<int>(2, (int)((4.0 * prop.l2CacheSize) / bytes) + 1);
    std::vector<W4> ws(copies);
    float *dcode, *dnest;
    CK(cudaMalloc(&dcode, 256 * 4));
    CK(cudaMemcpy(dcode, codemap.data(), 256 * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dnest, nested.size() * 4));
    CK(cudaMemcpy(dnest, nested.data(), nested.size() * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < copies; i++) {
      uint8_t *dc, *dq;
      CK(cudaMalloc(&dc, packed.size()));
      CK(cudaMemcpy(dc, packed.data(), packed.size(), cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dq, nb));
      CK(cudaMemcpy(dq, qa.data(), nb, cudaMemcpyHostToDevice));
      ws[i] = W4{dc, dq, dnest, dcode, offset, N, K};
    }
    auto weight = [&](size_t n, size_t k) { // bitsandbytes' dequantisation, as the kernel computes it
      const size_t e = n * K + k, b = e / 64;
      const float sc = codemap[qa[b]] * nested[b / 256] + offset; // fp32 multiply, then fp32 add
      const uint8_t byte = packed[e / 2];
      return bf16_round(NF4_HOST[(e & 1) ? (byte & 15) : (byte >> 4)] * sc);
    };
    for (int M : {20, 64, 512, 1280, 2048}) {
      if (quick ? M == 512 || M == 2048 : M < 512) continue; // QUICK: decode batches 20 and 64 too (v4 as a batch kernel)
      std::vector<float> x((size_t)M * K);
      for (auto& v : x) v = (float)rand() / RAND_MAX * 2 - 1;
      // Sampled outputs of the float64 reference (and Σ|w·x| for the bound).
      const int S = 1024;
      std::vector<int> sm(S), sn(S);
      std::vector<double> ref(S), mag(S);
      for (int i = 0; i < S; i++) sm[i] = rand() % M, sn[i] = rand() % N;
      {
        std::vector<std::thread> th;
        const int P = std::max(1u, std::thread::hardware_concurrency());
        for (int p = 0; p < P; p++)
          th.emplace_back([&, p] {
            for (int i = p; i < S; i += P) {
              double s = 0, a = 0;
              for (int k = 0; k < K; k++) {
                const double v = (double)weight(sn[i], k) * x[(size_t)sm[i] * K + k];
                s += v;
                a += fabs(v);
              }
              ref[i] = s;
              mag[i] = a;
            }
          });
        for (auto& t : th) t.join();
      }
      float *dx, *dc;
      uint16_t *wbf, *xh, *xl; // v3's scratch: the weights as bf16, x's two planes
      CK(cudaMalloc(&wbf, (size_t)N * K * 2));
      CK(cudaMalloc(&xh, x.size() * 2));
      CK(cudaMalloc(&xl, x.size() * 2));
      CK(cudaMalloc(&dx, x.size() * 4));
      CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dc, (size_t)M * N * 4));
      std::vector<float> out((size_t)M * N);
      printf("%s N %d K %d M %d (weights %.1f MB, %d copies; %.1f GFLOP with two parts)\n", cs.name, N, K, M, bytes / 1e6, copies,
             4.0 * M * N * K / 1e9);
      printf("  %-22s %9s %9s %7s %9s %10s\n", "version", "µs", "GB/s", "% copy", "TFLOP/s", "max rel err");
      // check runs launch(copy 0) once on a poisoned output and returns its
      // worst relative error on the sampled outputs (∞ if any is unwritten).
      auto check = [&](auto launch) {
        CK(cudaMemset(dc, 0xff, (size_t)M * N * 4)); // NaN: unwritten outputs show
        launch(0);
        CK(cudaGetLastError());
        CK(cudaMemcpy(out.data(), dc, out.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (float v : out)
          if (std::isnan(v)) worst = INFINITY;
        for (int i = 0; i < S; i++) worst = std::max(worst, fabs(out[(size_t)sm[i] * N + sn[i]] - ref[i]) / std::max(mag[i], 1e-30));
        return worst;
      };
      auto time_us = [&](auto launch) { return rotating_us(launch, copies, 5); };
      auto tflops = [&](double us) { return 4.0 * M * N * K / (us * 1e-6) / 1e12; };
      auto report = [&](const char* name, double us, double worst) {
        const double gbs = bytes / (us * 1e-6) / 1e9;
        printf("  %-22s %9.1f %9.0f %6.1f%% %9.1f %10.2g%s", name, us, gbs, 100 * gbs / copy_gbs, tflops(us), worst, worst > 2e-5 ? "  WRONG" : "");
      };
      auto run = [&](auto kern, int BM, const char* name) {
        const int smem = BM == 64 ? gemm_smem<64>() : gemm_smem<128>();
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
        auto launch = [&](int i) { kern<<<grid, 256, smem>>>(ws[i], dx, dc, M); };
        const double worst = check(launch);
        report(name, time_us(launch), worst);
        printf("\n");
      };
      run(gemm<64, false>, 64, "v1 BM 64");
      run(gemm<64, true>, 64, "v2 BM 64");
      run(gemm<128, true>, 128, "v2 BM 128");
      // v3: dequant + split + gemm_bf16 (whole), and gemm_bf16 alone.
      auto run3 = [&](auto kern, int smem, const char* name) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((M + G_BM - 1) / G_BM, (N + G_BN - 1) / G_BN);
        const size_t n32 = (size_t)N * K / 32, n4 = (size_t)M * K / 4;
        auto gemm_only = [&](int) { kern<<<grid, 256, smem>>>(wbf, xh, xl, dc, M, N, K); };
        auto whole = [&](int i) {
          dequant_bf16<<<(unsigned)((n32 + 255) / 256), 256>>>(ws[i], wbf);
          split_x<<<(unsigned)((n4 + 255) / 256), 256>>>(dx, xh, xl, n4);
          gemm_only(i);
        };
        const double worst = check(whole);
        report(name, time_us(whole), worst);
        const double us = time_us(gemm_only);
        printf("   (gemm_bf16 alone %.1f µs, %.1f TFLOP/s)\n", us, tflops(us));
      };
      run3(gemm_bf16<3>, gemm3_smem<3>(), "v3 stages 3");
      run3(gemm_bf16<4>, gemm3_smem<4>(), "v3 stages 4");
      if (v4 && M <= 64) { // v5: the decode-batch variant (split x, K split across blocks, reduce)
        auto run5 = [&](auto kern, int smem, const char* name) {
          CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
          const int nblk = K / 64, nb = (N + 127) / 128;
          const int splits = std::max(1, std::min(nblk, (2 * prop.multiProcessorCount + nb - 1) / nb)); // about two blocks an SM
          float* wsp;
          CK(cudaMalloc(&wsp, (size_t)splits * M * N * 4));
          const size_t n4 = (size_t)M * K / 4;
          auto gemm_only = [&](int i) { kern<<<dim3(nb, splits), 256, smem>>>(ws[i], xh, xl, wsp, M, splits); };
          auto whole = [&](int i) {
            split_x<<<(unsigned)((n4 + 255) / 256), 256>>>(dx, xh, xl, n4);
            gemm_only(i);
            reduce_splits<<<(M * N + 255) / 256, 256>>>(wsp, dc, M * N, splits);
          };
          const double worst = check(whole);
          report(name, time_us(whole), worst);
          const double us = time_us(gemm_only);
          printf("   (splits %d; gemm alone %.1f µs)\n", splits, us);
          cudaFree(wsp);
        };
        if (M <= 24) run5(gemm_wgmma_dec<24>, v5_smem<24>(), "v5 wgmma n24");
        if (M <= 32) run5(gemm_wgmma_dec<32>, v5_smem<32>(), "v5 wgmma n32");
        run5(gemm_wgmma_dec<64>, v5_smem<64>(), "v5 wgmma n64");
      }
      if (v4) { // split x once (its own launch, timed in), then gemm_wgmma
        CK(cudaFuncSetAttribute(gemm_wgmma, cudaFuncAttributeMaxDynamicSharedMemorySize, v4_smem()));
        const dim3 grid((N + 127) / 128, (M + 127) / 128);
        const size_t n4 = (size_t)M * K / 4;
        auto gemm_only = [&](int i) { gemm_wgmma<<<grid, 256, v4_smem()>>>(ws[i], xh, xl, dc, M); };
        auto whole = [&](int i) {
          split_x<<<(unsigned)((n4 + 255) / 256), 256>>>(dx, xh, xl, n4);
          gemm_only(i);
        };
        const double worst = check(whole);
        report("v4 wgmma", time_us(whole), worst);
        const double us = time_us(gemm_only);
        printf("   (gemm_wgmma alone %.1f µs, %.1f TFLOP/s)\n", us, tflops(us));
      }
      cudaFree(dx);
      cudaFree(dc);
      cudaFree(wbf);
      cudaFree(xh);
      cudaFree(xl);
    }
    for (auto& w : ws) {
      cudaFree((void*)w.codes);
      cudaFree((void*)w.qabsmax);
    }
    cudaFree(dcode);
    cudaFree(dnest);
    printf("\n");
  }
  return 0;
}
