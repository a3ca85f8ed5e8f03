// nf4_mma_batch.cuh: the kernel versions of the nf4_mma_batch benchmark
// (nf4_mma_batch.cu has the harness: cases, the float64 reference, timing).
//
// Why: the engine's kernel (v0 here, mma.cu) spends its time on the x side —
// every warp loads x for its 16 rows and splits it, per 64-block — so its time
// grows with M (3B shape, H200: gate/up 3.7 ms a step at M = 20, 9.2 ms at 64,
// against 0.2 ms of weight bytes). Versions:
//   v0  the engine's mma_body before v9 (STORE epilogue): a warp a tile of 16 rows, wpp
//       warps split K inside a block, x loaded and split per warp per step.
//   v1  x staged once per block: each 64-column step, the block's threads load
//       x [M, 64] (the next step's loads in flight during this step's MMAs),
//       split it into three bf16 planes in shared memory (double-buffered, one
//       barrier a step, rows padded to 36 words: conflict-free fragment reads)
//       that all WARPS warps (16·WARPS rows) read; K split across blocks
//       (kchunk columns each) into fp32 partials, summed by a reduce kernel.
//       Swept over WARPS and kchunk.
//   v2  v1 with the B fragments read by ldmatrix (x4: hi and mid, x2: lo).
//   v3  v2 with x in two bf16 parts (hi + lo = bf16(x − hi), ≈ 16 bits;
//       qwen's TestActivationSplit: logits move ≤ 1.5e-5 of the largest):
//       one ldmatrix x4 and two MMAs per k-step and n-tile instead of 2 + 3.
//       (v1–v3, H200: gate/up at batch 20 75.9 → 39.3 µs, still 14 % of the
//       copy bandwidth: each step's code loads are issued after the previous
//       step's barrier, so every step waits a DRAM latency.)
//   v4  no per-step barrier: a block's threads first issue the loads of all
//       their codes and absmax bytes for the block's KC columns (KC/64 × 16
//       bytes a thread in flight), then stage the whole x chunk [M, KC] split
//       into P planes (one barrier), then run the MMAs from registers and
//       shared memory; partials summed by the reduce kernel.
//   v5  persistent over tiles: a block stages its x chunk [M, KC] once, then
//       each warp walks tiles tile, tile + stride, … (no barrier after the
//       staging), the next tile's codes and absmax bytes loaded into a ring of
//       KC/64 register slots while this tile's MMAs run.
//       (H200: gate/up M20 37.7 µs, M64 72; Nsight on v4/v5: 12.3 / 10.1
//       thread-instructions executed a weight, issue-bound. Wired into the
//       engine as mmas_nf4, kernels/PERF.md v9.)
//   v6  v5 dequantising through a byte-pair table: pairs[b] = (NF4[b >> 4],
//       NF4[b & 15]), 256 float2 in shared memory, 2 KB-aligned so that a
//       byte's address is one shift and one LOP3 (table | b·8): per byte one
//       LDS.64 instead of two LDS and their index arithmetic. SASS (sass.py,
//       sm_90, M20 variant): main loop 1,192 → 873 instructions for 128
//       weights a thread, 9.3 → 6.8 a weight (dequantisation 4.5 → 3.0).
//       (H200: wrong, and 27 % slower than v5: random bytes spread over the
//       table's banks, so its loads conflict.)
//   v7  v5's frame with nf4_lut's dequantisation (kernels/nf4_lut.cu): a step
//       is 256 columns, thread t of a quad owns 64-block t of the step in its
//       two rows, builds each block's 16 exact weights bf16(NF4[i]·s) once as
//       two byte planes in registers and looks its 64 codes up with prmt
//       (8 a 4 weights); the MMAs' k order inside a step is permuted to match
//       (MMA j takes columns 64t + 4j … 4j + 3 for thread t), so x is staged
//       in that order: [step][j][part][o][row] 16-byte ldmatrix rows whose
//       word t is x[row][64t + 4j + o … + 1] (o = 0, 2). Codes in nf4_lut's
//       layout (lutNF4 in kernels/layout.go). Per thread and step, 128
//       weights: 2 tables (~64 instructions), ~48 selector ops, 256 prmt,
//       16·NT ldmatrix, 32·NT MMAs: SASS main loop 5.8 a weight at NT 3
//       (v5: 9.3), 8.7 at NT 8 (v5: 14). H200: gate+up M20 33.1 µs (v5
//       37.5), M64 65.4 (72.5); down M20 20.2 (23.1). Nsight (M20): issue
//       33 % busy, 4 warps a scheduler (112 registers), stalls on global
//       loads, the integer pipe and fixed-latency dependencies about equally;
//       the split-K partials and their reduce are ~1/5 of the time. Wired
//       into the engine as mmas_nf4 v10.
//   v8  v7 with each warp's codes in a shared-memory ring of STAGES tiles
//       filled by cp.async (STAGES − 1 tiles in flight instead of one, and
//       16 fewer registers: 86 at NT 3, so MINB 3 gives 24 warps an SM);
//       the scales stay one tile ahead in registers.
//       Written in the fourth session after the device time was spent: not
//       yet run.
#pragma once
#include "common.cuh"

struct Q {
  const uint8_t* codes;   // [N·K/2], mma layout
  const uint8_t* lut;     // [N·K/2], nf4_lut layout (v7)
  const uint8_t* qabsmax; // [N·K/64]
  const float* nested;    // [N·K/64/256 + 1]
  const float* code;      // [256] dynamic map
  float offset;
  int N, K;
};

__device__ __forceinline__ float scale_of(const Q& q, const float* code, unsigned e) {
  const unsigned b = e >> 6;
  return __fadd_rn(__fmul_rn(code[__ldg(q.qabsmax + b)], __ldg(q.nested + (b >> 8))), q.offset);
}

// dq2: the two codes of one byte as a packed bf16 pair (high nibble first).
__device__ __forceinline__ uint32_t dq2(uint32_t byte, float s, const float* table) {
  return pack_bf16(table[(byte >> 4) & 15u] * s, table[byte & 15u] * s);
}

// frags dequantises a thread's A fragments of one 64-block: rows ra (codes
// ca, scale sa) and rb, k-steps st = 0…3.
__device__ __forceinline__ void frags(uint2 ca, uint2 cb, float sa, float sb, const float* table, uint32_t (&a)[4][4]) {
#pragma unroll
  for (int st = 0; st < 4; st++) {
    const uint32_t wa = st < 2 ? ca.x : ca.y, wb = st < 2 ? cb.x : cb.y;
    const int sh = 16 * (st & 1);
    a[st][0] = dq2(wa >> sh, sa, table);
    a[st][2] = dq2(wa >> (sh + 8), sa, table);
    a[st][1] = dq2(wb >> sh, sb, table);
    a[st][3] = dq2(wb >> (sh + 8), sb, table);
  }
}

// frags_pairs is frags with one lookup per byte instead of per code: pairs
// [b] = (NF4[b >> 4], NF4[b & 15]) in shared memory, 256 float2 (v6). Each
// byte's address, table | b·8, is one shift and one three-input LOP3 (the
// table 2 KB-aligned, so | is +; a generic pointer cost an add a byte); the
// load is one LDS.64.
__device__ __forceinline__ float2 lds64(uint32_t addr) {
  float2 v;
  // volatile: the compiler must not move it above the barrier that publishes the table.
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ void frags_pairs(uint2 ca, uint2 cb, float sa, float sb, const float2* pairs, uint32_t (&a)[4][4]) {
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(pairs);
  auto dq = [&](uint32_t w, int k, float s) { // byte k of w
    const uint32_t addr = (k == 0 ? w << 3 : w >> (8 * k - 3)) & 0x7f8u | base;
    const float2 v = lds64(addr);
    return pack_bf16(v.x * s, v.y * s);
  };
#pragma unroll
  for (int st = 0; st < 4; st++) {
    const uint32_t wa = st < 2 ? ca.x : ca.y, wb = st < 2 ? cb.x : cb.y;
    const int k = 2 * (st & 1);
    a[st][0] = dq(wa, k, sa);
    a[st][2] = dq(wa, k + 1, sa);
    a[st][1] = dq(wb, k, sb);
    a[st][3] = dq(wb, k + 1, sb);
  }
}

// ---------------------------------------------------------------------------
// v0: the engine's kernel (mma.cu, STORE epilogue, rows of a tile r0 + g and
// r0 + g + 8).
template <int NT>
__global__ void __launch_bounds__(256) v0(Q q, const float* __restrict__ x, float* __restrict__ y, int M, int wpp) {
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ float red[8][NT][4][32];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = q.code[i];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp;
  const int K = q.K, tiles = q.N / 16;
  const int blocks = K / 64, per = (blocks + wpp - 1) / wpp;
  const int bbeg = part * per, bend = min(blocks, bbeg + per);
  for (int tb = blockIdx.x * tpb; tb < tiles; tb += gridDim.x * tpb) {
    const int tile = tb + warp / wpp;
    const bool valid = tile < tiles;
    const int ra = valid ? tile * 16 + g : 0, rb = ra + 8;
    const unsigned ea = (unsigned)ra * K, eb = (unsigned)rb * K;
    for (int m0 = 0; m0 < M; m0 += 8 * NT) {
      float acc[NT][4] = {};
      for (int b = bbeg; valid && b < bend; b++) {
        const unsigned c0 = 64u * b;
        const uint2 ca = __ldg((const uint2*)(q.codes + (ea + c0) / 2 + 8 * t));
        const uint2 cb = __ldg((const uint2*)(q.codes + (eb + c0) / 2 + 8 * t));
        uint32_t a[4][4];
        frags(ca, cb, scale_of(q, code, ea + c0), scale_of(q, code, eb + c0), table, a);
#pragma unroll
        for (int st = 0; st < 4; st++) {
          const int col = c0 + 16 * st + 2 * t;
#pragma unroll
          for (int n = 0; n < NT; n++) {
            const int m = m0 + 8 * n + g;
            float2 x0 = make_float2(0, 0), x1 = x0;
            if (m < M) {
              x0 = __ldg((const float2*)(x + (size_t)m * K + col));
              x1 = __ldg((const float2*)(x + (size_t)m * K + col + 8));
            }
            uint32_t h0, m0r, l0, h1, m1r, l1;
            split3(x0.x, x0.y, h0, m0r, l0);
            split3(x1.x, x1.y, h1, m1r, l1);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], h0, h1);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], m0r, m1r);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], l0, l1);
          }
        }
      }
      if (wpp > 1) {
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
          for (int i = 0; i < 4; i++) red[warp][n][i][lane] = acc[n][i];
        __syncthreads();
        if (part == 0)
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
              float s = 0.0f;
              for (int w = 0; w < wpp; w++) s += red[warp + w][n][i][lane];
              acc[n][i] = s;
            }
        __syncthreads();
      }
      if (part == 0 && valid)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
          for (int j = 0; j < 2; j++) {
            const int m = m0 + 8 * n + 2 * t + j;
            if (m < M) {
              y[(size_t)m * q.N + ra] = acc[n][j];
              y[(size_t)m * q.N + rb] = acc[n][2 + j];
            }
          }
    }
  }
}

// store_part writes one tile's partial sums into out [M][N]: acc[n][j] is
// row ra of batch row 8n + 2t + j, acc[n][2 + j] row rb (v1, v4, v5, v7, v8).
template <int NT>
__device__ __forceinline__ void store_part(float* out, const float (&acc)[NT][4], int M, int N, int ra, int rb, int t) {
#pragma unroll
  for (int n = 0; n < NT; n++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const int m = 8 * n + 2 * t + j;
      if (m < M) {
        out[(size_t)m * N + ra] = acc[n][j];
        out[(size_t)m * N + rb] = acc[n][2 + j];
      }
    }
}

// ---------------------------------------------------------------------------
// v1: x staged once per block (see the top). Shared memory: two buffers of
// three planes of NT·8 rows × 36 words (64 columns as bf16 pairs + 4 words of
// padding, so that fragment reads — word (8n + g)·36 + 8st + t — hit 32
// different banks).
constexpr int ROWW = 36;


// v1_part<NT, WARPS, LDM, P>: LDM (v2) reads the B fragments with ldmatrix,
// one x4 for the hi and mid parts and one x2 for lo (2 instructions instead of
// 6 32-bit loads per k-step and n-tile); P = 2 (v3, with LDM) keeps two parts,
// hi and lo, both in one x4.
template <int NT, int WARPS, bool LDM, int P = 3>
__global__ void __launch_bounds__(WARPS * 32) v1_part(Q q, const float* __restrict__ x, float* __restrict__ part, int M, int kchunk) {
  extern __shared__ uint32_t sx[]; // [2][P][NT·8][ROWW]
  __shared__ float table[16];
  __shared__ float code[256];
  constexpr int T = WARPS * 32, MP = NT * 8, PAIRS = MP * 32; // column pairs of one step
  constexpr int PER = (PAIRS + T - 1) / T;
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  for (int i = threadIdx.x; i < 256; i += T) code[i] = q.code[i];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int K = q.K;
  const int tile = blockIdx.x * WARPS + warp;
  const bool valid = tile * 16 < q.N;
  const int ra = valid ? tile * 16 + g : 0, rb = ra + 8;
  const unsigned ea = (unsigned)ra * K, eb = (unsigned)rb * K;
  const int kbeg = blockIdx.y * kchunk, kend = min(K, kbeg + kchunk);
  float2 xv[PER];
  auto load_x = [&](int c0) {
#pragma unroll
    for (int i = 0; i < PER; i++) {
      const int p = threadIdx.x + i * T, m = p >> 5, cp = p & 31;
      xv[i] = make_float2(0, 0);
      if (p < PAIRS && m < M) xv[i] = __ldg((const float2*)(x + (size_t)m * K + c0 + 2 * cp));
    }
  };
  load_x(kbeg);
  float acc[NT][4] = {};
  int buf = 0;
  for (int c0 = kbeg; c0 < kend; c0 += 64, buf ^= 1) {
    uint32_t* s = sx + buf * P * MP * ROWW;
#pragma unroll
    for (int i = 0; i < PER; i++) {
      const int p = threadIdx.x + i * T, m = p >> 5, cp = p & 31;
      if (p < PAIRS) {
        uint32_t h, mi, lo;
        if (P == 2) {
          split2(xv[i].x, xv[i].y, h, lo);
          s[m * ROWW + cp] = h;
          s[(MP + m) * ROWW + cp] = lo;
          continue;
        }
        split3(xv[i].x, xv[i].y, h, mi, lo);
        s[m * ROWW + cp] = h;
        s[(MP + m) * ROWW + cp] = mi;
        s[(2 * MP + m) * ROWW + cp] = lo;
      }
    }
    uint2 ca = make_uint2(0, 0), cb = ca;
    float sa = 0.0f, sb = 0.0f;
    if (valid) {
      ca = __ldg((const uint2*)(q.codes + (ea + c0) / 2 + 8 * t));
      cb = __ldg((const uint2*)(q.codes + (eb + c0) / 2 + 8 * t));
    }
    __syncthreads(); // this step's x planes written (and table/code, the first time)
    if (valid) {
      sa = scale_of(q, code, ea + c0);
      sb = scale_of(q, code, eb + c0);
    }
    if (c0 + 64 < kend) load_x(c0 + 64); // in flight during the MMAs
    if (valid) {
      uint32_t a[4][4];
      frags(ca, cb, sa, sb, table, a);
#pragma unroll
      for (int st = 0; st < 4; st++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
          if (LDM) {
            // Matrices 0-3 of the x4: (hi, k 0-7), (hi, k 8-15), (mid, k 0-7), (mid, k 8-15).
            const int mat = lane >> 3, row = 8 * n + (lane & 7);
            uint32_t hm[4], lo[2];
            ldmatrix_x4(hm, s + ((mat >> 1) * MP + row) * ROWW + 8 * st + 4 * (mat & 1));
            if (P == 2) { // hm = hi, lo
              mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[0], hm[1]);
              mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[2], hm[3]);
              continue;
            }
            ldmatrix_x2(lo, s + (2 * MP + row) * ROWW + 8 * st + 4 * (mat & 1));
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[0], hm[1]);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[2], hm[3]);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], lo[0], lo[1]);
            continue;
          }
          const uint32_t* r = s + (8 * n + g) * ROWW + 8 * st + t;
#pragma unroll
          for (int pt = 0; pt < 3; pt++) {
            const uint32_t* rp = r + pt * MP * ROWW;
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], rp[0], rp[4]);
          }
        }
    }
  }
  if (!valid) return;
  float* out = part + (size_t)blockIdx.y * M * q.N;
  store_part(out, acc, M, q.N, ra, rb, t);
}

// stage_x writes x[:, kbeg, kbeg + 64·steps) as P bf16 planes [P][MP][RW] of
// sx (rows past M and columns past the chunk as zeros).
template <int T, int MP, int KC, int P>
__device__ __forceinline__ void stage_x(uint32_t* sx, const float* __restrict__ x, int M, int K, int kbeg, int steps) {
  constexpr int RW = KC / 2 + 4, HALF = KC / 2;
  for (int p0 = threadIdx.x; p0 < MP * HALF; p0 += 4 * T) {
    float2 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int p = p0 + u * T, m = p / HALF, cp = p % HALF;
      v[u] = make_float2(0, 0);
      if (p < MP * HALF && m < M && 2 * cp < 64 * steps) v[u] = __ldg((const float2*)(x + (size_t)m * K + kbeg + 2 * cp));
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int p = p0 + u * T, m = p / HALF, cp = p % HALF;
      if (p >= MP * HALF) break;
      uint32_t h, mi, lo;
      if (P == 2) {
        split2(v[u].x, v[u].y, h, lo);
        sx[m * RW + cp] = h;
        sx[(MP + m) * RW + cp] = lo;
      } else {
        split3(v[u].x, v[u].y, h, mi, lo);
        sx[m * RW + cp] = h;
        sx[(MP + m) * RW + cp] = mi;
        sx[(2 * MP + m) * RW + cp] = lo;
      }
    }
  }
}

// v4_part<NT, WARPS, KC, P>: see the top. Shared memory [P][NT·8][KC/2 + 4]
// words (KC/2 + 4 ≡ 4 mod 32: the 8 rows an ldmatrix reads hit distinct banks).
template <int NT, int WARPS, int KC, int P>
__global__ void __launch_bounds__(WARPS * 32) v4_part(Q q, const float* __restrict__ x, float* __restrict__ part, int M) {
  constexpr int T = WARPS * 32, MP = NT * 8, S = KC / 64, RW = KC / 2 + 4;
  extern __shared__ uint32_t sx[];
  __shared__ float table[16];
  __shared__ float code[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int K = q.K, kbeg = blockIdx.y * KC, steps = min(S, (K - kbeg) / 64);
  const int tile = blockIdx.x * WARPS + warp;
  const bool valid = tile * 16 < q.N;
  const int ra = valid ? tile * 16 + g : 0, rb = ra + 8;
  const unsigned ea = (unsigned)ra * K + kbeg, eb = (unsigned)rb * K + kbeg;
  // 1. This thread's codes and absmax bytes for the whole chunk, in flight together.
  uint2 ca[S], cb[S];
  uint32_t qa[S], qb[S];
#pragma unroll
  for (int s = 0; s < S; s++) {
    ca[s] = cb[s] = make_uint2(0, 0);
    qa[s] = qb[s] = 0;
    if (valid && s < steps) {
      ca[s] = __ldg((const uint2*)(q.codes + (ea + 64 * s) / 2 + 8 * t));
      cb[s] = __ldg((const uint2*)(q.codes + (eb + 64 * s) / 2 + 8 * t));
      qa[s] = __ldg(q.qabsmax + ea / 64 + s);
      qb[s] = __ldg(q.qabsmax + eb / 64 + s);
    }
  }
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  for (int i = threadIdx.x; i < 256; i += T) code[i] = q.code[i];
  // 2. x [M, KC] → P bf16 planes.
  stage_x<T, MP, KC, P>(sx, x, M, K, kbeg, steps);
  __syncthreads();
  // 3. MMAs.
  float acc[NT][4] = {};
  const int mat = lane >> 3;
#pragma unroll
  for (int s = 0; s < S; s++) {
    if (s >= steps) break;
    const float sa = __fadd_rn(__fmul_rn(code[qa[s]], __ldg(q.nested + ((ea / 64 + s) >> 8))), q.offset);
    const float sb = __fadd_rn(__fmul_rn(code[qb[s]], __ldg(q.nested + ((eb / 64 + s) >> 8))), q.offset);
    uint32_t a[4][4];
    frags(ca[s], cb[s], sa, sb, table, a);
#pragma unroll
    for (int st = 0; st < 4; st++)
#pragma unroll
      for (int n = 0; n < NT; n++) {
        const int row = 8 * n + (lane & 7), col = 32 * s + 8 * st + 4 * (mat & 1);
        uint32_t hm[4];
        ldmatrix_x4(hm, sx + ((mat >> 1) * MP + row) * RW + col);
        mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[0], hm[1]);
        mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[2], hm[3]);
        if (P == 3) {
          uint32_t lo[2];
          ldmatrix_x2(lo, sx + (2 * MP + row) * RW + col);
          mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], lo[0], lo[1]);
        }
      }
  }
  if (!valid) return;
  float* out = part + (size_t)blockIdx.y * M * q.N;
  store_part(out, acc, M, q.N, ra, rb, t);
}

// v5_part<NT, WARPS, KC, P, PAIRS>: grid (groups, ⌈K/KC⌉); see the top.
// PAIRS (v6): dequantise through the byte-pair table (frags_pairs).
template <int NT, int WARPS, int KC, int P, bool PAIRS = false>
__global__ void __launch_bounds__(WARPS * 32, 1) v5_part(Q q, const float* __restrict__ x, float* __restrict__ part, int M) {
  constexpr int T = WARPS * 32, MP = NT * 8, S = KC / 64, RW = KC / 2 + 4;
  extern __shared__ uint32_t sx[];
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ __align__(2048) float2 pairs[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, mat = lane >> 3;
  const int K = q.K, kbeg = blockIdx.y * KC, steps = min(S, (K - kbeg) / 64);
  const int tiles = q.N / 16, stride = gridDim.x * WARPS;
  uint2 ca[S], cb[S];
  uint32_t qa[S], qb[S];
  auto fetch = [&](int tl, int s) {
    ca[s] = cb[s] = make_uint2(0, 0);
    qa[s] = qb[s] = 0;
    if (tl < tiles && s < steps) {
      const unsigned ea = (unsigned)(tl * 16 + g) * K + kbeg + 64 * s, eb = ea + 8u * K;
      ca[s] = __ldg((const uint2*)(q.codes + ea / 2 + 8 * t));
      cb[s] = __ldg((const uint2*)(q.codes + eb / 2 + 8 * t));
      qa[s] = __ldg(q.qabsmax + ea / 64);
      qb[s] = __ldg(q.qabsmax + eb / 64);
    }
  };
  int tile = blockIdx.x * WARPS + warp;
#pragma unroll
  for (int s = 0; s < S; s++) fetch(tile, s);
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  for (int i = threadIdx.x; i < 256; i += T) {
    code[i] = q.code[i];
    if (PAIRS) pairs[i] = make_float2(NF4_TABLE[i >> 4], NF4_TABLE[i & 15]);
  }
  stage_x<T, MP, KC, P>(sx, x, M, K, kbeg, steps);
  __syncthreads();
  float* out = part + (size_t)blockIdx.y * M * q.N;
  for (; tile < tiles; tile += stride) {
    const int ra = tile * 16 + g, rb = ra + 8;
    const unsigned ea = (unsigned)ra * K + kbeg, eb = (unsigned)rb * K + kbeg;
    float acc[NT][4] = {};
#pragma unroll
    for (int s = 0; s < S; s++) {
      if (s >= steps) break;
      const uint2 cas = ca[s], cbs = cb[s];
      const uint32_t qas = qa[s], qbs = qb[s];
      fetch(tile + stride, s); // the next tile's step s, in flight during this tile
      const float sa = __fadd_rn(__fmul_rn(code[qas], __ldg(q.nested + ((ea / 64 + s) >> 8))), q.offset);
      const float sb = __fadd_rn(__fmul_rn(code[qbs], __ldg(q.nested + ((eb / 64 + s) >> 8))), q.offset);
      uint32_t a[4][4];
      if (PAIRS) frags_pairs(cas, cbs, sa, sb, pairs, a);
      else frags(cas, cbs, sa, sb, table, a);
#pragma unroll
      for (int st = 0; st < 4; st++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
          const int row = 8 * n + (lane & 7), col = 32 * s + 8 * st + 4 * (mat & 1);
          uint32_t hm[4];
          ldmatrix_x4(hm, sx + ((mat >> 1) * MP + row) * RW + col);
          mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[0], hm[1]);
          mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], hm[2], hm[3]);
          if (P == 3) {
            uint32_t lo[2];
            ldmatrix_x2(lo, sx + (2 * MP + row) * RW + col);
            mma16816(acc[n], a[st][0], a[st][1], a[st][2], a[st][3], lo[0], lo[1]);
          }
        }
    }
    store_part(out, acc, M, q.N, ra, rb, t);
  }
}

__global__ void v1_reduce(float* __restrict__ y, const float* __restrict__ part, int MN, int S) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= MN) return;
  float s = 0.0f;
  for (int k = 0; k < S; k++) s += part[(size_t)k * MN + i];
  y[i] = s;
}


