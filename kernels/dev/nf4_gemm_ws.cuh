// nf4_gemm_ws.cuh: nf4_gemm.cu's v7 — warp-specialised (not yet run). v6's
// ablations at M 20 showed a fixed cost in every 64-column step of the
// block-synchronous loop (its barrier a step makes the dequantisation and the
// MMAs wait for each other: 18.5 µs without the one, 20.0 without the other,
// 29.3 with both, against 5.5 at the copy rate). Here they are decoupled:
// warpgroup 0 issues the MMAs, warpgroups 1–2 (256 threads) dequantise the
// weights and copy x into a ring of S stages, up to S steps ahead, through
// mbarriers: full[s] (the 256 producers arrive after their stores and a proxy
// fence), empty[s] (the consumer arrives once a stage's MMAs are done).
//
// gemm_ws<NX, S>: grid (⌈N/128⌉, ⌈M/NX⌉ · splits), 384 threads, ws_smem<NX,
// S>() bytes; one block an SM (up to 168 registers a thread). The consumer
// holds two m64 accumulators (weight rows 0–63 and 64–127 of the block) and
// keeps one step's MMAs in flight. Same outputs as gemm_wgmma.
#pragma once

template <int NX, int S>
constexpr int ws_smem() { return S * (V4_TILE + 2 * NX * 128) + 1024; }

#if V4_BUILT
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t* b, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, unsigned parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(smem_u32(b)), "r"(parity)
                 : "memory");
}
__device__ __forceinline__ void wgmma_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
#endif

template <int NX, int S>
__global__ void __launch_bounds__(384, 1) gemm_ws(W4 w, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                  float* __restrict__ out, int M, int splits) {
#if V4_BUILT
  constexpr int XT = NX * 128, STAGE = V4_TILE + 2 * XT, XPT = (NX * 8 + 255) / 256;
  extern __shared__ __align__(16) uint8_t smraw[];
  __shared__ float code[256];
  __shared__ __align__(8) uint64_t full[S], empty[S];
  const uint32_t sraw = smem_u32(smraw), sbase = (sraw + 1023) & ~1023u;
  uint8_t* sgen = smraw + (sbase - sraw);
  const int K = w.K, N = w.N, nblk = K / 64, n0 = blockIdx.x * 128;
  const int m0 = NX * (blockIdx.y / splits), sp = blockIdx.y % splits, rows = min(NX, M - m0);
  const int kb0 = sp * nblk / splits, nsteps = (sp + 1) * nblk / splits - kb0;
  // The warpgroup, made warp-uniform for ptxas (a branch on threadIdx.x / 128
  // itself reads as divergent, and ptxas then serialises the MMAs: C7520).
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0);
  for (int i = threadIdx.x; i < 256; i += 384) code[i] = w.code[i];
  if (threadIdx.x == 0)
    for (int s = 0; s < S; s++) {
      mbar_init(&full[s], 256);
      mbar_init(&empty[s], 1);
    }
  __syncthreads();
  if (wg > 0) { // producers: thread p dequantises half h of row p / 2's block each step and copies its share of x
    const int p = threadIdx.x - 128, row = p >> 1, h = p & 1;
    const int n = min(n0 + row, N - 1);
    const bool wlive = n0 + row < N;
    const uint4* wp = (const uint4*)(w.codes + (size_t)n * (K / 2)) + 2 * kb0 + h;
    const unsigned b0 = (unsigned)n * nblk + kb0;
    uint32_t soff[4];
#pragma unroll
    for (int i = 0; i < 4; i++) soff[i] = sw128(row, 4 * h + i);
    int xsrc[XPT];
    uint32_t xdst[XPT];
    bool xon[XPT], xok[XPT];
#pragma unroll
    for (int i = 0; i < XPT; i++) {
      const int c = p + 256 * i, r = c >> 3, cc = c & 7;
      xon[i] = c < NX * 8;
      xok[i] = r < rows;
      xsrc[i] = (m0 + min(r, rows - 1)) * K + 64 * kb0 + 8 * cc;
      xdst[i] = V4_TILE + sw128(r, cc);
    }
    uint4 cw = __ldg(wp);
    uint32_t q = __ldg(w.qabsmax + b0);
    float nv = __ldg(w.nested + (b0 >> 8));
    for (int j = 0; j < nsteps; j++) {
      const int s = j % S;
      uint4 cw2 = make_uint4(0, 0, 0, 0);
      uint32_t q2 = 0;
      float nv2 = 0.0f;
      if (j + 1 < nsteps) { // the next step's codes, in flight during this one
        cw2 = __ldg(wp + 2 * (j + 1));
        q2 = __ldg(w.qabsmax + b0 + j + 1);
        nv2 = __ldg(w.nested + ((b0 + j + 1) >> 8));
      }
      uint4 xv[XPT][2];
#pragma unroll
      for (int i = 0; i < XPT; i++) {
        xv[i][0] = xv[i][1] = make_uint4(0, 0, 0, 0);
        if (xon[i] && xok[i]) {
          xv[i][0] = __ldg((const uint4*)(xh + xsrc[i] + 64 * j));
          xv[i][1] = __ldg((const uint4*)(xl + xsrc[i] + 64 * j));
        }
      }
      uint32_t o[16];
      dequant32(cw, wlive ? __fadd_rn(__fmul_rn(code[q], nv), w.offset) : 0.0f, o);
      if (j >= S) mbar_wait(&empty[s], (j / S - 1) & 1); // the consumer is done with step j − S's stage
      uint8_t* st = sgen + s * STAGE;
#pragma unroll
      for (int i = 0; i < 4; i++) *(uint4*)(st + soff[i]) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
#pragma unroll
      for (int i = 0; i < XPT; i++)
        if (xon[i]) {
          *(uint4*)(st + xdst[i]) = xv[i][0];
          *(uint4*)(st + xdst[i] + XT) = xv[i][1];
        }
      fence_proxy_async(); // the stores are visible to the tensor cores' reads
      mbar_arrive(&full[s]);
      cw = cw2, q = q2, nv = nv2;
    }
  } else { // the consumer: warpgroup 0
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float acc0[NX / 2], acc1[NX / 2]; // weight rows 0–63 and 64–127
#pragma unroll
    for (int i = 0; i < NX / 2; i++) acc0[i] = acc1[i] = 0.0f;
    const uint64_t d0 = desc128(sbase);
    for (int j = 0; j < nsteps; j++) {
      const int s = j % S;
      mbar_wait(&full[s], (j / S) & 1);
      const uint64_t da = d0 + s * (STAGE / 16), db = da + V4_TILE / 16;
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ks++) {
        wgmma_n<NX>(acc0, da + 2 * ks, db + 2 * ks);
        wgmma_n<NX>(acc0, da + 2 * ks, db + XT / 16 + 2 * ks);
        wgmma_n<NX>(acc1, da + 64 * 128 / 16 + 2 * ks, db + 2 * ks);
        wgmma_n<NX>(acc1, da + 64 * 128 / 16 + 2 * ks, db + XT / 16 + 2 * ks);
      }
      wgmma_commit();
      wgmma_wait1(); // step j − 1's MMAs are done: its stage is free
      if (j > 0 && threadIdx.x == 0) mbar_arrive(&empty[(j - 1) % S]);
    }
    wgmma_wait0();
    float* o = out + (size_t)sp * M * N;
#pragma unroll
    for (int i = 0; i < NX / 8; i++)
#pragma unroll
      for (int jj = 0; jj < 4; jj++) {
        const int m = 8 * i + 2 * (lane & 3) + (jj & 1), nn = n0 + 16 * warp + (lane >> 2) + 8 * (jj >> 1);
        if (m < rows && nn < N) o[(size_t)(m0 + m) * N + nn] = acc0[4 * i + jj];
        if (m < rows && nn + 64 < N) o[(size_t)(m0 + m) * N + nn + 64] = acc1[4 * i + jj];
      }
  }
#endif
}
