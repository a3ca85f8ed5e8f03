// nf4_matmul.cu: the matrix-vector product on CUDA cores (prefill rows and
// decode when the tensor-core kernels do not apply: f16 or fp32 compute
// dtype, odd shapes, dense fp32/bf16 weights such as lm_head) with NF4
// dequantisation, bias, the LoRA expand and the layer's epilogue fused in
// (gemv.cuh); and the LoRA shrink.
//
// gemv: one warp per pair of output rows (two rows read at once: two
// independent 16-byte loads in flight per lane), all M batch rows per pass of
// the weights, MT rows at a time. NF4: a lane takes 16 bytes = 32 codes =
// half a 64-block, so a warp covers 1024 elements per step; its block's scale
// is rebuilt in-kernel from the double-quantised code (code[q]·nested + offset,
// as bitsandbytes does) and every weight is rounded to the compute dtype
// (bf16) exactly as bitsandbytes' dequantize does, so results match the CPU
// reference to fp32 rounding. bf16/fp32 weights: 8 elements a lane a step.
// Requires K % 32 == 0 (NF4) or K % 8 == 0; NF4 blocks may straddle rows.
//
// Bytes per call (NF4, double quant): N·K/2 + N·K/64 (+ N·K/16384·4) of weights,
// M·K·4 of x (cached), M·N·4 written; flops 2·M·N·K. The LoRA expand adds
// 2·M·N·r flops and N·r·4 bytes per adapter in use.
//
// Versions (kernels/PERF.md has the numbers): v1 fp32 FMA on dequantised
// weights, 8 batch rows per pass; v2 batch rows templated, fields hoisted to
// registers; v2b split-K and a persistent grid; v3 codes tiled by 1024
// columns for coalesced x loads; v3c (this file) the LoRA expand spread over
// the lanes.
#include "gemv.cuh"

// load8h / load8f read 8 consecutive bf16 / fp32 weights as fp32.
__device__ __forceinline__ void load8h(const uint16_t* p, float w[8]) {
  const uint4 u = __ldg((const uint4*)p);
  const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    w[2 * i] = __uint_as_float(v[i] << 16);
    w[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void load8f(const float* p, float w[8]) {
  const float4 u = __ldg((const float4*)p), v = __ldg((const float4*)(p + 4));
  w[0] = u.x; w[1] = u.y; w[2] = u.z; w[3] = u.w;
  w[4] = v.x; w[5] = v.y; w[6] = v.z; w[7] = v.w;
}


// nf4_8r decodes 8 weights of one 4-byte code word; ROUND 0 is bf16 (the
// bitsandbytes compute dtype of every QLoRA checkpoint seen), −1 reads the
// mode at run time (f16 or no rounding).
template <int ROUND>
__device__ __forceinline__ void nf4_8r(uint32_t word, float scale, int mode, const float* table, float w[8]) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t byte = (word >> (8 * i)) & 0xffu;
    const float a = table[byte >> 4] * scale, b = table[byte & 15u] * scale;
    if (ROUND == 0) { // one cvt.rn.bf16x2.f32 rounds both, then unpack
      const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
      const uint32_t u = *(const uint32_t*)&h;
      w[2 * i] = __uint_as_float(u << 16);
      w[2 * i + 1] = __uint_as_float(u & 0xffff0000u);
    } else {
      w[2 * i] = round_to(a, mode);
      w[2 * i + 1] = round_to(b, mode);
    }
  }
}

// decode_fma accumulates one lane's share of a 16-byte chunk of codes (32
// weights of row A at ua, of row B at ub) times MT rows of x at column k.
template <int MT, int ROUND>
__device__ __forceinline__ void decode_fma(const uint4 ua, const uint4 ub, float sa, float sb, int round, const float* table,
                                           const float* Xm, int K, int k, int mc, float* acc0, float* acc1) {
  // One word of codes at a time: fewer live registers, so more warps stay
  // resident to cover each other's latency (MT == 1 is the decode case). The
  // word is picked by selects, not by indexing (which would go to local memory).
#pragma unroll(MT == 1 ? 1 : 4)
  for (int q = 0; q < 4; q++) {
    const uint32_t a = q == 0 ? ua.x : q == 1 ? ua.y : q == 2 ? ua.z : ua.w;
    const uint32_t b = q == 0 ? ub.x : q == 1 ? ub.y : q == 2 ? ub.z : ub.w;
    float w0[8], w1[8];
    nf4_8r<ROUND>(a, sa, round, table, w0);
    nf4_8r<ROUND>(b, sb, round, table, w1);
#pragma unroll
    for (int i = 0; i < MT; i++) {
      if (i < mc) {
        const float* x = Xm + i * K + k + 8 * q;
        const float4 a = __ldg((const float4*)x), b = __ldg((const float4*)(x + 4)); // once for both rows
        acc0[i] += w0[0] * a.x + w0[1] * a.y + w0[2] * a.z + w0[3] * a.w + w0[4] * b.x + w0[5] * b.y + w0[6] * b.z + w0[7] * b.w;
        acc1[i] += w1[0] * a.x + w1[1] * a.y + w1[2] * a.z + w1[3] * a.w + w1[4] * b.x + w1[5] * b.y + w1[6] * b.z + w1[7] * b.w;
      }
    }
  }
}

// tile_fma accumulates one lane's share of a 1024-column tile stored in the
// tiled order (see the launcher's tileNF4): lane l holds, in 16 bytes, the
// codes of columns 4l + 128j … +3 for j = 0…7, so that the x loads of a warp
// are contiguous 512-byte runs (coalesced) rather than 32 lines apart.
template <int MT, int ROUND>
__device__ __forceinline__ void tile_fma(const uint4 ua, const uint4 ub, const MatRegs& qa, const MatRegs& qb, bool hasB,
                                         unsigned ea, unsigned eb, int round, const float* table, const float* code,
                                         const float* Xm, int K, int k, int lane, int mc, float* acc0, float* acc1) {
  // The tile covers 16 blocks of 64 columns per row: lane l rebuilds the
  // scale of block l % 16 of row A (l < 16) or of row B (l ≥ 16) once, and
  // the lanes trade them by shuffles (group j of lane l lies in block 2j + l/16).
  const float mine = lane < 16 ? nf4_scale(qa, code, ea + k + 64 * lane)
                                : (hasB ? nf4_scale(qb, code, eb + k + 64 * (lane - 16)) : 0.0f);
#pragma unroll
  for (int j = 0; j < 8; j++) {
    const uint32_t wa = (j < 2 ? ua.x : j < 4 ? ua.y : j < 6 ? ua.z : ua.w) >> (16 * (j & 1));
    const uint32_t wb = (j < 2 ? ub.x : j < 4 ? ub.y : j < 6 ? ub.z : ub.w) >> (16 * (j & 1));
    const int col = k + 4 * lane + 128 * j;
    const int blk = 2 * j + (lane >> 4);
    const float sa = __shfl_sync(0xffffffffu, mine, blk), sb = __shfl_sync(0xffffffffu, mine, 16 + blk);
    float w0[4], w1[4];
#pragma unroll
    for (int b = 0; b < 2; b++) {
      const uint32_t ba = (wa >> (8 * b)) & 0xffu, bb = (wb >> (8 * b)) & 0xffu;
      const float a0 = table[ba >> 4] * sa, a1 = table[ba & 15u] * sa;
      const float b0 = table[bb >> 4] * sb, b1 = table[bb & 15u] * sb;
      if (ROUND == 0) {
        const __nv_bfloat162 ha = __floats2bfloat162_rn(a0, a1), hb = __floats2bfloat162_rn(b0, b1);
        const uint32_t pa = *(const uint32_t*)&ha, pb = *(const uint32_t*)&hb;
        w0[2 * b] = __uint_as_float(pa << 16);
        w0[2 * b + 1] = __uint_as_float(pa & 0xffff0000u);
        w1[2 * b] = __uint_as_float(pb << 16);
        w1[2 * b + 1] = __uint_as_float(pb & 0xffff0000u);
      } else {
        w0[2 * b] = round_to(a0, round);
        w0[2 * b + 1] = round_to(a1, round);
        w1[2 * b] = round_to(b0, round);
        w1[2 * b + 1] = round_to(b1, round);
      }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      if (i < mc) {
        const float4 x = __ldg((const float4*)(Xm + i * K + col));
        acc0[i] += w0[0] * x.x + w0[1] * x.y + w0[2] * x.z + w0[3] * x.w;
        acc1[i] += w1[0] * x.x + w1[1] * x.y + w1[2] * x.z + w1[3] * x.w;
      }
    }
  }
}

// gemv_pair computes one pair of output rows (this warp's K slice of it).
template <int FMT, int MT, int ROUND>
__device__ __forceinline__ void gemv_pair(const struct GemvOp* __restrict__ op, long long M, int wpp, int pair, int part, int lane,
                                          int warp, const float* table, const float* code, float (*red)[MT][2]) {
  const PairRows pr = pair_rows(op, pair);
  const struct Mat* A = pr.A;
  const struct Mat* B = pr.B;
  const int ra = pr.ra, rb = pr.rb;
  const bool valid = pr.valid;
  const int K = A->K, round = A->round;
  const float* X = op->x;
  constexpr int PER_LANE = FMT == FMT_NF4 ? 32 : 8;
  constexpr int STRIDE = 32 * PER_LANE;
  // This warp's K slice: whole chunks of PER_LANE columns (whole 1024-column
  // tiles for a tiled NF4 matrix).
  // A tiled matrix keeps the columns past its last whole tile (K % 1024) in
  // plain order; the pair's last warp takes them.
  const bool tiled = FMT == FMT_NF4 && A->fmt == FMT_NF4_TILED;
  const int Kt = tiled ? K / 1024 * 1024 : K, align = tiled ? 1024 : PER_LANE;
  const int slice = ((Kt + wpp - 1) / wpp + align - 1) / align * align;
  const int kbeg = part * slice, kend = min(Kt, kbeg + slice);
  MatRegs qa, qb;
  const uint16_t *ha = nullptr, *hb = nullptr;
  const float *fa = nullptr, *fb = nullptr;
  if (FMT == FMT_NF4) {
    qa = mat_regs(A);
    qb = B ? mat_regs(B) : qa;
  } else if (A->fmt == FMT_F32) {
    fa = A->f32 + (size_t)ra * K;
    fb = B ? B->f32 + (size_t)rb * K : nullptr;
  } else {
    ha = A->bf16 + (size_t)ra * K;
    hb = B ? B->bf16 + (size_t)rb * K : nullptr;
  }
  const unsigned ea = (unsigned)ra * K, eb = B ? (unsigned)rb * K : 0u;
  for (long long m0 = 0; m0 < M; m0 += MT) {
    const int mc = (int)min((long long)MT, M - m0);
    const float* Xm = X + m0 * K;
    float acc0[MT], acc1[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) acc0[i] = acc1[i] = 0.0f;
    int pbeg = kbeg, pend = kend; // columns in plain order
    if (valid && tiled) {
      for (int k = kbeg; k < kend; k += 1024) {
        const uint4 ua = __ldg((const uint4*)(qa.packed + (ea + k) / 2 + 16 * lane));
        const uint4 ub = B ? __ldg((const uint4*)(qb.packed + (eb + k) / 2 + 16 * lane)) : make_uint4(0, 0, 0, 0);
        tile_fma<MT, ROUND>(ua, ub, qa, qb, B != nullptr, ea, eb, round, table, code, Xm, K, k, lane, mc, acc0, acc1);
      }
      pbeg = Kt;
      pend = part == wpp - 1 ? K : Kt;
    }
    if (valid) {
      const int kend = pend;
      int k = pbeg + lane * PER_LANE;
      if (FMT == FMT_NF4) {
        for (; k < kend; k += STRIDE) {
          const uint4 ua = __ldg((const uint4*)(qa.packed + (ea + k) / 2));
          const uint4 ub = B ? __ldg((const uint4*)(qb.packed + (eb + k) / 2)) : make_uint4(0, 0, 0, 0);
          const float sa = nf4_scale(qa, code, ea + k), sb = B ? nf4_scale(qb, code, eb + k) : 0.0f;
          decode_fma<MT, ROUND>(ua, ub, sa, sb, round, table, Xm, K, k, mc, acc0, acc1);
        }
      } else {
        for (; k < kend; k += STRIDE) {
          float w0[8], w1[8];
          if (fa) {
            load8f(fa + k, w0);
            if (fb) load8f(fb + k, w1);
          } else {
            load8h(ha + k, w0);
            if (hb) load8h(hb + k, w1);
          }
          if (!hb && !fb) {
#pragma unroll
            for (int i = 0; i < 8; i++) w1[i] = 0.0f;
          }
#pragma unroll
          for (int i = 0; i < MT; i++) {
            if (i < mc) {
              const float* x = Xm + i * K + k;
              const float4 a = __ldg((const float4*)x), b = __ldg((const float4*)(x + 4)); // once for both rows
              acc0[i] += w0[0] * a.x + w0[1] * a.y + w0[2] * a.z + w0[3] * a.w + w0[4] * b.x + w0[5] * b.y + w0[6] * b.z + w0[7] * b.w;
              acc1[i] += w1[0] * a.x + w1[1] * a.y + w1[2] * a.z + w1[3] * a.w + w1[4] * b.x + w1[5] * b.y + w1[6] * b.z + w1[7] * b.w;
            }
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      if (i < mc) {
        acc0[i] = warp_sum(acc0[i]);
        acc1[i] = warp_sum(acc1[i]);
      }
    }
    if (wpp > 1) { // the pair's warps meet in shared memory; its first warp finishes
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < MT; i++) {
          red[warp][i][0] = acc0[i];
          red[warp][i][1] = acc1[i];
        }
      }
      __syncthreads();
      if (part == 0) {
#pragma unroll
        for (int i = 0; i < MT; i++) {
          float s0 = 0.0f, s1 = 0.0f;
          for (int w = 0; w < wpp; w++) {
            s0 += red[warp + w][i][0];
            s1 += red[warp + w][i][1];
          }
          acc0[i] = s0;
          acc1[i] = s1;
        }
      }
      __syncthreads();
    }
    // The LoRA expand, the whole warp at once; then lane i finishes batch row
    // m0+i (its own copy of the sums: no dynamic register index).
    if (valid && part == 0) {
#pragma unroll
      for (int i = 0; i < MT; i++) {
        if (i < mc) {
          acc0[i] += lora_term(*A, *op, (int)(m0 + i), ra, lane);
          if (B) acc1[i] += lora_term(*B, *op, (int)(m0 + i), rb, lane);
          if (lane == (i & 31)) epilogue(*op, (int)(m0 + i), *A, ra, acc0[i], B, rb, acc1[i], pair);
        }
      }
    }
  }
}

// gemv_body: a block of 256 threads = 8 warps takes 8/wpp pairs of output
// rows; the wpp warps of a pair split K between them (split-K, for matrices
// whose few rows would leave the card idle) and meet in shared memory.
template <int FMT, int MT, int ROUND>
__device__ void gemv_body(const struct GemvOp* __restrict__ op, long long M, int wpp) {
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ float red[8][MT][2]; // split-K partial sums
  const struct Mat* A = &op->mat[0];
  if (FMT == FMT_NF4) {
    if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
    const float* c = A->code; // every matrix of a launch shares the dynamic map's values
    if (c) for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = c[i];
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, part = warp % wpp, ppb = 8 / wpp;
  const int P = pairs_of(op);
  pdl_wait(); // x, and the outputs the epilogue adds to, come from earlier kernels
  __syncthreads(); // tables ready
  // Persistent: the block walks pairs base, base + gridDim·ppb, ….
  for (int base = blockIdx.x * ppb; base < P; base += gridDim.x * ppb) {
    gemv_pair<FMT, MT, ROUND>(op, M, wpp, base + warp / wpp, part, lane, warp, table, code, red);
  }
}

// gemv_nf4_<MT> (bf16 rounding), gemv_nf4r_<MT> (rounding mode read at run
// time) and gemv_dense_<MT>: grid = ceil(pairs / (8/wpp)), block = 256, wpp
// warps per pair (1, 2, 4 or 8); MT is the batch rows per pass (the launcher
// picks the smallest ≥ M up to its cap, gemvMaxMT = 4, and passes of the cap beyond).
// The second launch bound caps registers so that enough warps stay resident
// to hide the loads' latency without spilling: 85 registers for one row, 128 for 2–4, more beyond.
#define GEMV(MT, MINB)                                                                                                       \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_nf4_##MT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) {   \
    gemv_body<FMT_NF4, MT, 0>(&op, M, (int)wpp);                                                                               \
  }                                                                                                                           \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_nf4r_##MT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) {  \
    gemv_body<FMT_NF4, MT, -1>(&op, M, (int)wpp);                                                                              \
  }                                                                                                                           \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_dense_##MT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) { \
    gemv_body<FMT_BF16, MT, 0>(&op, M, (int)wpp);                                                                              \
  }
GEMV(1, 3)
GEMV(2, 2)
GEMV(4, 2)
GEMV(8, 1)
GEMV(16, 1)

// lora_shrink: one block (256 threads) per (j, slot, m) output, the K-long
// dot split over the block; rows without an adapter, and ranks below rmax, get
// zeros. Bytes: rank·K·4 per adapter and slot read, M·K·4 of x. The block
// copies its A row into shared memory (cp.async, K·4 bytes of dynamic shared
// memory) before the wait, then loads x, twelve 16-byte pieces a thread in
// flight (the down projection's K = 11,008 in one go): one round trip after
// the wait. (Until the eighteenth session A was held in registers by 1,024
// threads, two blocks a multiprocessor: 320 blocks at batch 20 were two
// waves; now three fit a multiprocessor, by their 79 registers.)
extern "C" __global__ void __launch_bounds__(256) lora_shrink(const __grid_constant__ struct ShrinkOp op, long long M) {
  constexpr int U = 12;
  extern __shared__ float4 as[]; // [K/4]: the A row
  const int j = blockIdx.x, slot = blockIdx.y, m = blockIdx.z, n4 = op.K / 4;
  const int ad = op.rows[m].adapter;
  float s = 0.0f;
  const bool live = ad >= 0 && op.A[slot][ad] != nullptr && j < op.rank[slot][ad];
  const float* a = live ? op.A[slot][ad] + (long long)j * op.K : nullptr;
  if (live) // A and the row metadata are no kernel's output
    for (int q = threadIdx.x; q < n4; q += blockDim.x) cp_async16(&as[q], a + 4 * q);
  pdl_wait(); // everything below may read what the previous kernel wrote
  pdl_trigger(); // the next launch let in only now (rmsnorm_lora's note)
  if (live) {
    const float* x = op.x + (long long)m * op.K;
    for (int q0 = threadIdx.x; q0 < n4; q0 += U * blockDim.x) {
      float4 xv[U];
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int q = q0 + u * blockDim.x;
        xv[u] = q < n4 ? *(const float4*)(x + 4 * q) : make_float4(0, 0, 0, 0);
      }
      uint32_t dep = 0;
#pragma unroll
      for (int u = 0; u < U; u++) dep |= __float_as_uint(xv[u].x);
      cp_async_wait_after(dep); // this thread's own pieces of A, once x is in
#pragma unroll
      for (int u = 0; u < U; u++)
        if (q0 + u * blockDim.x < n4) {
          const float4 av = as[q0 + u * blockDim.x];
          s += av.x * xv[u].x + av.y * xv[u].y + av.z * xv[u].z + av.w * xv[u].w;
        }
    }
    s = block_sum(s); // the condition above is the same for the whole block
  }
  if (threadIdx.x == 0) op.t[(long long)m * op.tStride + slot * op.rmax + j] = s;
}

// layout reports the structs' sizes and a few offsets, for TestStructLayout.
extern "C" __global__ void layout(long long* out) {
  out[0] = sizeof(struct Mat);
  out[1] = sizeof(struct RowMeta);
  out[2] = sizeof(struct GemvOp);
  out[3] = sizeof(struct ShrinkOp);
  out[4] = offsetof(struct Mat, loraScale);
  out[5] = offsetof(struct Mat, offset);
  out[6] = offsetof(struct GemvOp, x);
  out[7] = offsetof(struct GemvOp, kvDim);
  out[8] = offsetof(struct ShrinkOp, x);
}
