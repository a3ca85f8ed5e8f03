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
// Written in the fourth session after its device time was spent: not yet run.
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
  const Lut L = make_lut(__fadd_rn(__fmul_rn(code[r.q], r.n), w.offset)); // rows past N: garbage never stored
  uint32_t o[16];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t wd = word_of(r.cw, i), sel = wd & 0x77777777u, hsel = ((wd >> 1) & 0x44444444u) | 0x32103210u;
    lookup4(L, sel, hsel, o[4 * i], o[4 * i + 1]);
    lookup4(L, sel >> 16, hsel >> 16, o[4 * i + 2], o[4 * i + 3]);
  }
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

// ---------------------------------------------------------------------------
// Host side.

int main() {
  CK(cudaMemcpyToSymbol(NF4_TABLE, NF4_HOST, sizeof NF4_HOST));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const double copy_gbs = copy_bandwidth();
  printf("\n");
  srand(777 + (unsigned)time(nullptr));
  struct Case {
    const char* name;
    int N, K;
  } cases[] = {{"gate+up", 22016, 2048}, {"down", 2048, 11008}, {"q+k+v", 2560, 2048}, {"o", 2048, 2048}};
  std::vector<float> codemap(256);
  for (int i = 0; i < 256; i++) codemap[i] = -1.0f + 2.0f * i / 255.0f;
  for (const Case& cs : cases) {
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
    for (int M : {512, 1280, 2048}) {
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
      CK(cudaMalloc(&dx, x.size() * 4));
      CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dc, (size_t)M * N * 4));
      std::vector<float> out((size_t)M * N);
      printf("%s N %d K %d M %d (weights %.1f MB, %d copies; %.1f GFLOP with two parts)\n", cs.name, N, K, M, bytes / 1e6, copies,
             4.0 * M * N * K / 1e9);
      printf("  %-22s %9s %9s %7s %9s %10s\n", "version", "µs", "GB/s", "% copy", "TFLOP/s", "max rel err");
      auto run = [&](auto kern, int BM, const char* name) {
        const int smem = BM == 64 ? gemm_smem<64>() : gemm_smem<128>();
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
        CK(cudaMemset(dc, 0xff, (size_t)M * N * 4)); // NaN: unwritten outputs show
        kern<<<grid, 256, smem>>>(ws[0], dx, dc, M);
        CK(cudaGetLastError());
        CK(cudaMemcpy(out.data(), dc, out.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (float v : out)
          if (std::isnan(v)) worst = INFINITY;
        for (int i = 0; i < S; i++) worst = std::max(worst, fabs(out[(size_t)sm[i] * N + sn[i]] - ref[i]) / std::max(mag[i], 1e-30));
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        for (int i = 0; i < copies; i++) kern<<<grid, 256, smem>>>(ws[i], dx, dc, M);
        const int reps = 5 * copies;
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) kern<<<grid, 256, smem>>>(ws[i % copies], dx, dc, M);
        cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1));
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        const double us = ms * 1000 / reps, gbs = bytes / (us * 1e-6) / 1e9;
        printf("  %-22s %9.1f %9.0f %6.1f%% %9.1f %10.2g%s\n", name, us, gbs, 100 * gbs / copy_gbs, 4.0 * M * N * K / (us * 1e-6) / 1e12, worst,
               worst > 2e-5 ? "  WRONG" : "");
      };
      run(gemm<64, false>, 64, "v1 BM 64");
      run(gemm<128, false>, 128, "v1 BM 128");
      run(gemm<64, true>, 64, "v2 BM 64");
      run(gemm<128, true>, 128, "v2 BM 128");
      cudaFree(dx);
      cudaFree(dc);
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
