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
// Versions: v1 (this file) — fp32 FMA on dequantised weights, x from L1/L2.
#include <cuda_fp16.h>
#include "common.cuh"

#define MT 8 // batch rows per pass over the weights

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

// nf4_scale is the fp32 absmax of the block holding flat element e.
__device__ __forceinline__ float nf4_scale(const struct Mat& a, long long e) {
  const long long b = e >> a.blockShift;
  if (a.qabsmax) return a.code[a.qabsmax[b]] * a.nested[b >> a.nestedShift] + a.offset;
  return a.absmax[b];
}

// load8 writes the 8 weights of row r at columns k..k+7 (FMT_BF16/FMT_F32).
__device__ __forceinline__ void load8(const struct Mat& a, long long r, int k, float w[8]) {
  if (a.fmt == FMT_BF16) {
    const uint4 u = *(const uint4*)(a.bf16 + r * a.K + k);
    const uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      w[2 * i] = __uint_as_float(p[i] << 16);
      w[2 * i + 1] = __uint_as_float(p[i] & 0xffff0000u);
    }
  } else {
    const float4 u = *(const float4*)(a.f32 + r * a.K + k);
    const float4 v = *(const float4*)(a.f32 + r * a.K + k + 4);
    w[0] = u.x; w[1] = u.y; w[2] = u.z; w[3] = u.w;
    w[4] = v.x; w[5] = v.y; w[6] = v.z; w[7] = v.w;
  }
}

// nf4_8 decodes the 8 weights held in one 4-byte word of codes.
__device__ __forceinline__ void nf4_8(uint32_t word, float scale, int round, const float* table, float w[8]) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t byte = (word >> (8 * i)) & 0xffu;
    w[2 * i] = round_to(table[byte >> 4] * scale, round);
    w[2 * i + 1] = round_to(table[byte & 15u] * scale, round);
  }
}

__device__ __forceinline__ void fma8(float& acc, const float w[8], const float* x) {
  const float4 a = *(const float4*)x;
  const float4 b = *(const float4*)(x + 4);
  acc += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
}

__device__ __forceinline__ float lora_term(const struct Mat& a, const struct GemvOp& op, int m, int adapter, long long n) {
  if (adapter < 0 || a.loraSlot < 0 || a.loraB[adapter] == nullptr) return 0.0f;
  const int r = a.loraRank[adapter];
  const float* B = a.loraB[adapter] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  float s = 0;
  for (int j = 0; j < r; j++) s += B[j] * t[j];
  return a.loraScale[adapter] * s;
}

__device__ __forceinline__ float silu(float x) { return x * (1.0f / (1.0f + expf(-x))); }

// epilogue finishes rows (ra of matrix A, rb of matrix B) for batch row m.
__device__ void epilogue(const struct GemvOp& op, int m, const struct Mat& A, long long ra, float va,
                         const struct Mat* B, long long rb, float vb, long long pair) {
  const int adapter = op.rows[m].adapter;
  va += (A.bias ? A.bias[ra] : 0.0f) + lora_term(A, op, m, adapter, ra);
  if (B) vb += (B->bias ? B->bias[rb] : 0.0f) + lora_term(*B, op, m, adapter, rb);
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
    const int j = (int)(ra % op.headDim);
    const struct RowMeta rm = op.rows[m];
    if (&A != &op.mat[2]) { // q and k: RoPE on the pair (j, j+half), angles as the CPU reference
      const float e = (float)(2 * j) / (float)op.headDim;
      const float inv = 1.0f / (float)pow(op.ropeTheta, (double)e);
      const float ang = (float)rm.pos * inv;
      const float c = (float)cos((double)ang), s = (float)sin((double)ang);
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

template <int FMT>
__device__ void gemv_body(const struct GemvOp& op, long long M) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const long long pair = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  // Which two rows this warp computes.
  const struct Mat* A = &op.mat[0];
  const struct Mat* B = nullptr;
  long long ra, rb = -1;
  if (op.mode == MODE_GATEUP) {
    if (pair >= A->N) return;
    ra = rb = pair;
    B = &op.mat[1];
  } else if (op.mode == MODE_QKV) {
    const int half = op.headDim / 2;
    long long o = (pair / half) * op.headDim + pair % half;
    int i = 0;
    while (i < op.nmat && o >= op.mat[i].N) o -= op.mat[i++].N;
    if (i == op.nmat) return;
    A = B = &op.mat[i];
    ra = o;
    rb = o + half;
  } else {
    ra = 2 * pair;
    if (ra >= A->N) return;
    if (ra + 1 < A->N) {
      B = A;
      rb = ra + 1;
    }
  }
  const struct Mat& a = *A;
  const int K = a.K;
  constexpr int PER_LANE = FMT == FMT_NF4 ? 32 : 8;
  for (long long m0 = 0; m0 < M; m0 += MT) {
    const int mc = (int)min((long long)MT, M - m0);
    float acc0[MT], acc1[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) acc0[i] = acc1[i] = 0.0f;
    for (int k = lane * PER_LANE; k < K; k += 32 * PER_LANE) {
      if (FMT == FMT_NF4) {
        const uint4 ua = *(const uint4*)(a.packed + (ra * K + k) / 2);
        const float sa = nf4_scale(a, ra * K + k);
        uint4 ub = make_uint4(0, 0, 0, 0);
        float sb = 0;
        if (B) {
          ub = *(const uint4*)(B->packed + (rb * K + k) / 2);
          sb = nf4_scale(*B, rb * K + k);
        }
        const uint32_t wa[4] = {ua.x, ua.y, ua.z, ua.w}, wb[4] = {ub.x, ub.y, ub.z, ub.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
          float w0[8], w1[8];
          nf4_8(wa[q], sa, a.round, table, w0);
          nf4_8(wb[q], sb, a.round, table, w1);
#pragma unroll
          for (int i = 0; i < MT; i++) {
            if (i < mc) {
              const float* x = op.x + (m0 + i) * K + k + 8 * q;
              fma8(acc0[i], w0, x);
              fma8(acc1[i], w1, x);
            }
          }
        }
      } else {
        float w0[8], w1[8];
        load8(a, ra, k, w0);
        if (B) load8(*B, rb, k, w1);
        else {
#pragma unroll
          for (int i = 0; i < 8; i++) w1[i] = 0.0f;
        }
#pragma unroll
        for (int i = 0; i < MT; i++) {
          if (i < mc) {
            const float* x = op.x + (m0 + i) * K + k;
            fma8(acc0[i], w0, x);
            fma8(acc1[i], w1, x);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      acc0[i] = warp_sum(acc0[i]);
      acc1[i] = warp_sum(acc1[i]);
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      if (i < mc && lane == i) epilogue(op, (int)(m0 + i), a, ra, acc0[i], B, rb, acc1[i], pair);
    }
  }
}

// gemv_nf4 / gemv_dense: grid = ceil(pairs/warps per block), block = 256.
extern "C" __global__ void __launch_bounds__(256) gemv_nf4(const struct GemvOp* op, long long M) {
  gemv_body<FMT_NF4>(*op, M);
}

extern "C" __global__ void __launch_bounds__(256) gemv_dense(const struct GemvOp* op, long long M) {
  gemv_body<FMT_BF16>(*op, M); // load8 dispatches bf16/fp32 on the matrix's format
}

// lora_shrink: one warp per (m, slot, j); rows without an adapter, and ranks
// below rmax, get zeros. Bytes: rank·K·4 per adapter and slot read.
extern "C" __global__ void lora_shrink(const struct ShrinkOp* op, long long M) {
  const long long w = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  const long long total = M * op->nslots * op->rmax;
  if (w >= total) return;
  const int j = (int)(w % op->rmax);
  const int slot = (int)((w / op->rmax) % op->nslots);
  const int m = (int)(w / ((long long)op->rmax * op->nslots));
  const int ad = op->rows[m].adapter;
  float s = 0.0f;
  if (ad >= 0 && op->A[slot][ad] != nullptr && j < op->rank[slot][ad]) {
    const float* a = op->A[slot][ad] + (long long)j * op->K;
    const float* x = op->x + (long long)m * op->K;
    for (int k = lane; k < op->K; k += 32) s += a[k] * x[k];
    s = warp_sum(s);
  }
  if (lane == 0) op->t[(long long)m * op->tStride + slot * op->rmax + j] = s;
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
