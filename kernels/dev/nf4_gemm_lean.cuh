// nf4_gemm_lean.cuh: nf4_gemm.cu's v6 — gemm_wgmma (nf4_gemm_wgmma.cuh) with
// its per-step bookkeeping taken out of the loop. Nsight Compute on v5 (M 20)
// counted 358 instructions a warp a step, 11 a weight, issue 56 % busy; its
// SASS loop has 467 instructions of which 72 PRMT + 17 FMUL + 8 F2FP are the
// dequantisation and ~210 IMAD/SHF/LOP3/IADD3 the addresses recomputed every
// step (sw128 of each store and copy, the codes' and scales' offsets, 16
// descriptors). Here every address is a pointer or offset set up once and
// advanced by a constant; the descriptors are the stage's plus constants;
// and KS
// = 2 makes a step 128 columns, a thread a whole 64-block (its table built
// once for 64 weights, not twice for two halves).
//
// gemm_lean<NX, KS>: grid (⌈N/128⌉, ⌈M/NX⌉ · splits), 256 threads, lean_smem
// bytes. Stage layout: KS weight tiles [128][64] bf16, then KS x-hi tiles
// [NX][64], then KS x-lo tiles, each 128-byte swizzled and 1,024-aligned.
// Requires K % (64·KS) == 0. Same outputs as gemm_wgmma.
#pragma once

template <int NX, int KS>
constexpr int lean_smem() { return 2 * KS * (V4_TILE + 2 * NX * 128) + 1024; }

#if V4_BUILT
__device__ __forceinline__ void cp_async16s(uint32_t saddr, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(valid ? 16 : 0));
}

// lean_mmas issues one step's MMAs of a warpgroup: A rows at descriptor a
// (+1,024 a weight tile: 16,384 bytes), x's planes at b (+XT/16 a tile, the
// lo plane KS tiles further), k16 slices 32 bytes (+2) apart.
// acc2: the lo plane's products (LEAN_ACC2: two chains of 4 MMAs a step
// instead of one of 8), else acc itself.
template <int NX, int KS>
__device__ __forceinline__ void lean_mmas(float (&acc)[NX / 2], float (&acc2)[NX / 2], uint64_t a, uint64_t b) {
  constexpr int XT16 = NX * 128 / 16;
#pragma unroll
  for (int j = 0; j < KS; j++)
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      wgmma_n<NX>(acc, a + 1024 * j + 2 * ks, b + XT16 * j + 2 * ks);
      wgmma_n<NX>(acc2, a + 1024 * j + 2 * ks, b + XT16 * (KS + j) + 2 * ks);
    }
}
#endif

// MODE: LEAN_PLAIN; LEAN_ACC2 (see lean_mmas); two ablations that time a
// part of the loop and leave the output wrong: LEAN_NO_DEQUANT (the weights
// dequantised into the stages once, the MMAs run on them every step),
// LEAN_NO_MMA (the MMAs, their wait and the fence left out), and
// LEAN_NO_FENCE (the proxy fence a step left out: a race, for its cost);
// and LEAN_XALL (KS 1): x's tiles of all the block's steps copied once before
// the loop (after the two weight stages; lean_xall_smem bytes), no copy or
// wait on x in the loop.
enum { LEAN_PLAIN, LEAN_ACC2, LEAN_NO_DEQUANT, LEAN_NO_MMA, LEAN_NO_FENCE, LEAN_XALL };

// lean_xall_smem: LEAN_XALL's shared memory for blocks of up to steps steps.
template <int NX>
constexpr int lean_xall_smem(int steps) { return 2 * V4_TILE + steps * 2 * NX * 128 + 1024; }

template <int NX, int KS, int MODE = LEAN_PLAIN>
__global__ void __launch_bounds__(256, 2) gemm_lean(W4 w, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                    float* __restrict__ out, int M, int splits) {
#if V4_BUILT
  constexpr int XT = NX * 128, STAGE = KS * (V4_TILE + 2 * XT), XCH = NX * 8 * KS, XPT = (XCH + 255) / 256;
  extern __shared__ __align__(16) uint8_t smraw[];
  __shared__ float code[256];
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(smraw), sbase = (sraw + 1023) & ~1023u;
  uint8_t* sgen = smraw + (sbase - sraw);
  const int K = w.K, N = w.N, nblk = K / 64, nsteps = nblk / KS, n0 = blockIdx.x * 128;
  const int m0 = NX * (blockIdx.y / splits), sp = blockIdx.y % splits, rows = min(NX, M - m0);
  const int st0 = sp * nsteps / splits, st1 = (sp + 1) * nsteps / splits;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1;
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  // The thread's weights: KS = 1, half h of each step's block; KS = 2,
  // block 2·step + h whole. Rows past N read row N − 1, stored as zeros.
  const int n = min(n0 + row, N - 1);
  const bool wlive = n0 + row < N;
  const uint4* wp = (const uint4*)(w.codes + (size_t)n * (K / 2)) + 2 * KS * st0 + (KS == 1 ? h : 2 * h);
  unsigned blk = (unsigned)n * nblk + KS * st0 + (KS == 1 ? 0 : h); // the block's index, for its scale
  uint32_t soff[4 * KS];                                             // the thread's 16-byte chunks in a weight stage
#pragma unroll
  for (int i = 0; i < 4 * KS; i++) soff[i] = KS == 1 ? sw128(row, 4 * h + i) : h * V4_TILE + sw128(row, i);
  // x: chunk c = threadIdx.x + 256·i of a step: tile c / (NX·8), row, 16-byte column.
  int xsrc[XPT];
  uint32_t xdst[XPT];
  bool xon[XPT], xok[XPT];
#pragma unroll
  for (int i = 0; i < XPT; i++) {
    const int c = threadIdx.x + 256 * i, t = c / (NX * 8), r = (c >> 3) % NX, cc = c & 7;
    xon[i] = c < XCH;
    xok[i] = r < rows;
    xsrc[i] = (m0 + min(r, rows - 1)) * K + 64 * t + 8 * cc;
    xdst[i] = KS * V4_TILE + t * XT + sw128(r, cc);
  }
  struct Raw {
    uint4 cw[KS];
    uint32_t q;
    float n;
  };
  auto load_w = [&](Raw& r, int st) { // step st's codes and scale
#pragma unroll
    for (int i = 0; i < KS; i++) r.cw[i] = __ldg(wp + 2 * KS * (st - st0) + i);
    const unsigned b = blk + KS * (st - st0);
    r.q = __ldg(w.qabsmax + b);
    r.n = __ldg(w.nested + (b >> 8));
  };
  static_assert(MODE != LEAN_XALL || KS == 1, "LEAN_XALL: 64-column steps");
  constexpr bool XALL = MODE == LEAN_XALL;
  // Where weight stage s and step st's x tiles (stage s) start.
  auto wbase = [&](int s) { return XALL ? sbase + s * V4_TILE : sbase + s * STAGE; };
  auto xbase = [&](int st, int s) { return XALL ? sbase + 2 * V4_TILE + (st - st0) * 2 * XT : sbase + s * STAGE + KS * V4_TILE; };
  auto load_x = [&](int s, int st) {
    const int off = 64 * KS * st;
    const uint32_t xb = xbase(st, s) - KS * V4_TILE; // xdst counts from the stage's start
#pragma unroll
    for (int i = 0; i < XPT; i++)
      if (xon[i]) {
        cp_async16s(xb + xdst[i], xh + xsrc[i] + off, xok[i]);
        cp_async16s(xb + xdst[i] + KS * XT, xl + xsrc[i] + off, xok[i]);
      }
    if (!XALL) cp_async_commit();
  };
  auto store_w = [&](int s, const Raw& r) {
    const Lut L = make_lut(wlive ? __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset) : 0.0f);
#pragma unroll
    for (int k = 0; k < KS; k++) {
      uint32_t o[16];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const uint32_t wd = word_of(r.cw[k], i), sel = wd & 0x77777777u, hsel = ((wd >> 1) & 0x44444444u) | 0x32103210u;
        lookup4(L, sel, hsel, o[4 * i], o[4 * i + 1]);
        lookup4(L, sel >> 16, hsel >> 16, o[4 * i + 2], o[4 * i + 3]);
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
        *(uint4*)(sgen + (wbase(s) - sbase) + soff[4 * k + i]) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
    }
  };
  float acc[NX / 2], acc2[NX / 2];
#pragma unroll
  for (int i = 0; i < NX / 2; i++) acc[i] = acc2[i] = 0.0f;
  Raw r;
  load_w(r, st0);
  if (XALL) {
    for (int st = st0; st < st1; st++) load_x(0, st);
    cp_async_commit();
  } else {
    load_x(0, st0);
  }
  __syncthreads(); // code[] is written
  store_w(0, r);
  if (MODE == LEAN_NO_DEQUANT) store_w(1, r);
  if (st0 + 1 < st1) load_w(r, st0 + 1);
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  const uint64_t d0 = desc128(sbase);
  for (int st = st0; st < st1; st++) {
    const int s = (st - st0) & 1;
    const uint64_t da = d0 + (wbase(s) - sbase) / 16 + wg * (64 * 128 / 16), db = d0 + (xbase(st, s) - sbase) / 16;
    if (MODE != LEAN_NO_MMA) {
      wgmma_fence();
      if (MODE == LEAN_ACC2) lean_mmas<NX, KS>(acc, acc2, da, db); // (a branch a warpgroup made ptxas serialise the MMAs: C7520)
      else lean_mmas<NX, KS>(acc, acc, da, db);
      wgmma_commit();
    }
    if (st + 1 < st1) {
      if (!XALL) load_x(s ^ 1, st + 1);
      if (MODE != LEAN_NO_DEQUANT) store_w(s ^ 1, r);
      if (st + 2 < st1) load_w(r, st + 2);
    }
    if (MODE != LEAN_NO_MMA) wgmma_wait0();
    if (!XALL) cp_async_wait<0>();
    if (MODE != LEAN_NO_MMA && MODE != LEAN_NO_FENCE) fence_proxy_async();
    __syncthreads();
  }
  float* o = out + (size_t)sp * M * N;
#pragma unroll
  for (int i = 0; i < NX / 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = 8 * i + 2 * (lane & 3) + (j & 1), nn = n0 + 64 * wg + 16 * warp + (lane >> 2) + 8 * (j >> 1);
      if (m < rows && nn < N) o[(size_t)(m0 + m) * N + nn] = MODE == LEAN_ACC2 ? acc[4 * i + j] + acc2[4 * i + j] : acc[4 * i + j];
    }
#endif
}
