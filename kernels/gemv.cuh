// gemv.cuh: what the matrix kernels share — nf4_matmul.cu's CUDA-core GEMV,
// mma.cu's tensor-core kernels for batches, nf4_lut.cu's tensor-core kernel
// for one or two rows: the NF4 values, block scales rebuilt as bitsandbytes
// does, which two output rows a pair is, the LoRA expand and the epilogues
// (bias, residual add, SiLU·up, RoPE and the K/V cache write).
#pragma once
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

// lora_part is scale·Σ_j B[n, j]·t[m, j] over part p of P equal parts of
// the rank, for batch row m's adapter (0 without one). Unrolled so that its
// loads are in flight together.
__device__ __forceinline__ float lora_part(const struct Mat& a, const struct GemvOp& op, int m, long long n, int p, int P) {
  const int adapter = op.rows[m].adapter;
  if (adapter < 0 || a.loraSlot < 0 || a.loraB[adapter] == nullptr) return 0.0f;
  const int r = a.loraRank[adapter], j0 = p * r / P, j1 = (p + 1) * r / P;
  const float* B = a.loraB[adapter] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  float s = 0;
#pragma unroll 8
  for (int j = j0; j < j1; j++) s += B[j] * t[j];
  return a.loraScale[adapter] * s;
}

// lora_serial is lora_term for one thread alone (the MMA epilogue's threads
// each own different (row, batch row) outputs).
__device__ __forceinline__ float lora_serial(const struct Mat& a, const struct GemvOp& op, int m, long long n) {
  return lora_part(a, op, m, n, 0, 1);
}

// lora_vec is lora_serial with 16-byte loads, 16 of the rank's terms in
// flight at once (summed in a fixed order); lora_serial where B or t are
// not 16-byte aligned.
__device__ __forceinline__ float lora_vec(const struct Mat& a, const struct GemvOp& op, int m, long long n) {
  const int ad = op.rows[m].adapter;
  if (ad < 0 || a.loraSlot < 0 || a.loraB[ad] == nullptr) return 0.0f;
  const int r = a.loraRank[ad];
  const float* B = a.loraB[ad] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  if (r % 4 || ((uintptr_t)B | (uintptr_t)t) & 15) return lora_serial(a, op, m, n);
  float s = 0.0f;
  for (int j0 = 0; j0 < r; j0 += 16) {
    float4 b[4], x[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      b[i] = x[i] = make_float4(0, 0, 0, 0);
      if (j0 + 4 * i < r) {
        b[i] = *(const float4*)(B + j0 + 4 * i);
        x[i] = *(const float4*)(t + j0 + 4 * i);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) s += b[i].x * x[i].x + b[i].y * x[i].y + b[i].z * x[i].z + b[i].w * x[i].w;
  }
  return a.loraScale[ad] * s;
}

__device__ __forceinline__ float silu(float x) { return x * (1.0f / (1.0f + expf(-x))); }

// rope_pair rotates the pair (j, j + headDim/2) of a q or k head of batch
// row m, cos/sin from the embed kernel's table.
__device__ __forceinline__ void rope_pair(const struct GemvOp& op, int m, int j, float& va, float& vb) {
  const int half = op.headDim / 2;
  const float c = op.rope[((long long)m * half + j) * 2], s = op.rope[((long long)m * half + j) * 2 + 1];
  const float a = va, b = vb;
  va = a * c - b * s;
  vb = b * c + a * s;
}

// epilogue finishes rows (ra of matrix A, rb of matrix B) for batch row m;
// va and vb already hold the LoRA terms. It returns the values it stored at
// ra and rb of a MODE_STORE or MODE_RESID output (the residual add's new
// row: resid_norm keeps it without reading it back).
__device__ __forceinline__ float2 epilogue(const struct GemvOp& op, int m, const struct Mat& A, long long ra, float va,
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
    y[ra] = va = y[ra] + va;
    if (B) y[rb] = vb = y[rb] + vb;
    break;
  case MODE_GATEUP:
    y[pair] = silu(va) * vb;
    break;
  case MODE_QKV: {
    const struct RowMeta rm = op.rows[m];
    if (&A != &op.mat[2]) rope_pair(op, m, (int)(ra % op.headDim), va, vb); // q and k
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
  return make_float2(va, vb);
}

// split_sums_u: pair p's two outputs for batch row mm of a launch whose
// splits partial sums (mp batch rows each, [split][row][2·pair]) are in ws —
// added in split order (deterministic), U loads in flight: no predicates on
// them (past the last split a chunk reloads it, unused), else ptxas issues
// them a few at a time between the adds.
template <int U>
__device__ __forceinline__ float2 split_sums_u(const float* __restrict__ ws, int P, int mm, int p, long long splits, long long mp) {
  const float* w = ws + (long long)mm * 2 * P + 2 * p;
  const int stride = (int)(mp * 2 * P), n = (int)splits; // splits·stride < 2^31 (splitWSBytes)
  float va = 0.0f, vb = 0.0f;
  for (int sp = 0; sp < n; sp += U) {
    float2 v[U];
#pragma unroll
    for (int u = 0; u < U; u++) v[u] = __ldcg((const float2*)(w + min(sp + u, n - 1) * stride));
    if (sp + U <= n) {
#pragma unroll
      for (int u = 0; u < U; u++) va += v[u].x, vb += v[u].y;
    } else {
#pragma unroll
      for (int u = 0; u < U; u++)
        if (sp + u < n) va += v[u].x, vb += v[u].y;
    }
  }
  return make_float2(va, vb);
}

// split_sums is split_sums_u with the launch's splits in as few dependent
// L2 round trips as UMAX loads in flight allow: the down projection's 43
// splits at the 3B shape in 3 at UMAX 16 (11 four at a time), q/k/v's and
// o's 8 in one, gate/up's 4 in one without reloads.
template <int UMAX>
__device__ __forceinline__ float2 split_sums(const float* __restrict__ ws, int P, int mm, int p, long long splits, long long mp) {
  if (splits <= 4) return split_sums_u<4>(ws, P, mm, p, splits, mp);
  if (UMAX <= 8 || splits <= 8) return split_sums_u<8>(ws, P, mm, p, splits, mp);
  return split_sums_u<UMAX>(ws, P, mm, p, splits, mp);
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

// PairRows names the two output rows one "pair" computes, so that every
// epilogue finds both operands of its step in one thread: gate/up's (gate n,
// up n), RoPE's (j, j + headDim/2) of one head of q, k or v, the residual's
// (2p, 2p + 1). B is null when an odd row count leaves the last row alone;
// valid is false past the last pair.
struct PairRows {
  const struct Mat* A;
  const struct Mat* B;
  int ra, rb;
  bool valid;
};

__device__ __forceinline__ PairRows pair_rows(const struct GemvOp* op, int pair) {
  PairRows p = {&op->mat[0], nullptr, 0, -1, true};
  if (op->mode == MODE_GATEUP) {
    p.valid = pair < p.A->N;
    p.ra = p.rb = pair;
    p.B = &op->mat[1];
  } else if (op->mode == MODE_QKV) {
    const int hd = op->headDim, half = hd / 2;
    int o = (pair / half) * hd + pair % half, i = 0;
    while (i < op->nmat && o >= op->mat[i].N) o -= op->mat[i++].N;
    p.valid = i < op->nmat;
    if (p.valid) p.A = p.B = &op->mat[i];
    p.ra = o;
    p.rb = o + half;
  } else {
    p.ra = 2 * pair;
    p.valid = p.ra < p.A->N;
    if (p.ra + 1 < p.A->N) {
      p.B = p.A;
      p.rb = p.ra + 1;
    }
  }
  return p;
}

// pairs is how many pairs an op has (see pair_rows).
__device__ __forceinline__ int pairs_of(const struct GemvOp* op) {
  const struct Mat* A = &op->mat[0];
  if (op->mode == MODE_GATEUP) return A->N;
  if (op->mode == MODE_QKV) return (op->mat[0].N + op->mat[1].N + op->mat[2].N) / 2;
  return (A->N + 1) / 2;
}

// pair_lora: pair p's LoRA terms for batch row m (la for row pr.ra of pr.A,
// lb for pr.rb of pr.B; 0 without an adapter). False past the last pair.
__device__ __forceinline__ bool pair_lora(const struct GemvOp& op, int m, int p, PairRows& pr, float& la, float& lb) {
  pr = pair_rows(&op, p);
  if (!pr.valid) return false;
  la = lora_vec(*pr.A, op, m, pr.ra);
  lb = pr.B ? lora_vec(*pr.B, op, m, pr.rb) : 0.0f;
  return true;
}

// PreLora holds the LoRA terms of a thread's first pair p0 of batch row m,
// computed before its kernel's wait where the product before that kernel
// lets it in only after the product's own wait (mmas_nf4, wgmma_split_64):
// their t comes from a launch that has finished by then. pre_pair gives pair
// p's terms, from pre for p0 (false past the last pair).
struct PreLora {
  int p0;
  bool live;
  PairRows pr;
  float la, lb;
};

__device__ __forceinline__ PreLora pre_lora(const struct GemvOp& op, int m, int p0) {
  PreLora q;
  q.p0 = p0;
  q.live = p0 < pairs_of(&op) && pair_lora(op, m, p0, q.pr, q.la, q.lb);
  return q;
}

__device__ __forceinline__ bool pre_pair(const PreLora& q, const struct GemvOp& op, int m, int p, PairRows& pr, float& la, float& lb) {
  if (p != q.p0) return pair_lora(op, m, p, pr, la, lb);
  pr = q.pr, la = q.la, lb = q.lb;
  return q.live;
}

__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *(const uint32_t*)&h;
}

__device__ __forceinline__ void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The per-block dequantisation table of nf4_lut and mmas_nf4: for a 64-block
// its 16 weights bf16(NF4[i]·s), built once (fp32 multiply, round to nearest
// even: bitsandbytes' values bit for bit) as two byte planes in registers;
// codes are looked up with prmt, 8 for 4 weights.
//
// The NF4 values as immediates (NF4_TABLE above has the same numbers).
#define NF4_V0 -1.0f
#define NF4_V1 -0.6961928009986877f
#define NF4_V2 -0.5250730514526367f
#define NF4_V3 -0.39491748809814453f
#define NF4_V4 -0.28444138169288635f
#define NF4_V5 -0.18477343022823334f
#define NF4_V6 -0.09105003625154495f
#define NF4_V7 0.0f
#define NF4_V8 0.07958029955625534f
#define NF4_V9 0.16093020141124725f
#define NF4_V10 0.24611230194568634f
#define NF4_V11 0.33791524171829224f
#define NF4_V12 0.44070982933044434f
#define NF4_V13 0.5626170039176941f
#define NF4_V14 0.7229568362236023f
#define NF4_V15 1.0f

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
}

// Lut is one block's 16 weights bf16(NF4[i]·s) as byte planes: lo[q] holds
// the low bytes of values 4q … 4q+3, hi[q] their high bytes.
struct Lut {
  uint32_t lo[4], hi[4];
};

__device__ __forceinline__ Lut make_lut(float s) {
  uint32_t p[8];
  p[0] = pack_bf16(__fmul_rn(NF4_V0, s), __fmul_rn(NF4_V1, s));
  p[1] = pack_bf16(__fmul_rn(NF4_V2, s), __fmul_rn(NF4_V3, s));
  p[2] = pack_bf16(__fmul_rn(NF4_V4, s), __fmul_rn(NF4_V5, s));
  p[3] = pack_bf16(__fmul_rn(NF4_V6, s), __fmul_rn(NF4_V7, s));
  p[4] = pack_bf16(__fmul_rn(NF4_V8, s), __fmul_rn(NF4_V9, s));
  p[5] = pack_bf16(__fmul_rn(NF4_V10, s), __fmul_rn(NF4_V11, s));
  p[6] = pack_bf16(__fmul_rn(NF4_V12, s), __fmul_rn(NF4_V13, s));
  p[7] = pack_bf16(__fmul_rn(NF4_V14, s), __fmul_rn(NF4_V15, s));
  Lut t;
#pragma unroll
  for (int q = 0; q < 4; q++) {
    t.lo[q] = prmt(p[2 * q], p[2 * q + 1], 0x6420);
    t.hi[q] = prmt(p[2 * q], p[2 * q + 1], 0x7531);
  }
  return t;
}

// lookup4 turns 16 bits of codes in bitsandbytes order (columns c0…c3: byte
// c0<<4 | c1, then c2<<4 | c3) into the bf16x2 fragments (c0, c1) and (c2,
// c3). sel is the codes with bit 3 of each nibble cleared (prmt reads bit 3
// as a sign-replicate flag); hsel picks the upper table half for the nibbles
// whose bit 3 is set.
__device__ __forceinline__ void lookup4(const Lut& t, uint32_t sel, uint32_t hsel, uint32_t& f01, uint32_t& f23) {
  const uint32_t lo = prmt(prmt(t.lo[0], t.lo[1], sel), prmt(t.lo[2], t.lo[3], sel), hsel);
  const uint32_t hi = prmt(prmt(t.hi[0], t.hi[1], sel), prmt(t.hi[2], t.hi[3], sel), hsel);
  f01 = prmt(lo, hi, 0x4051); // the planes' bytes come in nibble order c1, c0, c3, c2
  f23 = prmt(lo, hi, 0x6273);
}

// word is 32-bit word i of u.
__device__ __forceinline__ uint32_t word(const uint4& u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

// RawScale is what a block's scale is rebuilt from, loaded ahead: the
// double-quantised code byte and its nested scale, or the fp32 absmax.
struct RawScale {
  uint32_t q;
  float n;
};
__device__ __forceinline__ RawScale raw_scale(const MatRegs& r, unsigned e) {
  const unsigned b = e >> r.blockShift;
  if (r.qabsmax) return RawScale{(uint32_t)__ldg(r.qabsmax + b), __ldg(r.nested + (b >> r.nestedShift))};
  return RawScale{0u, __ldg(r.absmax + b)};
}
// scale_of finishes it with nf4_scale's arithmetic (two roundings).
__device__ __forceinline__ float scale_of(const MatRegs& r, const float* code, RawScale s) {
  return r.qabsmax ? __fadd_rn(__fmul_rn(code[s.q], s.n), r.offset) : s.n;
}

// split3 writes x = hi + mid + lo as three packed bf16 pairs (exact to ~2^-24).
__device__ __forceinline__ void split3(float x0, float x1, uint32_t& hi, uint32_t& mid, uint32_t& lo) {
  hi = pack_bf16(x0, x1);
  const float r0 = x0 - __uint_as_float(hi << 16), r1 = x1 - __uint_as_float(hi & 0xffff0000u);
  mid = pack_bf16(r0, r1);
  lo = pack_bf16(r0 - __uint_as_float(mid << 16), r1 - __uint_as_float(mid & 0xffff0000u));
}
