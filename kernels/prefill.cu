// prefill.cu: the NF4 matrix product of long passes (prompts, the eval's
// teacher-forced passes) as a tiled GEMM on the tensor cores (dev:
// kernels/dev/nf4_gemm.cu v2). mmas_nf4 takes 64 rows a launch and reads and
// dequantises every weight again for each 64, nf4_lut two; here a block
// dequantises its 128 weight rows × 64 columns once a step into shared memory
// and PF_BM x rows reuse them.
//
// prefill_nf4: grid (⌈pairs/64⌉, ⌈M/PF_BM⌉), 256 threads. A block takes 64
// pairs — 8 tiles of mma.cu's shape, 16 weight rows each: row g of a tile is
// pair g's A-row, row g + 8 its B-row — and PF_BM x rows, and walks K in
// steps of 64 (one NF4 block a weight row): each step a thread dequantises
// half a block of one weight row (the per-block table, bitsandbytes' values
// bit for bit; the codes in nf4_lut's layout) into shared memory as bf16 and
// splits its share of x into hi and lo bf16 planes, the next step's codes,
// scales and x already loading; then 8 warps — 2 (x rows) × 4 (32 weight
// rows) — run the step's MMAs from ldmatrix fragments. No split of K: the
// block's sums go through shared memory to its threads, consecutive pairs of
// one x row each, which add the LoRA terms (the pairs' B rows staged in shared
// memory) and run the epilogue (mmas_finish's work).
//
// Bytes per launch: the weights once per PF_BM rows, x once per 64 pairs.
#include "prefill.cuh"

__device__ __forceinline__ void pf_ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// PfRaw is one thread's loads for a step: 16 code bytes (half a block of its
// weight row), the scale's sources, and its share of x (BM/16 float4).
template <int BM>
struct PfRaw {
  uint4 cw;
  uint32_t q;
  float n;
  float4 xv[BM / 16];
};

template <int BM>
__device__ void prefill_body(const struct GemvOp* __restrict__ op, int M) {
  constexpr int WM = BM / 2, NT = WM / 8; // x rows a warp; its n-tiles of 8
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t* wsh = sm;               // [PF_BN][PF_LDW] the step's dequantised weights
  uint16_t* xs = sm + PF_BN * PF_LDW; // [2][BM][PF_LDX] x's hi and lo
  __shared__ float code[256];
  const struct Mat* A0 = &op->mat[0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int wm = warp / 4, wn = warp % 4;
  const int P = pairs_of(op), K = A0->K, nblk = K / 64;
  const int mb = blockIdx.y * BM; // this block's first x row
  // This thread's weight row for the dequantisation: local row lr, half h.
  const int lr = threadIdx.x >> 1, h = threadIdx.x & 1;
  const int pair = blockIdx.x * 64 + (lr >> 4) * 8 + (lr & 7);
  const bool live = pair < P, isB = (lr & 8) != 0;
  const PairRows pr = pair_rows(op, live ? pair : 0);
  const MatRegs mr = mat_regs(isB && pr.B ? pr.B : pr.A);
  const long long row = isB && pr.B ? pr.rb : pr.ra;
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  auto load_w = [&](PfRaw<BM>& r, int kb) { // the weights' part
    const int s = kb >> 2, nb = min(4, nblk - 4 * s);
    r.cw = make_uint4(0, 0, 0, 0);
    r.q = 0;
    r.n = 0.0f;
    if (live) {
      // lutNF4: in step s, block t's first 16 bytes at 16t, its second at 16·nb + 16t.
      r.cw = __ldg((const uint4*)(mr.packed + row * (K / 2) + 128 * s + 16 * (kb & 3) + (h ? 16 * nb : 0)));
      const RawScale rs = raw_scale(mr, (unsigned)(row * K + 64 * kb));
      r.q = rs.q;
      r.n = rs.n;
    }
  };
  auto load_x = [&](PfRaw<BM>& r, int kb) { // x's part
#pragma unroll
    for (int u = 0; u < BM / 16; u++) {
      const int i = threadIdx.x + 256 * u, m = mb + i / 16, q = i % 16;
      r.xv[u] = m < M ? __ldg((const float4*)(op->x + (long long)m * K + 64 * kb + 4 * q)) : make_float4(0, 0, 0, 0);
    }
  };
  PfRaw<BM> r;
  load_w(r, 0); // the weights: in flight before the wait
  pdl_wait();   // x, the workspace and the outputs come after earlier kernels
  load_x(r, 0);
  float acc[2][NT][4] = {};
  const uint16_t* wa = wsh + (wn * 32 + (lane & 15)) * PF_LDW + 8 * (lane >> 4);
  const uint16_t* xb = xs + ((lane >> 4) * BM + wm * WM + (lane & 7)) * PF_LDX + 8 * ((lane >> 3) & 1);
  for (int kb = 0; kb < nblk; kb++) {
    __syncthreads(); // the previous step's fragments are read (and code[] is written)
    { // r → shared: the weights dequantised, x split
      const Lut L = make_lut(scale_of(mr, code, RawScale{r.q, r.n}));
      uint32_t o[16];
      dequant32(L, r.cw, o);
      uint4* d = (uint4*)(wsh + lr * PF_LDW + 32 * h);
#pragma unroll
      for (int i = 0; i < 4; i++) d[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
#pragma unroll
      for (int u = 0; u < BM / 16; u++) {
        const int i = threadIdx.x + 256 * u, m = i / 16, q = i % 16;
        const float4 v = r.xv[u];
        const uint32_t h01 = pack_bf16(v.x, v.y), h23 = pack_bf16(v.z, v.w);
        *(uint2*)(xs + m * PF_LDX + 4 * q) = make_uint2(h01, h23);
        *(uint2*)(xs + (BM + m) * PF_LDX + 4 * q) =
            make_uint2(pack_bf16(v.x - __uint_as_float(h01 << 16), v.y - __uint_as_float(h01 & 0xffff0000u)),
                       pack_bf16(v.z - __uint_as_float(h23 << 16), v.w - __uint_as_float(h23 & 0xffff0000u)));
      }
    }
    __syncthreads();
    if (kb + 1 < nblk) { // in flight during this step's MMAs
      load_w(r, kb + 1);
      load_x(r, kb + 1);
    }
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      uint32_t a[2][4];
#pragma unroll
      for (int at = 0; at < 2; at++) pf_ldmatrix_x4(a[at], wa + at * 16 * PF_LDW + 16 * ks);
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        uint32_t b[4]; // (hi, k 0-7), (hi, k 8-15), (lo, k 0-7), (lo, k 8-15)
        pf_ldmatrix_x4(b, xb + nt * 8 * PF_LDX + 16 * ks);
#pragma unroll
        for (int at = 0; at < 2; at++) {
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[0], b[1]);
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[2], b[3]);
        }
      }
    }
  }
  // acc[at][nt][j]: local weight row wn·32 + 16at + g (+ 8 for j ≥ 2) — local
  // pair (2wn + at)·8 + g, its A-row (j < 2) or B-row —, local x row wm·WM +
  // 8nt + 2t + j % 2. Through shared memory (the steps' buffers, free now) so
  // that the epilogue's threads take consecutive pairs of one x row: their
  // LoRA B rows are neighbours and t[m] one broadcast (mmas_finish's work).
  float* res = (float*)sm; // [BM][PF_LDR]: (A, B) sums of the 64 pairs
  __syncthreads();         // every warp's last fragments are read
#pragma unroll
  for (int at = 0; at < 2; at++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int j = 0; j < 4; j++) res[(wm * WM + 8 * nt + 2 * t + (j & 1)) * PF_LDR + 2 * ((2 * wn + at) * 8 + g) + (j >> 1)] = acc[at][nt][j];
  prefill_finish<BM>(op, M, mb, res, -1);
}

// Two blocks an SM (128 registers).
extern "C" __global__ void __launch_bounds__(256, 2) prefill_nf4(const __grid_constant__ struct GemvOp op, long long M) {
  prefill_body<PF_BM>(&op, (int)M);
}
