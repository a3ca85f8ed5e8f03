// nf4_lut.cu: the NF4 matrix-vector product of decode on the tensor cores,
// one or two batch rows a pass, with the same fused epilogues as the other
// matrix kernels (gemv.cuh). Developed as kernels/dev/nf4_gemv.cu v4, where
// the versions and their numbers are; kernels/PERF.md has the engine's.
//
// A warp takes 16 output rows (8 pairs, pair_rows: fragment row g is pair g's
// A-row, row g + 8 its B-row) × a K slice, in steps of 256 columns. In a step
// thread (g, t) owns 64-block t of the step in rows g and g + 8: for each it
// builds the block's 16 dequantised weights bf16(NF4[i]·scale) once (fp32
// multiply, round to nearest even: bitsandbytes' value bit for bit), held as
// two byte planes in 8 registers, then looks its 64 codes up with prmt — 6 prmt
// for 4 weights, 2 more to pair the planes into bf16x2 A fragments. The k
// order inside a step is free (the MMA sums over it), so MMA j takes, for
// thread t, columns 64t + 4j … 4j + 3: the block's own code order, 2 bytes.
// x enters as the B operand: each row split into hi + mid + lo bf16 parts
// (fp32-exact to ~2^-24) in columns 0–2 of the n8 tile (3–5: the second row),
// written once per launch into shared memory in fragment order by the block,
// so a B fragment is one 8-byte load. One mma.m16n8k16 does 256 weights; two
// accumulator chains a step are added into fp32 totals after each step
// (long tensor-core accumulation chains lose bits: 1.5e-5 relative at
// K = 11008 without this, 2e-7 with it).
//
// Codes are stored by the launcher (lutNF4) per (row, 256-column step): the
// first 16 bytes of the step's block t at 16t, the second 16 at 16·nb + 16t
// (nb blocks in the step), so a quad's 16-byte loads are one 64-byte run.
//
// Requires K % 64 == 0, 64-blocks, bf16 compute, rows in 16s (pairs in 8s).
// Bytes per call: N·K/2 codes + N·K/64 absmax codes (+ nested), x once per
// block from L2; per thread and step ~550 instructions for 128 weights, most
// of them prmt: the kernel is bound by the integer pipe, not by memory.
#include "norm.cuh"

// Raw is one thread's loads for one step: 32 bytes of codes of row ra's block
// and 32 of row rb's, and what their scales are rebuilt from (the absmax code
// and nested scale, or the fp32 absmax in na/nb). Only loads: the scales are
// rebuilt when the step runs, so a prefetch never waits on its own result.
struct Raw {
  uint4 a0, a1, b0, b1;
  uint32_t qa, qb;
  float na, nb;
};

__device__ __forceinline__ Raw load_raw(const MatRegs& A, const MatRegs& B, int ra, int rb, int K, int s, int t) {
  Raw r;
  const int nblk = K / 64, blk = 4 * s + t;
  if (blk >= nblk) { // past the row's last block: zero codes, and run_step zeroes the scale
    r.a0 = r.a1 = r.b0 = r.b1 = make_uint4(0, 0, 0, 0);
    r.qa = r.qb = 0;
    r.na = r.nb = 0.0f;
    return r;
  }
  const int nb = min(4, nblk - 4 * s);
  const uint8_t* pa = A.packed + (size_t)ra * (K / 2) + 128 * s;
  const uint8_t* pb = B.packed + (size_t)rb * (K / 2) + 128 * s;
  r.a0 = __ldg((const uint4*)(pa + 16 * t));
  r.a1 = __ldg((const uint4*)(pa + 16 * nb + 16 * t));
  r.b0 = __ldg((const uint4*)(pb + 16 * t));
  r.b1 = __ldg((const uint4*)(pb + 16 * nb + 16 * t));
  const unsigned ba = (unsigned)ra * nblk + blk, bb = (unsigned)rb * nblk + blk;
  if (A.qabsmax) {
    r.qa = __ldg(A.qabsmax + ba);
    r.na = __ldg(A.nested + (ba >> A.nestedShift));
  } else {
    r.qa = 0;
    r.na = __ldg(A.absmax + ba);
  }
  if (B.qabsmax) {
    r.qb = __ldg(B.qabsmax + bb);
    r.nb = __ldg(B.nested + (bb >> B.nestedShift));
  } else {
    r.qb = 0;
    r.nb = __ldg(B.absmax + bb);
  }
  return r;
}

// scale rebuilt as bitsandbytes does (two roundings: see nf4_scale).
__device__ __forceinline__ float raw_scale(const MatRegs& m, const float* code, uint32_t q, float n) {
  return m.qabsmax ? __fadd_rn(__fmul_rn(code[q], n), m.offset) : n;
}

// run_step does the 16 MMAs of one step. xs points at this lane's part of
// step s's B fragments ([s][j][parts][t], 8 bytes each).
template <int PARTS>
__device__ __forceinline__ void run_step(const Raw& r, bool live, const MatRegs& A, const MatRegs& B, const float* code,
                                         const uint2* xs, float* tot) {
  const Lut la = make_lut(live ? raw_scale(A, code, r.qa, r.na) : 0.0f);
  const Lut lb = make_lut(live ? raw_scale(B, code, r.qb, r.nb) : 0.0f);
  float c0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int w = 0; w < 8; w++) { // a 32-bit word: the codes of two MMAs
    const uint32_t wa = word(w < 4 ? r.a0 : r.a1, w & 3), wb = word(w < 4 ? r.b0 : r.b1, w & 3);
    const uint32_t sa = wa & 0x77777777u, ha = ((wa >> 1) & 0x44444444u) | 0x32103210u;
    const uint32_t sb = wb & 0x77777777u, hb = ((wb >> 1) & 0x44444444u) | 0x32103210u;
#pragma unroll
    for (int h = 0; h < 2; h++) {
      uint32_t a0, a1, a2, a3;
      lookup4(la, sa >> (16 * h), ha >> (16 * h), a0, a2);
      lookup4(lb, sb >> (16 * h), hb >> (16 * h), a1, a3);
      const uint2 b = xs[(2 * w + h) * PARTS * 4];
      mma16816(h ? c1 : c0, a0, a1, a2, a3, b.x, b.y);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) tot[i] += c0[i] + c1[i];
}

// split_rows writes rows m0 … m0 + PARTS/3 − 1 of x, steps s0 … s1 − 1 (the
// block's share of K), into shared memory as bf16 parts in fragment order; a
// missing second row is zeros. (Only the block's steps: with two blocks a
// tile each split all of x, the down projection's 44 KB at the 3B shape —
// 605 → 547 µs a step at batch 1. Four loads in flight a thread, tried with
// it, made the step slower; two here.)
template <int PARTS>
__device__ __forceinline__ void split_rows(const float* x, long long M, long long m0, int K, int s0, int s1, const float* nw,
                                           const float* inv, uint2* xs) {
  constexpr int U = 2; // a thread's loads in flight at once (one a trip: two to six dependent round trips)
  const int S = s1 - s0, n = S * 64 * (PARTS / 3);
  for (int i0 = threadIdx.x; i0 < n; i0 += U * blockDim.x) {
    float4 v[U], w[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int i = i0 + u * blockDim.x, row = i / (S * 64), it = i % (S * 64);
      const int c = 256 * (s0 + it / 64) + 64 * (it % 4) + 4 * ((it / 4) % 16);
      v[u] = w[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (i < n && c < K && m0 + row < M) {
        v[u] = __ldg((const float4*)(x + (m0 + row) * K + c));
        if (nw) w[u] = __ldg((const float4*)(nw + c));
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int i = i0 + u * blockDim.x, row = i / (S * 64), it = i % (S * 64);
      const int s = s0 + it / 64, j = (it / 4) % 16, t = it % 4;
      if (i >= n) break;
      if (nw) { // the fused RMSNorm: rmsnorm's w·(x·inv), the same values
        const float r = inv[row];
        v[u] = make_float4(w[u].x * (v[u].x * r), w[u].y * (v[u].y * r), w[u].z * (v[u].z * r), w[u].w * (v[u].w * r));
      }
      uint32_t hi[2], mid[2], lo[2];
      split3(v[u].x, v[u].y, hi[0], mid[0], lo[0]);
      split3(v[u].z, v[u].w, hi[1], mid[1], lo[1]);
      uint2* o = xs + ((s * 16 + j) * PARTS + 3 * row) * 4 + t;
      o[0] = make_uint2(hi[0], hi[1]);
      o[4] = make_uint2(mid[0], mid[1]);
      o[8] = make_uint2(lo[0], lo[1]);
    }
  }
}

// The RMSNorm nf4_lut can apply to x itself (the engine's decode steps of
// one sequence without adapters: the norm before q/k/v and before gate/up,
// without a launch of its own; batch 1 350 → 366 tok/s, H200). With
// adapters the norm's LoRA shrinks need the normed x of the whole row
// before any tile's epilogue: computed by the tile blocks' own warps, by a
// warp or a block an output in extra blocks at the grid's front (flags, or
// {t, epoch} words), each lost to the norm's own launch (rmsnorm_lora;
// batch 1 329 → 296, 325 → 314, 325 → 319: kernels/PERF.md).
//
// norm_rows: inv[r] = 1/sqrt(mean(x[m0 + r]²) + eps) for the pass's rows,
// as rmsnorm computes it (inv_rms; ends with a barrier).
template <int R>
__device__ __forceinline__ void norm_rows(const float* x, long long M, long long m0, int K, float eps, float* inv) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float v = m0 + r < M ? inv_rms(x + (m0 + r) * K, K, eps) : 1.0f;
    if (threadIdx.x == 0) inv[r] = v;
  }
  __syncthreads();
}

// bar_sync: barrier id of the n threads of a tile's warps (ids from 1;
// __syncthreads is 0), so that the block's other tiles run on meanwhile
// (gate/up, two warps a tile: batch 1 +1 %).
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }

// nf4_lut_<R>: grid = one wave of 256-thread blocks (persistent), wpp warps
// per 16-row tile (1, 2, 4 or 8: split-K, met in shared memory in a fixed
// order), R batch rows a pass (passes of R over M), dynamic shared memory
// ceil(K/256)·512·3R bytes for x. bpt = 2: two blocks a tile, each half of K
// (the launcher's choice for few tiles of long rows, the down projection:
// 128 tiles would leave half the card's block slots empty); the block that
// arrives second at the tile's counter adds the first's 16·R sums from ws
// [tiles][2][2][16] and finishes the tile. With nw, x is normed first.
template <int R>
__device__ void lut_body(const struct GemvOp* __restrict__ op, long long M, int wpp, int bpt, float* ws, int* count, const float* nw,
                         float eps) {
  constexpr int PARTS = 3 * R;
  extern __shared__ uint2 xsm[];
  __shared__ float code[256];
  __shared__ float red[8][2][16]; // split-K partial sums: [warp][batch row][fragment row]
  __shared__ float inv[R];        // the fused norm's scale of each row of the pass
  const struct Mat* A0 = &op->mat[0];
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp;
  // bpt blocks a tile: block b takes part b % bpt of K for the tiles of
  // block index b / bpt (the blocks of a tile meet through ws, below).
  const int half = blockIdx.x % bpt, bid = blockIdx.x / bpt;
  const int K = A0->K, S = (K / 64 + 3) / 4, tiles = pairs_of(op) / 8, stride = gridDim.x / bpt * tpb;
  const int s0 = half * S / bpt, s1 = (half + 1) * S / bpt; // this block's steps
  const int per = (s1 - s0 + wpp - 1) / wpp, sbeg = min(s1, s0 + part * per), send = min(s1, sbeg + per);
  const uint2* xs = xsm + (g % PARTS) * 4 + t; // lanes past the parts repeat parts 0, 1: columns nobody reads
  for (long long m0 = 0; m0 < M; m0 += R) {
    // The first tile's first step is requested before x is split (and, on
    // the first pass, before the previous kernel has finished: weights and
    // descriptors are not written by any kernel).
    int tb = bid * tpb;
    Raw cur = {};
    if (tb + warp / wpp < tiles && sbeg < send) {
      const PairRows p = pair_rows(op, (tb + warp / wpp) * 8 + g);
      cur = load_raw(mat_regs(p.A), mat_regs(p.B), p.ra, p.rb, K, sbeg, t);
    }
    pdl_wait(); // x, the LoRA shrink and the outputs the epilogue adds to come from earlier kernels
    if (nw) norm_rows<R>(op->x, M, m0, K, eps, inv);
    split_rows<PARTS>(op->x, M, m0, K, s0, s1, nw, inv, xsm);
    __syncthreads();
    for (; tb < tiles; tb += stride) {
      const int tile = tb + warp / wpp, pair = tile * 8 + g;
      const PairRows p = pair_rows(op, tile < tiles ? pair : 0);
      const MatRegs qa = mat_regs(p.A), qb = mat_regs(p.B);
      float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (tile < tiles) {
        for (int s = sbeg; s < send; s++) {
          Raw nxt = cur;
          if (s + 1 < send) {
            nxt = load_raw(qa, qb, p.ra, p.rb, K, s + 1, t);
          } else if (tile + stride < tiles) { // the next tile's first step
            const PairRows n = pair_rows(op, (tile + stride) * 8 + g);
            nxt = load_raw(mat_regs(n.A), mat_regs(n.B), n.ra, n.rb, K, sbeg, t);
          }
          run_step<PARTS>(cur, 4 * s + t < K / 64, qa, qb, code, xs + s * 16 * PARTS * 4, tot);
          cur = nxt;
        }
      }
      // D column n is held by lane t = n/2 (tot[0], tot[1]: row g; tot[2], tot[3]: row g + 8).
      // Batch row m0 is columns 0–2 (hi, mid, lo), m0 + 1 columns 3–5.
      float v[2][2] = {{t == 0 ? tot[0] + tot[1] : t == 1 ? tot[0] : 0.0f, t == 0 ? tot[2] + tot[3] : t == 1 ? tot[2] : 0.0f},
                       {t == 1 ? tot[1] : t == 2 ? tot[0] + tot[1] : 0.0f, t == 1 ? tot[3] : t == 2 ? tot[2] + tot[3] : 0.0f}};
#pragma unroll
      for (int b = 0; b < 2; b++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          v[b][h] += __shfl_xor_sync(0xffffffffu, v[b][h], 1);
          v[b][h] += __shfl_xor_sync(0xffffffffu, v[b][h], 2);
        }
      if (wpp > 1) { // the tile's warps meet in shared memory (a barrier of their own); its first warp finishes
        if (t == 0)
#pragma unroll
          for (int b = 0; b < 2; b++) {
            red[warp][b][g] = v[b][0];
            red[warp][b][g + 8] = v[b][1];
          }
        bar_sync(1 + warp / wpp, 32 * wpp);
        if (part == 0)
#pragma unroll
          for (int b = 0; b < 2; b++) {
            v[b][0] = v[b][1] = 0.0f;
            for (int w = 0; w < wpp; w++) {
              v[b][0] += red[warp + w][b][g];
              v[b][1] += red[warp + w][b][g + 8];
            }
          }
        bar_sync(1 + warp / wpp, 32 * wpp);
      }
      // The LoRA expand of the tile's 16 rows × R batch rows, spread over
      // the warp: lane l takes fragment row l % 16 and, with R = 2, batch row
      // m0 + l/16; with R = 1, half l/16 of the rank (the halves then met).
      // Lane t = b then finishes batch row m0 + b with the epilogue.
      bool finish = tile < tiles && part == 0;
      if (finish && bpt > 1) { // the tile's blocks meet: the last to arrive adds the other's sums and finishes
        float* mine = ws + ((long long)tile * 2 + half) * 32; // [tile][half][batch row][16 rows]
        if (t == 0)
#pragma unroll
          for (int b = 0; b < R; b++) {
            mine[16 * b + g] = v[b][0];
            mine[16 * b + g + 8] = v[b][1];
          }
        __threadfence(); // the sums are visible before the count says so
        __syncwarp();
        int last = 0;
        if (lane == 0) last = atomicAdd(count + tile, 1) == bpt - 1;
        finish = __shfl_sync(0xffffffffu, last, 0) != 0;
        if (finish) {
          const float* other = ws + ((long long)tile * 2 + (half ^ 1)) * 32;
#pragma unroll
          for (int b = 0; b < R; b++) { // a + b: the same sum whichever block is last
            v[b][0] += __ldcg(other + 16 * b + g);
            v[b][1] += __ldcg(other + 16 * b + g + 8);
          }
          if (lane == 0) count[tile] = 0; // for the next launch
        }
      }
      if (finish) {
        const int gi = lane & 15, hb = lane >> 4;
        const PairRows q = pair_rows(op, tile * 8 + (gi & 7));
        const struct Mat& mq = gi < 8 ? *q.A : *q.B;
        const long long mm = m0 + (R == 2 ? hb : 0);
        float lo = mm < M ? lora_part(mq, *op, (int)mm, gi < 8 ? q.ra : q.rb, R == 2 ? 0 : hb, R == 2 ? 1 : 2) : 0.0f;
        if (R == 1) lo += __shfl_xor_sync(0xffffffffu, lo, 16);
        const int b = min(t, R - 1);
        const float la = __shfl_sync(0xffffffffu, lo, g + 16 * b), lb = __shfl_sync(0xffffffffu, lo, g + 8 + 16 * b);
        const long long m = m0 + t;
        if (t < R && m < M) {
          const float va = (t == 0 ? v[0][0] : v[1][0]) + la;
          const float vb = (t == 0 ? v[0][1] : v[1][1]) + lb;
          epilogue(*op, (int)m, *p.A, p.ra, va, p.B, p.rb, vb, pair);
        }
      }
    }
    __syncthreads(); // the next pass rewrites x
  }
}

// nw (null: none), eps: the fused RMSNorm (above).
#define LUT(R)                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256, 2)                                                                    \
      nf4_lut_##R(const __grid_constant__ struct GemvOp op, long long M, long long wpp, long long bpt, float* ws, int* count, \
                  const float* nw, float eps) {                                                                           \
    lut_body<R>(&op, M, (int)wpp, (int)bpt, ws, count, nw, eps);                                                          \
  }
LUT(1)
LUT(2)
