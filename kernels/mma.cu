// mma.cu: the NF4 (and dense bf16) matrix product on the tensor cores for
// batches: mma.sync m16n8k16, bf16 in, fp32 accumulate, for matrices with
// K % 64 == 0, 64-blocks and rows in 16s. Bytes per call as nf4_matmul.cu;
// the weights are read once per pass of 8·NT batch rows.
//
// A warp takes a tile of 8 output pairs (pair_rows in gemv.cuh), which are the
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
// Versions: v5 (this file) fragments dequantised in registers; v5b dense bf16
// too; v6 (reverted) x pre-split by the producers.
#include "gemv.cuh"

// dq2 dequantises the two codes of one byte to a packed bf16 pair (high nibble first).
__device__ __forceinline__ uint32_t dq2(uint32_t byte, float s, const float* table) {
  return pack_bf16(table[(byte >> 4) & 15u] * s, table[byte & 15u] * s);
}
template <int FMT, int NT>
__device__ void mma_body(const struct GemvOp* __restrict__ op, long long M, int wpp) {
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ float red[8][NT][4][32]; // split-K partial accumulators, per warp
  const struct Mat* A0 = &op->mat[0];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  pdl_wait(); // x, and the outputs the epilogue adds to, come from earlier kernels
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp; // warps share a tile; tiles per block
  const int P = pairs_of(op);
  const int K = A0->K;
  const int blocks = K / 64, per = (blocks + wpp - 1) / wpp;
  const int bbeg = part * per, bend = min(blocks, bbeg + per);
  // Persistent, block-uniform loop (the split-K meeting has block barriers):
  // the block's tiles are bb, bb + 8, …; a warp whose tile is past the end
  // still takes part in the barriers.
  for (int bb = blockIdx.x * tpb * 8; bb < P; bb += gridDim.x * tpb * 8) {
    const int base = bb + (warp / wpp) * 8;
    const bool valid = base < P;
    // This thread's pair (g) and its two rows (B is never null: N % 16 == 0).
    const int pair = valid ? base + g : 0;
    const PairRows pr = pair_rows(op, pair);
    const struct Mat* A = pr.A;
    const struct Mat* B = pr.B;
    const int ra = pr.ra, rb = pr.rb;
    const MatRegs qa = mat_regs(A), qb = mat_regs(B);
    const unsigned ea = (unsigned)ra * K, eb = (unsigned)rb * K;
    const uint16_t* ha = FMT == FMT_BF16 ? A->bf16 + ea : nullptr; // dense bf16: the fragments are the weights
    const uint16_t* hb = FMT == FMT_BF16 ? B->bf16 + eb : nullptr;
    for (long long m0 = 0; m0 < M; m0 += 8 * NT) {
      float acc[NT][4];
#pragma unroll
      for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
      for (int b = bbeg; valid && b < bend; b++) {
        const unsigned c0 = 64u * b;
        uint2 ca = make_uint2(0, 0), cb = ca;
        float sa = 0.0f, sb = 0.0f;
        if (FMT == FMT_NF4) {
          ca = __ldg((const uint2*)(qa.packed + (ea + c0) / 2 + 8 * t));
          cb = __ldg((const uint2*)(qb.packed + (eb + c0) / 2 + 8 * t));
          sa = nf4_scale(qa, code, ea + c0);
          sb = nf4_scale(qb, code, eb + c0);
        }
#pragma unroll
        for (int st = 0; st < 4; st++) {
          const int col = c0 + 16 * st + 2 * t;
          uint32_t a0, a1, a2, a3;
          if (FMT == FMT_NF4) {
            const uint32_t wa = st < 2 ? ca.x : ca.y, wb = st < 2 ? cb.x : cb.y;
            const int sh = 16 * (st & 1);
            a0 = dq2(wa >> sh, sa, table);
            a2 = dq2(wa >> (sh + 8), sa, table);
            a1 = dq2(wb >> sh, sb, table);
            a3 = dq2(wb >> (sh + 8), sb, table);
          } else {
            a0 = __ldg((const uint32_t*)(ha + col));
            a2 = __ldg((const uint32_t*)(ha + col + 8));
            a1 = __ldg((const uint32_t*)(hb + col));
            a3 = __ldg((const uint32_t*)(hb + col + 8));
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
            mma16816(acc[n], a0, a1, a2, a3, h0, h1);
            mma16816(acc[n], a0, a1, a2, a3, m0r, m1r);
            mma16816(acc[n], a0, a1, a2, a3, l0, l1);
          }
        }
      }
      if (wpp > 1) { // the tile's warps meet in shared memory; its first warp finishes
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
          for (int i = 0; i < 4; i++) red[warp][n][i][lane] = acc[n][i];
        __syncthreads();
        if (part == 0) {
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
              float s = 0.0f;
              for (int w = 0; w < wpp; w++) s += red[warp + w][n][i][lane];
              acc[n][i] = s;
            }
        }
        __syncthreads();
      }
      if (part == 0 && valid) {
        // acc[n][j] is row g (the A-row), batch row m0 + 8n + 2t + j; acc[n][2+j] the B-row.
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
          for (int j = 0; j < 2; j++) {
            const long long m = m0 + 8 * n + 2 * t + j;
            if (m < M) {
              float va = acc[n][j], vb = acc[n][2 + j];
              va += lora_serial(*A, *op, (int)m, ra);
              vb += lora_serial(*B, *op, (int)m, rb);
              epilogue(*op, (int)m, *A, ra, va, B, rb, vb, pair);
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
    mma_body<FMT_NF4, NT>(&op, M, (int)wpp);                                                                        \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) mma_bf16_##NT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) { \
    mma_body<FMT_BF16, NT>(&op, M, (int)wpp);                                                                       \
  }
MMA(1)
MMA(2)
MMA(4)
