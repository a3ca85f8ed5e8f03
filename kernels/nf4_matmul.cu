// nf4_matmul.cu: the matrix-vector product of decode (and, row chunk by row
// chunk, of prefill) with NF4 dequantisation, bias, the LoRA expand and the
// layer's epilogue fused in; and the LoRA shrink.
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
// Versions: v1 — fp32 FMA on dequantised weights, 8 batch rows per pass, scale
// chain read through the descriptor (268 GB/s on gate/up, H200); v2 (this
// file) — batch-row count templated (1..32) for registers and occupancy, the
// matrices' fields hoisted to registers, the dynamic map in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "common.cuh"


__constant__ float NF4_TABLE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

__device__ __forceinline__ float round_to(float f, int mode) {
  if (mode == 0) { // bf16, round to nearest even
    uint32_t u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
  }
  if (mode == 1) return __half2float(__float2half_rn(f));
  return f;
}

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

// lora_term is scale·Σ_j B[n, j]·t[m, j] for batch row m's adapter, the
// rank split over the warp's lanes (every lane calls it; all get the sum).
__device__ __forceinline__ float lora_term(const struct Mat& a, const struct GemvOp& op, int m, long long n, int lane) {
  const int adapter = op.rows[m].adapter;
  if (adapter < 0 || a.loraSlot < 0 || a.loraB[adapter] == nullptr) return 0.0f; // the same for the whole warp
  const int r = a.loraRank[adapter];
  const float* B = a.loraB[adapter] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  float s = 0;
  for (int j = lane; j < r; j += 32) s += B[j] * t[j];
  return a.loraScale[adapter] * warp_sum(s);
}

// lora_serial is lora_term for one thread alone (the MMA epilogue's threads
// each own different (row, batch row) outputs).
__device__ __forceinline__ float lora_serial(const struct Mat& a, const struct GemvOp& op, int m, long long n) {
  const int adapter = op.rows[m].adapter;
  if (adapter < 0 || a.loraSlot < 0 || a.loraB[adapter] == nullptr) return 0.0f;
  const int r = a.loraRank[adapter];
  const float* B = a.loraB[adapter] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  float s = 0;
  for (int j = 0; j < r; j++) s += B[j] * t[j];
  return a.loraScale[adapter] * s;
}

__device__ __forceinline__ float silu(float x) { return x * (1.0f / (1.0f + expf(-x))); }

// epilogue finishes rows (ra of matrix A, rb of matrix B) for batch row m;
// va and vb already hold the LoRA terms.
__device__ __forceinline__ void epilogue(const struct GemvOp& op, int m, const struct Mat& A, long long ra, float va,
                         const struct Mat* B, long long rb, float vb, long long pair) {
  va += A.bias ? A.bias[ra] : 0.0f;
  if (B) vb += B->bias ? B->bias[rb] : 0.0f;
  float* y = op.y + (long long)m * op.ldy;
  switch (op.mode) {
  case MODE_STORE:
    y[ra] = va;
    if (B) y[rb] = vb;
    break;
  case MODE_RESID:
    y[ra] += va;
    if (B) y[rb] += vb;
    break;
  case MODE_GATEUP:
    y[pair] = silu(va) * vb;
    break;
  case MODE_QKV: {
    const int half = op.headDim / 2, j = (int)(ra % op.headDim);
    const struct RowMeta rm = op.rows[m];
    if (&A != &op.mat[2]) { // q and k: RoPE on the pair (j, j+half), cos/sin from the embed kernel's table
      const float c = op.rope[((long long)m * half + j) * 2], s = op.rope[((long long)m * half + j) * 2 + 1];
      const float a = va, b = vb;
      va = a * c - b * s;
      vb = b * c + a * s;
    }
    if (&A == &op.mat[0]) {
      y[ra] = va;
      y[rb] = vb;
    } else {
      float* cache = (&A == &op.mat[1] ? rm.k : rm.v) + ((long long)op.layer * rm.cap + rm.pos) * op.kvDim;
      cache[ra] = va;
      cache[rb] = vb;
    }
    break;
  }
  }
}

// A matrix's fields a pass over it needs, copied to registers once.
struct MatRegs {
  const uint8_t* packed;
  const uint8_t* qabsmax;
  const float* absmax;
  const float* nested;
  float offset;
  int blockShift, nestedShift;
};

__device__ __forceinline__ MatRegs mat_regs(const struct Mat* m) {
  MatRegs r;
  r.packed = m->packed;
  r.qabsmax = m->qabsmax;
  r.absmax = m->absmax;
  r.nested = m->nested;
  r.offset = m->offset;
  r.blockShift = m->blockShift;
  r.nestedShift = m->nestedShift;
  return r;
}

// scale of the NF4 block holding flat element e (e < 2^31 for every Qwen matrix).
__device__ __forceinline__ float nf4_scale(const MatRegs& r, const float* code, unsigned e) {
  const unsigned b = e >> r.blockShift;
  // Two roundings, as bitsandbytes' two torch ops (dequantize_blockwise, then
  // += offset): nvcc would otherwise fuse them into one FMA and, now and then,
  // land an ulp away — enough to flip a weight's bf16 rounding.
  if (r.qabsmax) return __fadd_rn(__fmul_rn(code[__ldg(r.qabsmax + b)], __ldg(r.nested + (b >> r.nestedShift))), r.offset);
  return __ldg(r.absmax + b);
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
                                          int warp, int P, int next, const float* table, const float* code, float (*red)[MT][2]) {
  const struct Mat* A = &op->mat[0];
  const int mode = op->mode;
  // Which two rows this warp computes (valid = false for the grid's tail).
  const struct Mat* B = nullptr;
  int ra = 0, rb = -1;
  bool valid = true;
  if (mode == MODE_GATEUP) {
    valid = pair < A->N;
    ra = rb = pair;
    B = &op->mat[1];
  } else if (mode == MODE_QKV) {
    const int hd = op->headDim, half = hd / 2;
    int o = (pair / half) * hd + pair % half;
    int i = 0;
    while (i < op->nmat && o >= op->mat[i].N) o -= op->mat[i++].N;
    valid = i < op->nmat;
    if (valid) A = B = &op->mat[i];
    ra = o;
    rb = o + half;
  } else {
    ra = 2 * pair;
    valid = ra < A->N;
    if (ra + 1 < A->N) {
      B = A;
      rb = ra + 1;
    }
  }
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
  const int mode = op->mode;
  const int P = mode == MODE_GATEUP ? A->N
              : mode == MODE_QKV    ? (op->mat[0].N + op->mat[1].N + op->mat[2].N) / 2
                                    : (A->N + 1) / 2;
  __syncthreads(); // tables ready
  // Persistent: the block walks pairs base, base + gridDim·ppb, ….
  for (int base = blockIdx.x * ppb; base < P; base += gridDim.x * ppb) {
    gemv_pair<FMT, MT, ROUND>(op, M, wpp, base + warp / wpp, part, lane, warp, P, base + gridDim.x * ppb + warp / wpp, table, code, red);
  }
}

// gemv_nf4_<MT> (bf16 rounding), gemv_nf4r_<MT> (rounding mode read at run
// time) and gemv_dense_<MT>: grid = ceil(pairs / (8/wpp)), block = 256, wpp
// warps per pair (1, 2, 4 or 8); MT is the batch rows per pass (the launcher
// picks the smallest ≥ M, up to 16, and 16 at a time beyond).
// The second launch bound caps registers so that enough warps stay resident
// to hide the loads' latency without spilling: 85 registers for one row, 128 for 2–4, more beyond.
#define GEMV(MT, MINB)                                                                                                       \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_nf4_##MT(const struct GemvOp* op, long long M, long long wpp) {   \
    gemv_body<FMT_NF4, MT, 0>(op, M, (int)wpp);                                                                               \
  }                                                                                                                           \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_nf4r_##MT(const struct GemvOp* op, long long M, long long wpp) {  \
    gemv_body<FMT_NF4, MT, -1>(op, M, (int)wpp);                                                                              \
  }                                                                                                                           \
  extern "C" __global__ void __launch_bounds__(256, MINB) gemv_dense_##MT(const struct GemvOp* op, long long M, long long wpp) { \
    gemv_body<FMT_BF16, MT, 0>(op, M, (int)wpp);                                                                              \
  }
GEMV(1, 3)
GEMV(2, 2)
GEMV(4, 2)
GEMV(8, 1)
GEMV(16, 1)

// ---------------------------------------------------------------------------
// mma_nf4_<NT>: the same product on the tensor cores (mma.sync m16n8k16,
// bf16 in, fp32 accumulate), for matrices with K % 64 == 0 and 64-blocks.
//
// A warp takes a tile of 8 output pairs (the pairs of gemv: (A-row, B-row)),
// which are the 16 rows of the MMA's A operand: fragment row g is pair g's
// A-row, row g+8 its B-row — so RoPE's (j, j+half), gate/up's (gate, up) and
// the residual's (2p, 2p+1) land in one thread's accumulators. The codes are
// stored permuted within each (row, 64-block) by the launcher (mmaNF4): thread
// t of a quad reads its 8 bytes, the codes of columns 16s + 2t, +1, +8, +9 for
// s = 0…3, dequantises them exactly as bitsandbytes (round_bf16(NF4·scale)),
// which is exactly the bf16 A fragment. x (fp32) enters as three bf16 parts,
// hi + mid + lo, so the product keeps fp32 accuracy. NT n-tiles of 8 batch
// rows per pass; warps per tile split K as in gemv.
// ---------------------------------------------------------------------------

__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *(const uint32_t*)&h;
}

// split3 writes x = hi + mid + lo as three packed bf16 pairs (exact to ~2^-24).
__device__ __forceinline__ void split3(float x0, float x1, uint32_t& hi, uint32_t& mid, uint32_t& lo) {
  hi = pack_bf16(x0, x1);
  const float r0 = x0 - __uint_as_float(hi << 16), r1 = x1 - __uint_as_float(hi & 0xffff0000u);
  mid = pack_bf16(r0, r1);
  lo = pack_bf16(r0 - __uint_as_float(mid << 16), r1 - __uint_as_float(mid & 0xffff0000u));
}

__device__ __forceinline__ void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp; // warps share a tile; tiles per block
  const int mode = op->mode;
  const int P = mode == MODE_GATEUP ? A0->N : mode == MODE_QKV ? (op->mat[0].N + op->mat[1].N + op->mat[2].N) / 2 : A0->N / 2;
  const int K = A0->K;
  const int blocks = K / 64, per = (blocks + wpp - 1) / wpp;
  const int bbeg = part * per, bend = min(blocks, bbeg + per);
  // Persistent, block-uniform loop (the split-K meeting has block barriers):
  // the block's tiles are bb, bb + 8, …; a warp whose tile is past the end
  // still takes part in the barriers.
  for (int bb = blockIdx.x * tpb * 8; bb < P; bb += gridDim.x * tpb * 8) {
    const int base = bb + (warp / wpp) * 8;
    const bool valid = base < P;
    // This thread's pair (g) and its two rows.
    const int pair = valid ? base + g : 0;
    const struct Mat* A = A0;
    const struct Mat* B = A0;
    int ra, rb;
    if (mode == MODE_GATEUP) {
      ra = rb = pair;
      B = &op->mat[1];
    } else if (mode == MODE_QKV) {
      const int hd = op->headDim, half = hd / 2;
      int o = (pair / half) * hd + pair % half, i = 0;
      while (i < 2 && o >= op->mat[i].N) o -= op->mat[i++].N;
      A = B = &op->mat[i];
      ra = o;
      rb = o + half;
    } else {
      ra = 2 * pair;
      rb = ra + 1;
    }
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
  extern "C" __global__ void __launch_bounds__(256) mma_nf4_##NT(const struct GemvOp* op, long long M, long long wpp) {  \
    mma_body<FMT_NF4, NT>(op, M, (int)wpp);                                                                        \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) mma_bf16_##NT(const struct GemvOp* op, long long M, long long wpp) { \
    mma_body<FMT_BF16, NT>(op, M, (int)wpp);                                                                       \
  }
MMA(1)
MMA(2)
MMA(4)

// lora_shrink: one 256-thread block per (j, slot, m) output, the K-long dot
// split over the block; rows without an adapter, and ranks below rmax, get
// zeros. Bytes: rank·K·4 per adapter and slot read, M·K·4 of x.
extern "C" __global__ void __launch_bounds__(256) lora_shrink(const struct ShrinkOp* op, long long M) {
  const int j = blockIdx.x, slot = blockIdx.y, m = blockIdx.z;
  const int ad = op->rows[m].adapter;
  float s = 0.0f;
  const bool live = ad >= 0 && op->A[slot][ad] != nullptr && j < op->rank[slot][ad];
  if (live) {
    const float* a = op->A[slot][ad] + (long long)j * op->K;
    const float* x = op->x + (long long)m * op->K;
    for (int k = threadIdx.x * 4; k < op->K; k += blockDim.x * 4) {
      const float4 av = *(const float4*)(a + k), xv = *(const float4*)(x + k);
      s += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
    }
    s = block_sum(s); // the condition above is the same for the whole block
  }
  if (threadIdx.x == 0) op->t[(long long)m * op->tStride + slot * op->rmax + j] = s;
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
  out[7] = offsetof(struct GemvOp, ropeTheta);
  out[8] = offsetof(struct ShrinkOp, x);
}
