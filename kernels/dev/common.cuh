// common.cuh: what the standalone benchmarks of kernels/dev share (llm.c
// dev/cuda's common.h): the error check, the NF4 table and the tensor-core
// helpers, copied from the engine's gemv.cuh so each benchmark builds alone.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x) ck((x), #x, __LINE__)
static void ck(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess) {
    fprintf(stderr, "line %d: %s: %s\n", line, what, cudaGetErrorString(e));
    exit(1);
  }
}

// NF4 code values (bitsandbytes' NormalFloat table); NF4_TABLE is filled
// from NF4_HOST by each benchmark's main.
static const float NF4_HOST[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
__constant__ float NF4_TABLE[16];

__device__ __forceinline__ uint32_t pack_bf16(float a, float b) { // a in the low half
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *(const uint32_t*)&h;
}

// split3 writes x = hi + mid + lo as three packed bf16 pairs (gemv.cuh's).
__device__ __forceinline__ void split3(float x0, float x1, uint32_t& hi, uint32_t& mid, uint32_t& lo) {
  hi = pack_bf16(x0, x1);
  const float r0 = x0 - __uint_as_float(hi << 16), r1 = x1 - __uint_as_float(hi & 0xffff0000u);
  mid = pack_bf16(r0, r1);
  lo = pack_bf16(r0 - __uint_as_float(mid << 16), r1 - __uint_as_float(mid & 0xffff0000u));
}

// split2 writes x ≈ hi + lo (16 significant bits) as two packed bf16 pairs.
__device__ __forceinline__ void split2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = pack_bf16(x0, x1);
  lo = pack_bf16(x0 - __uint_as_float(hi << 16), x1 - __uint_as_float(hi & 0xffff0000u));
}

__device__ __forceinline__ void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ldmatrix_x4 / _x2: 8×8 b16 matrices from shared memory; lane L gives the
// address of row L % 8 of matrix L / 8, and thread (g, t) receives row g,
// columns 2t and 2t + 1 of each: with rows = batch rows and columns = 8
// consecutive k, that is exactly a B fragment register.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint32_t* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const uint32_t* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// Lut: one block's 16 weights bf16(NF4[i]·s) as byte planes (nf4_lut.cu).
struct Lut {
  uint32_t lo[4], hi[4];
};

__device__ __forceinline__ Lut make_lut(float s) {
  uint32_t p[8]; // the NF4 values as immediates (NF4_HOST)
  p[0] = pack_bf16(__fmul_rn(-1.0f, s), __fmul_rn(-0.6961928009986877f, s));
  p[1] = pack_bf16(__fmul_rn(-0.5250730514526367f, s), __fmul_rn(-0.39491748809814453f, s));
  p[2] = pack_bf16(__fmul_rn(-0.28444138169288635f, s), __fmul_rn(-0.18477343022823334f, s));
  p[3] = pack_bf16(__fmul_rn(-0.09105003625154495f, s), __fmul_rn(0.0f, s));
  p[4] = pack_bf16(__fmul_rn(0.07958029955625534f, s), __fmul_rn(0.16093020141124725f, s));
  p[5] = pack_bf16(__fmul_rn(0.24611230194568634f, s), __fmul_rn(0.33791524171829224f, s));
  p[6] = pack_bf16(__fmul_rn(0.44070982933044434f, s), __fmul_rn(0.5626170039176941f, s));
  p[7] = pack_bf16(__fmul_rn(0.7229568362236023f, s), __fmul_rn(1.0f, s));
  Lut t;
#pragma unroll
  for (int q = 0; q < 4; q++) {
    t.lo[q] = prmt(p[2 * q], p[2 * q + 1], 0x6420);
    t.hi[q] = prmt(p[2 * q], p[2 * q + 1], 0x7531);
  }
  return t;
}

// lookup4: 16 bits of codes (c0 c1 c2 c3 in bitsandbytes order) → bf16x2
// (c0, c1) and (c2, c3); sel has bit 3 of each nibble cleared, hsel picks the
// upper half of the table where it was set.
__device__ __forceinline__ void lookup4(const Lut& t, uint32_t sel, uint32_t hsel, uint32_t& f01, uint32_t& f23) {
  const uint32_t lo = prmt(prmt(t.lo[0], t.lo[1], sel), prmt(t.lo[2], t.lo[3], sel), hsel);
  const uint32_t hi = prmt(prmt(t.hi[0], t.hi[1], sel), prmt(t.hi[2], t.hi[3], sel), hsel);
  f01 = prmt(lo, hi, 0x4051);
  f23 = prmt(lo, hi, 0x6273);
}

__device__ __forceinline__ uint32_t word_of(const uint4& u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

// bf16_round rounds to nearest even, as cvt.rn.bf16 (the host references).
static float bf16_round(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}

// rotating_us is the µs of one launch(i) — i the weight copy, rotating over
// copies (together ≥ 4× the L2, so the weights come from DRAM) — event-timed
// over reps_per_copy·copies launches after one warm-up pass over the copies.
template <typename F>
static double rotating_us(F launch, int copies, int reps_per_copy) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < copies; i++) launch(i);
  CK(cudaDeviceSynchronize());
  const int reps = reps_per_copy * copies;
  CK(cudaEventRecord(e0));
  for (int i = 0; i < reps; i++) launch(i % copies);
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return ms * 1000.0 / reps;
}

// copy_bandwidth is the device-to-device copy rate in GB/s (1 GiB, read +
// written counted, as qbench bench), printed; the benchmarks' 100 %.
static double copy_bandwidth() {
  const size_t n = 1ull << 30;
  void *a, *b;
  cudaEvent_t e0, e1;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaMemset(a, 1, n));
  for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < 10; i++) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  CK(cudaFree(a));
  CK(cudaFree(b));
  const double gbs = 2.0 * n * 10 / (ms * 1e-3) / 1e9;
  printf("copy bandwidth %.0f GB/s\n", gbs);
  return gbs;
}
