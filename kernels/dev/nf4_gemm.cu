// nf4_gemm.cu — standalone development benchmark of the prefill matrix
// product (issue 12: prefill ≥ 20,000 tok/s; llm.c dev/cuda style): C[M, N] =
// X[M, K]·W[N, K]ᵀ for many rows (M = 512 … 2,048 tokens), W bitsandbytes NF4
// with double quantisation, dequantised exactly as bitsandbytes (bf16(NF4[c]·s),
// s = fp32(fp32(code[q]·nested) + offset)), X fp32 entering the MMAs as two
// bf16 parts (hi + lo, as the engine's batch kernels: qwen's
// TestActivationSplit bounds what that moves). Checked against a float64 CPU
// reference on sampled outputs (every output checked for being written, the
// output poisoned first), timed with events over rotating weight copies ≥ 4×
// the L2. Build and run on the GPU machine:
//
//   BENCHES=nf4_gemm kernels/dev/run.sh
//
// Why: the engine's batch kernels (mmas_nf4) take 64 rows a launch, so a
// prefill of 1,280 tokens reads and dequantises every weight 20 times and runs
// at the decode rate of batch 64 (~8,000 tok/s at the 3B shape, H200). A tiled
// GEMM dequantises each weight once per BM rows into shared memory, and the
// tensor cores reuse it BM/8 times.
//
// Versions:
//   v1  block tile BM x-rows × 128 weight rows, K in steps of 64 (one NF4
//       block a weight row): each step the block dequantises its 128 × 64
//       weights into shared memory as bf16 (a thread a half-block: the
//       per-block table, 8 prmt for 4 weights) and splits x's BM × 64 into
//       hi and lo bf16 planes; 8 warps as 2 (x rows) × 4 (32 weight rows
//       each), A and B fragments by ldmatrix, two MMAs (hi, lo) a fragment.
//   v2  v1 with the next step's codes, scales and x loaded into registers
//       while this step's MMAs run (one barrier pair a step, latency hidden).
//       H200, fifth session: gate+up M 1,280 829 µs (278 TFLOP/s counting both
//       parts), down 529, q+k+v 129, o 104 (BM 128 slower everywhere).
//   v3  dequantise once into a bf16 scratch, x split into two bf16 planes,
//       then a dense multistage GEMM (below): the table lookups out of the
//       GEMM's loop.
//   v4  wgmma (sm_90a; `run.sh` builds for it): x split once into two bf16
//       planes (split_x), then a block of two warpgroups takes 128 weight
//       rows × 128 x rows; each 64-column step its 256 threads dequantise the
//       weights into shared memory in wgmma's 128-byte-swizzled K-major layout
//       and cp.async x's planes beside them, and each warpgroup issues 8
//       asynchronous m64n128k16 MMAs (4 k16 × hi, lo) over its 64 weight rows
//       that run on the tensor cores while the threads dequantise the next
//       step into the other buffer. Prediction: the tensor cores become the
//       bound (the dequantisation, ~160 instructions a thread a step, hides
//       under ~1,000 cycles of MMAs a step a block): gate+up M 1,280 ≥ 2×
//       v2 (~400 µs). Written in the sixth session without a GPU left to run
//       it (nvcc 11.8 here has no sm_90a): not yet compiled by ptxas nor run.
//
//   v6  (nf4_gemm_lean.cuh) v4/v5 with the per-step address arithmetic out
//       of the loop (pointers and offsets advanced by constants, descriptors
//       the stage's plus constants), and KS = 2: 128-column steps, a thread
//       a whole 64-block. Prediction: the loop's 467 SASS instructions (v5
//       n24) → ~250; M 20 ≥ 1.5× v5 if issue-bound (Nsight: issue 56 % busy,
//       11 instructions a weight). Measured (H200): loops 467 → 243 (n24),
//       439 → 293 (n128); M 1,280 489 → 457 µs (505 TFLOP/s), M 64 43.2 →
//       40.2, M 20 34.7 → 31.3 (29.2 with 3 splits); KS 2 slower (M 20 33.9,
//       n64 47.1). Descriptors made uniform by a branch a warpgroup had ptxas
//       serialise the MMAs (C7520). M 20 stays ~30 µs whatever the loop
//       costs, as every batch kernel so far (mma.sync v7 30.6). Ablations at
//       M 20, 3 splits (gemm alone): whole 29.3 µs, without the dequantisation
//       18.5, without the MMAs 20.0, without the proxy fence 27.5; the lo
//       plane's MMAs in a second accumulator (two chains of 4) 31.2.
//
//   v7  (nf4_gemm_ws.cuh) warp-specialised: a consumer warpgroup issues the
//       MMAs, two producer warpgroups dequantise and copy x into a ring of S
//       stages through mbarriers, so that neither waits for the other each
//       step. Prediction: M 20 gate+up 29 → ≤ 15 µs (the ablations' halves
//       each ~19 µs alone, now overlapped and without the block barrier).
//
//   v5  v4 for decode batches: an x tile of 24, 32 or 64 rows (the wgmma's n)
//       and K split across blocks, partial sums added by a second launch in
//       split order. Prediction: gate+up at M 20 ≥ 3× the batch kernel
//       mmas_nf4 (37.7 µs). Written with v4, not yet run either.
//
// QUICK=1 runs gate+up alone, at M 20 and 64 (decode batches: v5, and v4's
// 128-row x tile mostly zeros) and 1,280; ONLY_M=m one of the batch sizes.
#include "common.cuh"
#include <math.h>
#include <time.h>
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

struct W4 {
  const uint8_t* codes;   // [N·K/2], bitsandbytes order (row-major, high nibble first)
  const uint8_t* qabsmax; // [N·K/64]
  const float* nested;    // [N·K/64/256 + 1]
  const float* code;      // [256] dynamic map
  float offset;
  int N, K;
};

constexpr int BN = 128, LDW = 64 + 8, LDX = 64 + 8; // weight rows a block; bf16 a shared row (+8: conflict-free ldmatrix)

template <int BM>
constexpr int gemm_smem() { return (BN * LDW + 2 * BM * LDX) * 2; }

// Raw is one thread's global loads for one step: 16 code bytes (32 weights
// of its weight row), the scale's sources, and its share of x (BM/16 float4).
template <int BM>
struct Raw {
  uint4 cw;
  uint32_t q;
  float n;
  float4 xv[BM / 16];
};

// dequant32 turns 16 code bytes (32 weights, bitsandbytes order) of a block
// with scale sc into 16 bf16x2 words, bitsandbytes' values bit for bit (the
// per-block table: 8 prmt for 4 weights).
__device__ __forceinline__ void dequant32(const uint4& cw, float sc, uint32_t (&o)[16]) {
  const Lut L = make_lut(sc);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t wd = word_of(cw, i), sel = wd & 0x77777777u, hsel = ((wd >> 1) & 0x44444444u) | 0x32103210u;
    lookup4(L, sel, hsel, o[4 * i], o[4 * i + 1]);
    lookup4(L, sel >> 16, hsel >> 16, o[4 * i + 2], o[4 * i + 3]);
  }
}

template <int BM>
__device__ __forceinline__ void load_step(Raw<BM>& r, const W4& w, const float* __restrict__ x, int M, int n0, int m0, int kb) {
  const int K = w.K, nblk = K / 64;
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1, n = n0 + row;
  r.cw = make_uint4(0, 0, 0, 0);
  r.q = 0;
  r.n = 0.0f;
  if (n < w.N) {
    const unsigned b = (unsigned)n * nblk + kb;
    r.cw = __ldg((const uint4*)(w.codes + (size_t)n * (K / 2) + 32 * kb + 16 * h));
    r.q = __ldg(w.qabsmax + b);
    r.n = __ldg(w.nested + (b >> 8));
  }
#pragma unroll
  for (int u = 0; u < BM / 16; u++) {
    const int i = threadIdx.x + 256 * u, m = m0 + i / 16, q = i % 16;
    r.xv[u] = m < M ? __ldg((const float4*)(x + (size_t)m * K + 64 * kb + 4 * q)) : make_float4(0, 0, 0, 0);
  }
}

// store_step dequantises the codes into ws [BN][LDW] and splits x into xs
// [2][BM][LDX] (hi, lo).
template <int BM>
__device__ __forceinline__ void store_step(const Raw<BM>& r, const W4& w, const float* code, uint16_t* ws, uint16_t* xs) {
  const int row = threadIdx.x >> 1, h = threadIdx.x & 1;
  uint32_t o[16];
  dequant32(r.cw, __fadd_rn(__fmul_rn(code[r.q], r.n), w.offset), o); // rows past N: garbage never stored
  uint4* d = (uint4*)(ws + row * LDW + 32 * h);
#pragma unroll
  for (int i = 0; i < 4; i++) d[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
#pragma unroll
  for (int u = 0; u < BM / 16; u++) {
    const int i = threadIdx.x + 256 * u, m = i / 16, q = i % 16;
    uint32_t h01, l01, h23, l23;
    split2(r.xv[u].x, r.xv[u].y, h01, l01);
    split2(r.xv[u].z, r.xv[u].w, h23, l23);
    *(uint2*)(xs + m * LDX + 4 * q) = make_uint2(h01, h23);
    *(uint2*)(xs + (BM + m) * LDX + 4 * q) = make_uint2(l01, l23);
  }
}

// gemm<BM, PIPE>: grid (⌈N/128⌉, ⌈M/BM⌉), 256 threads, gemm_smem<BM>() bytes
// of dynamic shared memory. PIPE (v2): the next step's loads in flight during
// this step's MMAs.
template <int BM, bool PIPE>
__global__ void __launch_bounds__(256) gemm(W4 w, const float* __restrict__ x, float* __restrict__ c, int M) {
  constexpr int WM = BM / 2, NT = WM / 8; // x rows a warp; its n-tiles of 8
  extern __shared__ __align__(16) uint16_t sm[];
  uint16_t* ws = sm;             // [BN][LDW] dequantised weights
  uint16_t* xs = sm + BN * LDW;  // [2][BM][LDX] x's hi and lo
  __shared__ float code[256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int wm = warp / 4, wn = warp % 4;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM, nblk = w.K / 64;
  for (int i = threadIdx.x; i < 256; i += 256) code[i] = w.code[i];
  float acc[2][NT][4] = {};
  Raw<BM> r;
  load_step<BM>(r, w, x, M, n0, m0, 0);
  // ldmatrix rows: A (weights) lane L → row L % 16, columns 8·(L / 16); B (x)
  // lane L → part L / 16, row L % 8, columns 8·((L / 8) % 2).
  const uint16_t* wa = ws + (wn * 32 + (lane & 15)) * LDW + 8 * (lane >> 4);
  const uint16_t* xb = xs + ((lane >> 4) * BM + wm * WM + (lane & 7)) * LDX + 8 * ((lane >> 3) & 1);
  for (int kb = 0; kb < nblk; kb++) {
    __syncthreads(); // the previous step's fragments are read (and code[] is written)
    store_step<BM>(r, w, code, ws, xs);
    __syncthreads();
    if (PIPE && kb + 1 < nblk) load_step<BM>(r, w, x, M, n0, m0, kb + 1);
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      uint32_t a[2][4];
#pragma unroll
      for (int at = 0; at < 2; at++) ldmatrix_x4(a[at], (const uint32_t*)(wa + at * 16 * LDW + 16 * ks));
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        uint32_t b[4]; // (hi, k 0-7), (hi, k 8-15), (lo, k 0-7), (lo, k 8-15)
        ldmatrix_x4(b, (const uint32_t*)(xb + nt * 8 * LDX + 16 * ks));
#pragma unroll
        for (int at = 0; at < 2; at++) {
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[0], b[1]);
          mma16816(acc[at][nt], a[at][0], a[at][1], a[at][2], a[at][3], b[2], b[3]);
        }
      }
    }
    if (!PIPE && kb + 1 < nblk) load_step<BM>(r, w, x, M, n0, m0, kb + 1);
  }
  // acc[at][nt][j]: weight row n0 + 32wn + 16at + g (j < 2; + 8 for j ≥ 2), x row m0 + wm·WM + 8nt + 2t + j % 2.
#pragma unroll
  for (int at = 0; at < 2; at++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int m = m0 + wm * WM + 8 * nt + 2 * t + (j & 1), n = n0 + wn * 32 + 16 * at + g + 8 * (j >> 1);
        if (m < M && n < w.N) c[(size_t)m * w.N + n] = acc[at][nt][j];
      }
}

#include "nf4_gemm_dense.cuh"
#include "nf4_gemm_wgmma.cuh"
#include "nf4_gemm_lean.cuh"
#include "nf4_gemm_ws.cuh"

// ---------------------------------------------------------------------------
// Host side.

int main() {
  CK(cudaMemcpyToSymbol(NF4_TABLE, NF4_HOST, sizeof NF4_HOST));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const double copy_gbs = copy_bandwidth();
  int v4 = 0, *dv4;
  CK(cudaMalloc(&dv4, 4));
  v4_probe<<<1, 1>>>(dv4);
  CK(cudaMemcpy(&v4, dv4, 4, cudaMemcpyDeviceToHost));
  printf("v4 (wgmma) %s\n\n", v4 ? "built" : "not built: needs -arch=sm_90a");
  srand(777 + (unsigned)time(nullptr));
  struct Case {
    const char* name;
    int N, K;
  } cases[] = {{"gate+up", 22016, 2048}, {"down", 2048, 11008}, {"q+k+v", 2560, 2048}, {"o", 2048, 2048}};
  std::vector<float> codemap(256);
  for (int i = 0; i < 256; i++) codemap[i] = -1.0f + 2.0f * i / 255.0f;
  const bool quick = getenv("QUICK") != nullptr;
  for (const Case& cs : cases) {
    if (quick && strcmp(cs.name, "gate+up") != 0) continue;
    const int N = cs.N, K = cs.K;
    const size_t nb = (size_t)N * K / 64, bytes = (size_t)N * K / 2 + nb + (nb / 256 + 1) * 4;
    std::vector<uint8_t> packed((size_t)N * K / 2), qa(nb);
    std::vector<float> nested(nb / 256 + 1);
    for (auto& v : packed) v = rand() & 255;
    for (auto& v : qa) v = rand() & 255;
    for (auto& v : nested) v = 0.01f + 0.02f * rand() / RAND_MAX;
    const float offset = 0.015f;
    const int copies = std::max<int>(2, (int)((4.0 * prop.l2CacheSize) / bytes) + 1);
    std::vector<W4> ws(copies);
    float *dcode, *dnest;
    CK(cudaMalloc(&dcode, 256 * 4));
    CK(cudaMemcpy(dcode, codemap.data(), 256 * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dnest, nested.size() * 4));
    CK(cudaMemcpy(dnest, nested.data(), nested.size() * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < copies; i++) {
      uint8_t *dc, *dq;
      CK(cudaMalloc(&dc, packed.size()));
      CK(cudaMemcpy(dc, packed.data(), packed.size(), cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dq, nb));
      CK(cudaMemcpy(dq, qa.data(), nb, cudaMemcpyHostToDevice));
      ws[i] = W4{dc, dq, dnest, dcode, offset, N, K};
    }
    auto weight = [&](size_t n, size_t k) { // bitsandbytes' dequantisation, as the kernel computes it
      const size_t e = n * K + k, b = e / 64;
      const float sc = codemap[qa[b]] * nested[b / 256] + offset; // fp32 multiply, then fp32 add
      const uint8_t byte = packed[e / 2];
      return bf16_round(NF4_HOST[(e & 1) ? (byte & 15) : (byte >> 4)] * sc);
    };
    for (int M : {20, 64, 512, 1280, 2048}) {
      if (quick ? M == 512 || M == 2048 : M < 512) continue; // QUICK: decode batches 20 and 64 too (v4 as a batch kernel)
      if (getenv("ONLY_M") && M != atoi(getenv("ONLY_M"))) continue; // one batch size (for ncu)
      std::vector<float> x((size_t)M * K);
      for (auto& v : x) v = (float)rand() / RAND_MAX * 2 - 1;
      // Sampled outputs of the float64 reference (and Σ|w·x| for the bound).
      const int S = 1024;
      std::vector<int> sm(S), sn(S);
      std::vector<double> ref(S), mag(S);
      for (int i = 0; i < S; i++) sm[i] = rand() % M, sn[i] = rand() % N;
      {
        std::vector<std::thread> th;
        const int P = std::max(1u, std::thread::hardware_concurrency());
        for (int p = 0; p < P; p++)
          th.emplace_back([&, p] {
            for (int i = p; i < S; i += P) {
              double s = 0, a = 0;
              for (int k = 0; k < K; k++) {
                const double v = (double)weight(sn[i], k) * x[(size_t)sm[i] * K + k];
                s += v;
                a += fabs(v);
              }
              ref[i] = s;
              mag[i] = a;
            }
          });
        for (auto& t : th) t.join();
      }
      float *dx, *dc;
      uint16_t *wbf, *xh, *xl; // v3's scratch: the weights as bf16, x's two planes
      CK(cudaMalloc(&wbf, (size_t)N * K * 2));
      CK(cudaMalloc(&xh, x.size() * 2));
      CK(cudaMalloc(&xl, x.size() * 2));
      CK(cudaMalloc(&dx, x.size() * 4));
      CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dc, (size_t)M * N * 4));
      std::vector<float> out((size_t)M * N);
      printf("%s N %d K %d M %d (weights %.1f MB, %d copies; %.1f GFLOP with two parts)\n", cs.name, N, K, M, bytes / 1e6, copies,
             4.0 * M * N * K / 1e9);
      printf("  %-22s %9s %9s %7s %9s %10s\n", "version", "µs", "GB/s", "% copy", "TFLOP/s", "max rel err");
      // check runs launch(copy 0) once on a poisoned output and returns its
      // worst relative error on the sampled outputs (∞ if any is unwritten).
      auto check = [&](auto launch) {
        CK(cudaMemset(dc, 0xff, (size_t)M * N * 4)); // NaN: unwritten outputs show
        launch(0);
        CK(cudaGetLastError());
        CK(cudaMemcpy(out.data(), dc, out.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (float v : out)
          if (std::isnan(v)) worst = INFINITY;
        for (int i = 0; i < S; i++) worst = std::max(worst, fabs(out[(size_t)sm[i] * N + sn[i]] - ref[i]) / std::max(mag[i], 1e-30));
        return worst;
      };
      auto time_us = [&](auto launch) { return rotating_us(launch, copies, 5); };
      auto tflops = [&](double us) { return 4.0 * M * N * K / (us * 1e-6) / 1e12; };
      auto report = [&](const char* name, double us, double worst) {
        const double gbs = bytes / (us * 1e-6) / 1e9;
        printf("  %-22s %9.1f %9.0f %6.1f%% %9.1f %10.2g%s", name, us, gbs, 100 * gbs / copy_gbs, tflops(us), worst, worst > 2e-5 ? "  WRONG" : "");
      };
      auto run = [&](auto kern, int BM, const char* name) {
        const int smem = BM == 64 ? gemm_smem<64>() : gemm_smem<128>();
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
        auto launch = [&](int i) { kern<<<grid, 256, smem>>>(ws[i], dx, dc, M); };
        const double worst = check(launch);
        report(name, time_us(launch), worst);
        printf("\n");
      };
      run(gemm<64, false>, 64, "v1 BM 64");
      run(gemm<64, true>, 64, "v2 BM 64");
      run(gemm<128, true>, 128, "v2 BM 128");
      // v3: dequant + split + gemm_bf16 (whole), and gemm_bf16 alone.
      auto run3 = [&](auto kern, int smem, const char* name) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((M + G_BM - 1) / G_BM, (N + G_BN - 1) / G_BN);
        const size_t n32 = (size_t)N * K / 32, n4 = (size_t)M * K / 4;
        auto gemm_only = [&](int) { kern<<<grid, 256, smem>>>(wbf, xh, xl, dc, M, N, K); };
        auto whole = [&](int i) {
          dequant_bf16<<<(unsigned)((n32 + 255) / 256), 256>>>(ws[i], wbf);
          split_x<<<(unsigned)((n4 + 255) / 256), 256>>>(dx, xh, xl, n4);
          gemm_only(i);
        };
        const double worst = check(whole);
        report(name, time_us(whole), worst);
        const double us = time_us(gemm_only);
        printf("   (gemm_bf16 alone %.1f µs, %.1f TFLOP/s)\n", us, tflops(us));
      };
      run3(gemm_bf16<3>, gemm3_smem<3>(), "v3 stages 3");
      run3(gemm_bf16<4>, gemm3_smem<4>(), "v3 stages 4");
      if (v4) { // v4 (x tiles of 128 rows) and, for decode batches, v5 (one x tile of 24–64 rows, K split across blocks, reduce_splits)
        auto run4 = [&](auto kern, int nx, int smem, int splits, const char* name, int threads = 256) {
          CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
          const dim3 grid((N + 127) / 128, (M + nx - 1) / nx * splits);
          float* wsp = dc;
          if (splits > 1) CK(cudaMalloc(&wsp, (size_t)splits * M * N * 4));
          const size_t n4 = (size_t)M * K / 4;
          auto gemm_only = [&](int i) { kern<<<grid, threads, smem>>>(ws[i], xh, xl, wsp, M, splits); };
          auto whole = [&](int i) {
            split_x<<<(unsigned)((n4 + 255) / 256), 256>>>(dx, xh, xl, n4);
            gemm_only(i);
            if (splits > 1) reduce_splits<<<(M * N + 255) / 256, 256>>>(wsp, dc, M * N, splits);
          };
          const double worst = check(whole);
          report(name, time_us(whole), worst);
          const double us = time_us(gemm_only);
          printf("   (splits %d; gemm_wgmma alone %.1f µs, %.1f TFLOP/s)\n", splits, us, tflops(us));
          if (splits > 1) cudaFree(wsp);
        };
        if (M <= 64) { // about two blocks an SM
          const int nb = (N + 127) / 128, splits = std::max(1, std::min(K / 64, (2 * prop.multiProcessorCount + nb - 1) / nb));
          if (M <= 24) run4(gemm_wgmma<24>, 24, wgmma_smem<24>(), splits, "v5 wgmma n24");
          if (M <= 32) run4(gemm_wgmma<32>, 32, wgmma_smem<32>(), splits, "v5 wgmma n32");
          run4(gemm_wgmma<64>, 64, wgmma_smem<64>(), splits, "v5 wgmma n64");
          const int splits2 = std::max(1, std::min(K / 128, (2 * prop.multiProcessorCount + nb - 1) / nb));
          if (M <= 24) {
            run4(gemm_lean<24, 1>, 24, lean_smem<24, 1>(), splits, "v6 lean n24");
            run4(gemm_lean<24, 1>, 24, lean_smem<24, 1>(), 3, "v6 lean n24 splits 3");
            run4(gemm_lean<24, 1>, 24, lean_smem<24, 1>(), 4, "v6 lean n24 splits 4");
            run4(gemm_lean<24, 1, LEAN_ACC2>, 24, lean_smem<24, 1>(), 3, "v6 n24 s3 acc2");
            run4(gemm_lean<24, 1, LEAN_NO_DEQUANT>, 24, lean_smem<24, 1>(), 3, "ablate: no dequant");
            run4(gemm_lean<24, 1, LEAN_NO_MMA>, 24, lean_smem<24, 1>(), 3, "ablate: no MMA");
            run4(gemm_lean<24, 1, LEAN_NO_FENCE>, 24, lean_smem<24, 1>(), 3, "ablate: no fence");
            for (int sp : {3, 4}) // x resident where the block's steps fit in shared memory
              if (lean_xall_smem<24>((K / 64 + sp - 1) / sp) <= (int)prop.sharedMemPerBlockOptin)
                run4(gemm_lean<24, 1, LEAN_XALL>, 24, lean_xall_smem<24>((K / 64 + sp - 1) / sp), sp, sp == 3 ? "v6 n24 s3 x resident" : "v6 n24 s4 x resident");
            run4(gemm_lean<24, 2>, 24, lean_smem<24, 2>(), splits2, "v6 lean n24 KS 2");
          }
          if (M <= 24) {
            run4(gemm_ws<24, 4>, 24, ws_smem<24, 4>(), 3, "v7 ws n24 S4 s3", 384);
            run4(gemm_ws<24, 6>, 24, ws_smem<24, 6>(), 3, "v7 ws n24 S6 s3", 384);
            run4(gemm_ws<24, 6>, 24, ws_smem<24, 6>(), 4, "v7 ws n24 S6 s4", 384);
          }
          run4(gemm_ws<64, 4>, 64, ws_smem<64, 4>(), 3, "v7 ws n64 S4 s3", 384);
          run4(gemm_lean<64, 1>, 64, lean_smem<64, 1>(), splits, "v6 lean n64");
          run4(gemm_lean<64, 2>, 64, lean_smem<64, 2>(), splits2, "v6 lean n64 KS 2");
        }
        run4(gemm_lean<128, 1>, 128, lean_smem<128, 1>(), 1, "v6 lean n128");
        run4(gemm_wgmma<128>, 128, wgmma_smem<128>(), 1, "v4 wgmma");
      }
      cudaFree(dx);
      cudaFree(dc);
      cudaFree(wbf);
      cudaFree(xh);
      cudaFree(xl);
    }
    for (auto& w : ws) {
      cudaFree((void*)w.codes);
      cudaFree((void*)w.qabsmax);
    }
    cudaFree(dcode);
    cudaFree(dnest);
    printf("\n");
  }
  return 0;
}
