// mma.cu: the NF4 (and dense bf16) matrix product on the tensor cores for
// batches: mma.sync m16n8k16, bf16 in, fp32 accumulate, for matrices with
// K % 64 == 0, 64-blocks and rows in 16s. Bytes per call as nf4_matmul.cu;
// the weights are read once per pass of 8·NT batch rows.
//
// A tile is 8 output pairs (pair_rows in gemv.cuh; a warp takes TW tiles), the
// 16 rows of the MMA's A operand: fragment row g is pair g's A-row, row g+8
// its B-row — so RoPE's (j, j+half), gate/up's (gate, up) and the residual's
// (2p, 2p+1) land in one thread's accumulators. The codes are stored permuted
// within each (row, 64-block) by the launcher (mmaNF4): thread t of a quad
// reads its 8 bytes, the codes of columns 16s + 2t, +1, +8, +9 for s = 0…3,
// dequantises them exactly as bitsandbytes (round_bf16(NF4·scale)), which is
// exactly the bf16 A fragment. x (fp32) enters as three bf16 parts, hi + mid
// + lo, so the product keeps fp32 accuracy. NT n-tiles of 8 batch rows per
// pass; warps per tile split K as in gemv.
//
// Versions: v5 fragments dequantised in registers; v5b dense bf16 too; v6
// (reverted) x pre-split by the producers; v7 (reverted) x pre-split once per
// matrix in fragment order; v8 (this file) two tiles a warp for dense bf16 (TW
// below); NT = 3 for batches of 17–24 lost (gate/up 3,720 → 4,476 µs a step at
// batch 20, H200) and is not built.
#include "gemv.cuh"

// dq2 dequantises the two codes of one byte to a packed bf16 pair (high nibble first).
__device__ __forceinline__ uint32_t dq2(uint32_t byte, float s, const float* table) {
  return pack_bf16(table[(byte >> 4) & 15u] * s, table[byte & 15u] * s);
}
// A warp computes TW tiles of 8 pairs (16·TW rows of A) that share each B
// fragment, so x is loaded and split once per TW tiles: 2 for dense bf16
// (lm_head: 709 → 559 µs a step at batch 20 on an H200), 1 for NF4, whose
// registers at TW = 2 (≈180) leave one block a multiprocessor and lost
// (gate/up 3,720 → 4,702 µs).
template <int FMT, int NT, int TW>
__device__ void mma_body(const struct GemvOp* __restrict__ op, long long M, int wpp) {
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ float red[8][TW][NT][4][32]; // split-K partial accumulators, per warp
  const struct Mat* A0 = &op->mat[0];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  pdl_wait(); // x, and the outputs the epilogue adds to, come from earlier kernels
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp; // warps share a tile group; groups per block
  const int P = pairs_of(op);
  const int K = A0->K;
  const int blocks = K / 64, per = (blocks + wpp - 1) / wpp;
  const int bbeg = part * per, bend = min(blocks, bbeg + per);
  // Persistent, block-uniform loop (the split-K meeting has block barriers):
  // the block's tile groups are bb, bb + 8·TW, …; a warp whose tiles are
  // past the end still takes part in the barriers.
  for (int bb = blockIdx.x * tpb * 8 * TW; bb < P; bb += gridDim.x * tpb * 8 * TW) {
    const int base = bb + (warp / wpp) * 8 * TW;
    // This thread's pair (g) of each tile and its two rows (B is never null: N % 16 == 0).
    bool valid[TW];
    int pair[TW], ra[TW], rb[TW];
    const struct Mat* A[TW];
    const struct Mat* B[TW];
    MatRegs qa[TW], qb[TW];
    unsigned ea[TW], eb[TW];
#pragma unroll
    for (int w = 0; w < TW; w++) {
      valid[w] = base + 8 * w < P;
      pair[w] = valid[w] ? base + 8 * w + g : 0;
      const PairRows pr = pair_rows(op, pair[w]);
      A[w] = pr.A;
      B[w] = pr.B;
      ra[w] = pr.ra;
      rb[w] = pr.rb;
      qa[w] = mat_regs(A[w]);
      qb[w] = mat_regs(B[w]);
      ea[w] = (unsigned)ra[w] * K;
      eb[w] = (unsigned)rb[w] * K;
    }
    const bool any = valid[0]; // tiles are taken in order: the first is valid if any is
    for (long long m0 = 0; m0 < M; m0 += 8 * NT) {
      float acc[TW][NT][4];
#pragma unroll
      for (int w = 0; w < TW; w++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[w][n][0] = acc[w][n][1] = acc[w][n][2] = acc[w][n][3] = 0.0f;
      for (int b = bbeg; any && b < bend; b++) {
        const unsigned c0 = 64u * b;
        uint2 ca[TW], cb[TW];
        float sa[TW], sb[TW];
#pragma unroll
        for (int w = 0; w < TW; w++) {
          ca[w] = cb[w] = make_uint2(0, 0);
          sa[w] = sb[w] = 0.0f;
          if (FMT == FMT_NF4 && valid[w]) {
            ca[w] = __ldg((const uint2*)(qa[w].packed + (ea[w] + c0) / 2 + 8 * t));
            cb[w] = __ldg((const uint2*)(qb[w].packed + (eb[w] + c0) / 2 + 8 * t));
            sa[w] = nf4_scale(qa[w], code, ea[w] + c0);
            sb[w] = nf4_scale(qb[w], code, eb[w] + c0);
          }
        }
#pragma unroll
        for (int st = 0; st < 4; st++) {
          const int col = c0 + 16 * st + 2 * t;
          uint32_t a[TW][4];
#pragma unroll
          for (int w = 0; w < TW; w++) {
            if (FMT == FMT_NF4) {
              const uint32_t wa = st < 2 ? ca[w].x : ca[w].y, wb = st < 2 ? cb[w].x : cb[w].y;
              const int sh = 16 * (st & 1);
              a[w][0] = dq2(wa >> sh, sa[w], table);
              a[w][2] = dq2(wa >> (sh + 8), sa[w], table);
              a[w][1] = dq2(wb >> sh, sb[w], table);
              a[w][3] = dq2(wb >> (sh + 8), sb[w], table);
            } else if (valid[w]) { // dense bf16: the fragments are the weights
              const uint16_t* ha = A[w]->bf16 + ea[w];
              const uint16_t* hb = B[w]->bf16 + eb[w];
              a[w][0] = __ldg((const uint32_t*)(ha + col));
              a[w][2] = __ldg((const uint32_t*)(ha + col + 8));
              a[w][1] = __ldg((const uint32_t*)(hb + col));
              a[w][3] = __ldg((const uint32_t*)(hb + col + 8));
            } else {
              a[w][0] = a[w][1] = a[w][2] = a[w][3] = 0;
            }
          }
#pragma unroll
          for (int n = 0; n < NT; n++) {
            const long long m = m0 + 8 * n + g;
            float2 x0 = make_float2(0, 0), x1 = x0;
            if (m < M) {
              x0 = __ldg((const float2*)(op->x + m * K + col));
              x1 = __ldg((const float2*)(op->x + m * K + col + 8));
            }
            uint32_t h0, m0r, l0, h1, m1r, l1;
            split3(x0.x, x0.y, h0, m0r, l0);
            split3(x1.x, x1.y, h1, m1r, l1);
#pragma unroll
            for (int w = 0; w < TW; w++) {
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], h0, h1);
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], m0r, m1r);
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], l0, l1);
            }
          }
        }
      }
      if (wpp > 1) { // the group's warps meet in shared memory; its first warp finishes
#pragma unroll
        for (int w = 0; w < TW; w++)
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) red[warp][w][n][i][lane] = acc[w][n][i];
        __syncthreads();
        if (part == 0) {
#pragma unroll
          for (int w = 0; w < TW; w++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
              for (int i = 0; i < 4; i++) {
                float s = 0.0f;
                for (int v = 0; v < wpp; v++) s += red[warp + v][w][n][i][lane];
                acc[w][n][i] = s;
              }
        }
        __syncthreads();
      }
      if (part == 0) {
        // acc[w][n][j] is tile w's row g (the A-row), batch row m0 + 8n + 2t + j; acc[w][n][2+j] the B-row.
#pragma unroll
        for (int w = 0; w < TW; w++) {
          if (!valid[w]) continue;
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
              const long long m = m0 + 8 * n + 2 * t + j;
              if (m < M) {
                float va = acc[w][n][j], vb = acc[w][n][2 + j];
                va += lora_serial(*A[w], *op, (int)m, ra[w]);
                vb += lora_serial(*B[w], *op, (int)m, rb[w]);
                epilogue(*op, (int)m, *A[w], ra[w], va, B[w], rb[w], vb, pair[w]);
              }
            }
        }
      }
    }
  }
}

// mma_nf4_<NT> / mma_bf16_<NT> (dense bf16 weights, e.g. lm_head): grid = one
// wave of 256-thread blocks (persistent), NT n-tiles of 8 batch rows per
// pass, wpp warps per tile of 8 pairs (1, 2, 4 or 8).
#define MMA(NT)                                                                                                    \
  extern "C" __global__ void __launch_bounds__(256) mma_nf4_##NT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) {  \
    mma_body<FMT_NF4, NT, 1>(&op, M, (int)wpp);                                                                        \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) mma_bf16_##NT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) { \
    mma_body<FMT_BF16, NT, 2>(&op, M, (int)wpp);                                                                       \
  }
MMA(1)
MMA(2)
MMA(4)
