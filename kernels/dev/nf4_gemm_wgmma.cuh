// nf4_gemm_wgmma.cuh: nf4_gemm.cu's v4 and v5 on Hopper's warpgroup MMAs
// (wgmma, sm_90a: run.sh builds for it; other builds leave the kernels empty
// and v4_probe says so). One kernel, gemm_wgmma<NX>, serves both: a block of
// two warpgroups takes 128 weight rows × an x tile of NX rows (the wgmma's
// n: 128 for v4's prefill tiles; 24, 32 or 64 for v5's decode batches) and a
// range of K's 64-column steps. Shared memory per stage: the weights
// [128][64] bf16, then x hi and x lo [NX][64] bf16, each K-major with the
// 128-byte swizzle (a row of 64 bf16 is 128 bytes; its 16-byte chunk c sits
// at c ^ (row % 8); 8 rows make a 1,024-byte atom), tiles 1,024-byte
// aligned. Each step the block's threads dequantise the next step's weights
// into the other stage and cp.async x's planes beside them while each
// warpgroup's 8 asynchronous m64nNXk16 MMAs (4 k16 × hi, lo) over its 64
// weight rows run. Included by nf4_gemm.cu after nf4_gemm_dense.cuh.
#pragma once

constexpr int V4_TILE = 128 * 64 * 2; // bytes of the weights' tile

// wgmma_smem is gemm_wgmma<NX>'s dynamic shared memory: two stages, and
// room to align them.
template <int NX>
constexpr int wgmma_smem() { return 2 * (V4_TILE + 2 * NX * 128) + 1024; }

// sw128 is the byte offset of 16-byte chunk c of row r in a swizzled tile.
__device__ __forceinline__ uint32_t sw128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// desc128 is wgmma's shared-memory matrix descriptor of a K-major swizzled
// tile at shared address a: start address >> 4 (bits 0–13), leading byte
// offset 16 >> 4 (16–29; unused with this swizzle), stride byte offset
// 1,024 >> 4 between 8-row atoms (32–45), swizzle mode 1 = 128 bytes (62–63).
// Moving 16 columns along K is a = tile + 32 bytes.
__device__ __forceinline__ uint64_t desc128(uint32_t a) {
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

// wgmma_n<N>: d[64 weight rows × N x rows] += A·B, A (weights) and B (x)
// K-major from shared memory by descriptor. Thread (warp w, lane l) of the
// warpgroup holds d[4i + j]: weight row 16w + l/4 + 8·(j/2), x row
// 8i + 2·(l%4) + j%2.
template <int N>
__device__ __forceinline__ void wgmma_n(float (&d)[N / 2], uint64_t a, uint64_t b);

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define V4_BUILT 1
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <>
__device__ __forceinline__ void wgmma_n<24>(float (&d)[12], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %14, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n24k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11}, "
      "%12, %13, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_n<32>(float (&d)[16], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
      "%16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_n<64>(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_n<128>(float (&d)[64], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1)); // scale-d 1: d += A·B (d starts at zero)
}
#else
#define V4_BUILT 0
#endif

// V4Raw is one thread's code loads for a step: half a block (32 weights) of
// weight row threadIdx.x / 2 and its scale's sources.
struct V4Raw {
  uint4 cw;
  uint32_t q;
  float n;
};

// gemm_wgmma<NX>: grid (⌈N/128⌉, ⌈M/NX⌉ · splits), 256 threads (two
// warpgroups), wgmma_smem<NX>() bytes of dynamic shared memory; xh, xl: x's
// bf16 planes [M][K]. Block (b, y) takes weight rows 128b …, x rows NX·(y /
// splits) … and steps [sp·S/splits, (sp+1)·S/splits) of K's S, sp = y %
// splits (splits ≤ S: never empty), and writes its sums to out[sp][M][N]
// (splits 1: out is C itself; else reduce_splits adds the splits).
template <int NX>
__global__ void __launch_bounds__(256, 2) gemm_wgmma(W4 w, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                     float* __restrict__ out, int M, int splits) {
#if V4_BUILT
  constexpr int XT = NX * 128, STAGE = V4_TILE + 2 * XT; // bytes: an x plane's tile, a stage (multiples of 1,024)
  extern __shared__ __align__(16) uint8_t smraw[];
  __shared__ float code[256];
  const uint32_t sbase = ((uint32_t)__cvta_generic_to_shared(smraw) + 1023) & ~1023u; // 1,024-byte aligned stages
  uint8_t* sgen = smraw + (sbase - (uint32_t)__cvta_generic_to_shared(smraw));
  const int K = w.K, N = w.N, nblk = K / 64, n0 = blockIdx.x * 128;
  const int m0 = NX * (blockIdx.y / splits), sp = blockIdx.y % splits, rows = min(NX, M - m0);
  const int kb0 = sp * nblk / splits, kb1 = (sp + 1) * nblk / splits;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1; // this thread's weight row and half block
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  auto load_raw = [&](V4Raw& r, int kb) {
    const int n = n0 + row;
    r.cw = make_uint4(0, 0, 0, 0);
    r.q = 0;
    r.n = 0.0f;
    if (n < N) {
      const unsigned b = (unsigned)n * nblk + kb;
      r.cw = __ldg((const uint4*)(w.codes + (size_t)n * (K / 2) + 32 * kb + 16 * h));
      r.q = __ldg(w.qabsmax + b);
      r.n = __ldg(w.nested + (b >> 8));
    }
  };
  auto load_x = [&](int s, int kb) { // x's two [NX][64] tiles of step kb into stage s, by cp.async
    for (int ch = threadIdx.x; ch < NX * 8; ch += 256) {
      const int r = ch >> 3, cc = ch & 7;
      const size_t src = (size_t)(m0 + min(r, rows - 1)) * K + 64 * kb + 8 * cc;
      cp_async16(sgen + s * STAGE + V4_TILE + sw128(r, cc), xh + src, r < rows);
      cp_async16(sgen + s * STAGE + V4_TILE + XT + sw128(r, cc), xl + src, r < rows);
    }
    cp_async_commit();
  };
  auto store_w = [&](int s, const V4Raw& r) { // the thread's 32 weights, dequantised, into stage s
    uint32_t o[16];
    dequant32(r.cw, __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset), o); // rows past N: zero codes, stored harmlessly
#pragma unroll
    for (int i = 0; i < 4; i++) *(uint4*)(sgen + s * STAGE + sw128(row, 4 * h + i)) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
  };
  float acc[NX / 2];
#pragma unroll
  for (int i = 0; i < NX / 2; i++) acc[i] = 0.0f;
  V4Raw r;
  load_raw(r, kb0);
  load_x(0, kb0);
  __syncthreads(); // code[] is written
  store_w(0, r);
  if (kb0 + 1 < kb1) load_raw(r, kb0 + 1);
  cp_async_wait<0>();
  fence_proxy_async(); // this thread's shared-memory writes are visible to the tensor cores' reads
  __syncthreads();
  for (int kb = kb0; kb < kb1; kb++) {
    const int s = (kb - kb0) & 1;
    const uint32_t wa = sbase + s * STAGE + wg * 64 * 128, xa = sbase + s * STAGE + V4_TILE;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      wgmma_n<NX>(acc, desc128(wa + 32 * ks), desc128(xa + 32 * ks));
      wgmma_n<NX>(acc, desc128(wa + 32 * ks), desc128(xa + XT + 32 * ks));
    }
    wgmma_commit();
    if (kb + 1 < kb1) { // the next step into the other stage while the MMAs run
      load_x(s ^ 1, kb + 1);
      store_w(s ^ 1, r);
      if (kb + 2 < kb1) load_raw(r, kb + 2);
    }
    wgmma_wait0();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads(); // stage s is free, stage s ^ 1 is in
  }
  float* o = out + (size_t)sp * M * N;
#pragma unroll
  for (int i = 0; i < NX / 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = 8 * i + 2 * (lane & 3) + (j & 1), n = n0 + 64 * wg + 16 * warp + (lane >> 2) + 8 * (j >> 1);
      if (m < rows && n < N) o[(size_t)(m0 + m) * N + n] = acc[4 * i + j];
    }
#endif
}

// reduce_splits: c[m][n] = Σ_s ws[s][m][n], in split order.
__global__ void reduce_splits(const float* __restrict__ ws, float* __restrict__ c, int MN, int splits) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= MN) return;
  float s = 0.0f;
  for (int p = 0; p < splits; p++) s += ws[(size_t)p * MN + i];
  c[i] = s;
}

// v4_probe reports whether this build has v4/v5 (sm_90a).
__global__ void v4_probe(int* out) { *out = V4_BUILT; }
