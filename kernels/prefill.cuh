// prefill.cuh: what the NF4 GEMMs of long passes share (prefill.cu's
// prefill_nf4 on mma.sync, prefill_wgmma.cu's on Hopper's warpgroup MMAs):
// the shared-memory budget and the epilogue, which takes the block's sums
// of 64 pairs × BM x rows from shared memory and finishes them as
// mmas_finish does (LoRA, bias, the mode's epilogue).
#pragma once
#include "gemv.cuh"

constexpr int PF_BM = 64, PF_BN = 128, PF_LDW = 64 + 8, PF_LDX = 64 + 8; // weight rows a block; bf16 a shared row (+8: conflict-free ldmatrix)
constexpr int PF_LDR = 2 * 64 + 1; // floats a row of the block's sums in shared memory (fits the steps' buffers)
constexpr int PF_RMAX = 32;        // the largest rmax whose LoRA B rows the epilogue stages (2·PF_RMAX·64 floats after the sums)
constexpr int PF_SMEM = (PF_BN * PF_LDW + 2 * PF_BM * PF_LDX) * 2 + 2 * PF_RMAX * 64 * 4; // dynamic shared memory (prefillCall)
static_assert((PF_BM * PF_LDR + 2 * PF_RMAX * 64) * 4 <= PF_SMEM, "the epilogue's sums and B rows fit");

// dequant32 looks up a thread's 32 codes (16 bytes of lutNF4's layout: its
// half of a row's 64-block) in the block's table L: o[j] holds weights 2j,
// 2j + 1 as bf16x2, in the codes' order.
__device__ __forceinline__ void dequant32(const Lut& L, const uint4& cw, uint32_t (&o)[16]) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t wd = word(cw, i), sel = wd & 0x77777777u, hsel = ((wd >> 1) & 0x44444444u) | 0x32103210u;
    lookup4(L, sel, hsel, o[4 * i], o[4 * i + 1]);
    lookup4(L, sel >> 16, hsel >> 16, o[4 * i + 2], o[4 * i + 3]);
  }
}

// lora_staged is lora_vec's term with B from shared memory: b[64·j] is B's
// value j of the thread's row (zero past the rank), t[m]'s values as float4.
__device__ __forceinline__ float lora_staged(const struct Mat& a, const struct GemvOp& op, int m, const float* b, int R, int ad) {
  if (a.loraSlot < 0 || a.loraB[ad] == nullptr) return 0.0f;
  const float4* t = (const float4*)(op.t + (long long)m * op.tStride + a.loraSlot * op.rmax);
  float s = 0.0f;
#pragma unroll 4
  for (int j = 0; j < R; j += 4) {
    const float4 x = __ldg(t + j / 4);
    s += b[64 * j] * x.x + b[64 * (j + 1)] * x.y + b[64 * (j + 2)] * x.z + b[64 * (j + 3)] * x.w;
  }
  return a.loraScale[ad] * s;
}

// prefill_finish runs the epilogue of a block of 64 pairs (blockIdx.x) × BM
// x rows from mb: res [BM][PF_LDR] holds each x row's (A, B) sums of the 64
// pairs, in shared memory with room after it for the staged B rows; 256
// threads. done ≥ 0: the sums already hold the LoRA terms of the rows of
// adapter done (prefill_wgmma's pw_lora).
template <int BM>
__device__ __forceinline__ void prefill_finish(const struct GemvOp* __restrict__ op, int M, int mb, float* res, int done) {
  const int P = pairs_of(op);
  // Each thread keeps one pair (the block's 256 threads: 64 pairs × 4) for
  // x rows r0, r0 + 4, …: its pair's rows looked up once. The LoRA B rows of
  // the pairs for the adapter of the block's first row (rows of other
  // adapters read theirs from global memory) are staged transposed, so that
  // a warp's consecutive pairs read consecutive words: bs[(ab·R + j)·64 +
  // pair], zeros past a rank or where a matrix has none.
  static_assert(BM * 64 % 256 == 0, "four threads a pair");
  const int pl = threadIdx.x % 64, r0 = threadIdx.x / 64, p = blockIdx.x * 64 + pl;
  const PairRows pq = pair_rows(op, p < P ? p : 0);
  const bool mine = p < P && pq.valid;
  float* bs = res + BM * PF_LDR;
  const int R = op->rmax, ad0 = op->rows[mb].adapter;
  const bool staged = ad0 >= 0 && ad0 != done && R <= PF_RMAX && R % 4 == 0;
  if (staged)
    for (int ab = 0; ab < 2; ab++) {
      const struct Mat* a = ab ? pq.B : pq.A;
      const bool has = mine && a && a->loraSlot >= 0 && a->loraB[ad0];
      const float* B = has ? a->loraB[ad0] + (ab ? pq.rb : pq.ra) * a->loraRank[ad0] : nullptr;
      const int rank = has ? a->loraRank[ad0] : 0;
      for (int j = r0; j < R; j += 4) bs[(ab * R + j) * 64 + pl] = j < rank ? B[j] : 0.0f;
    }
  __syncthreads();
  if (!mine) return; // no barrier below
#pragma unroll 1
  for (int r = r0; r < BM; r += 4) {
    const int m = mb + r;
    if (m >= M) break;
    float va = res[r * PF_LDR + 2 * pl], vb = res[r * PF_LDR + 2 * pl + 1];
    const int ad = op->rows[m].adapter;
    if (ad >= 0 && ad != done) {
      if (staged && ad == ad0) {
        va += lora_staged(*pq.A, *op, m, bs + pl, R, ad0);
        if (pq.B) vb += lora_staged(*pq.B, *op, m, bs + R * 64 + pl, R, ad0);
      } else {
        va += lora_vec(*pq.A, *op, m, pq.ra);
        if (pq.B) vb += lora_vec(*pq.B, *op, m, pq.rb);
      }
    }
    epilogue(*op, m, *pq.A, pq.ra, va, pq.B, pq.rb, vb, p);
  }
}
