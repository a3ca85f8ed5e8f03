// nf4_mma_batch.cu — standalone development benchmark of the batched NF4
// matrix product on the tensor cores (llm.c dev/cuda style; issue 12):
// versions side by side, each checked against a float64 CPU reference on fresh
// random inputs with the output poisoned, then timed with events over rotating
// weight copies (≥ 4× the L2), reported in µs, GB/s of weights and % of the
// device-to-device copy bandwidth measured in the same run. Build and run on
// the GPU machine (kernels/dev/run.sh does both, with SASS and ptxas logs):
//
//   nvcc -O3 -arch=sm_90 -o nf4_mma_batch kernels/dev/nf4_mma_batch.cu && ./nf4_mma_batch
//
// The product: y[m, n] = Σ_k W[n, k]·x[m, k] for M batch rows, W in
// bitsandbytes NF4 with double quantisation, dequantised exactly as
// bitsandbytes: W[n, k] = bf16(NF4[c]·s), s = fp32(fp32(code[q]·nested) +
// offset). x is fp32 and enters the MMAs as three bf16 parts (hi + mid + lo),
// so the product keeps fp32 accuracy. Codes are stored as the engine stores
// them for its MMA kernels until v10 (the mmaNF4 layout, since removed): within each
// (row, 64-block), thread t of a quad finds its 8 bytes at 8t; v7 reads
// nf4_lut's layout (lutNF4), which the engine now uses for both.
//
// The versions and what each measured: nf4_mma_batch.cuh (v7 and v8 in
// nf4_mma_batch_lut.cuh).
#include "nf4_mma_batch.cuh"
#include "nf4_mma_batch_lut.cuh"
#include <math.h>
#include <string.h>
#include <time.h>
#include <string>
#include <thread>
#include <algorithm>
#include <vector>

// ---------------------------------------------------------------------------
// Host side.

struct Case {
  const char* name;
  int N, K;
};

struct Run {
  std::string name;
  float us;
  double err, bound; // max error relative to Σ|w·x|, and what the version may have
};

int main() {
  CK(cudaMemcpyToSymbol(NF4_TABLE, NF4_HOST, sizeof NF4_HOST));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int SMs = prop.multiProcessorCount;
  printf("%s, %d SMs, L2 %d MB\n", prop.name, SMs, prop.l2CacheSize >> 20);
  const double copy_gbs = copy_bandwidth();
  printf("\n");
  srand(12345 + (unsigned)time(nullptr));
  const Case cases[] = {{"gate+up", 22016, 2048}, {"down", 2048, 11008}, {"q+k+v", 2560, 2048}};
  const int Ms[] = {20, 64, 128};
  std::vector<float> codemap(256);
  for (int i = 0; i < 256; i++) codemap[i] = -1.0f + 2.0f * i / 255.0f; // a sorted map in [-1, 1]
  // ONLY=name and BATCH=M restrict the run (for ncu).
  const char* only = getenv("ONLY");
  const int batch = getenv("BATCH") ? atoi(getenv("BATCH")) : 0;
  for (const Case& c : cases) {
    if (only && strcmp(only, c.name)) continue;
    const int N = c.N, K = c.K;
    const size_t nb = (size_t)N * K / 64, bytes = (size_t)N * K / 2 + nb + (nb / 256 + 1) * 4;
    // Weights: random codes (bnb order), permuted to the mma layout.
    std::vector<uint8_t> packed((size_t)N * K / 2), perm(packed.size()), qa(nb);
    std::vector<float> nested(nb / 256 + 1);
    for (auto& v : packed) v = rand() & 255;
    for (auto& v : qa) v = rand() & 255;
    for (auto& v : nested) v = 0.01f + 0.02f * rand() / RAND_MAX;
    const float offset = 0.015f;
    for (size_t base = 0; base < packed.size(); base += 32)
      for (int qd = 0; qd < 4; qd++)
        for (int s = 0; s < 4; s++) {
          perm[base + 8 * qd + 2 * s] = packed[base + 8 * s + qd];
          perm[base + 8 * qd + 2 * s + 1] = packed[base + 8 * s + qd + 4];
        }
    // v7's layout (nf4_lut's, lutNF4 in kernels/layout.go): per row and
    // 256-column step, block t's first 16 bytes at 16t, its second at 64 + 16t.
    std::vector<uint8_t> lut(packed.size());
    for (size_t r = 0; r < (size_t)N; r++)
      for (int st = 0; st < K / 256; st++)
        for (int t = 0; t < 4; t++)
          for (int b = 0; b < 32; b++) {
            const size_t src = r * K / 2 + 128 * st + 32 * t + b;
            lut[r * K / 2 + 128 * st + (b < 16 ? 16 * t + b : 64 + 16 * t + b - 16)] = packed[src];
          }
    // Rotating copies ≥ 4× the L2.
    const int copies = std::max<int>(2, (int)((4.0 * prop.l2CacheSize) / bytes) + 1);
    std::vector<Q> qs(copies);
    float *dcode, *dnest;
    CK(cudaMalloc(&dcode, 256 * 4));
    CK(cudaMemcpy(dcode, codemap.data(), 256 * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&dnest, nested.size() * 4));
    CK(cudaMemcpy(dnest, nested.data(), nested.size() * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < copies; i++) {
      uint8_t *dc, *dl, *dq;
      CK(cudaMalloc(&dc, perm.size()));
      CK(cudaMemcpy(dc, perm.data(), perm.size(), cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dl, lut.size()));
      CK(cudaMemcpy(dl, lut.data(), lut.size(), cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dq, nb));
      CK(cudaMemcpy(dq, qa.data(), nb, cudaMemcpyHostToDevice));
      qs[i] = Q{dc, dl, dq, dnest, dcode, offset, N, K};
    }
    // Dequantised weights for the reference, as the kernels compute them.
    std::vector<float> W((size_t)N * K);
    for (size_t e = 0; e < W.size(); e++) {
      const size_t b = e / 64;
      const float sm = codemap[qa[b]] * nested[b / 256]; // fp32 multiply, then fp32 add: two roundings
      const float sc = sm + offset;
      const uint8_t byte = packed[e / 2];
      const int cd = (e & 1) ? (byte & 15) : (byte >> 4);
      W[e] = bf16_round(NF4_HOST[cd] * sc);
    }
    for (int M : Ms) {
      if (batch && M != batch) continue;
      std::vector<float> x((size_t)M * K);
      for (auto& v : x) v = (float)rand() / RAND_MAX * 2 - 1;
      std::vector<double> ref((size_t)M * N), mag((size_t)M * N);
      { // float64 reference, rows of W spread over the host's cores
        std::vector<std::thread> th;
        const int P = std::max(1u, std::thread::hardware_concurrency());
        for (int p = 0; p < P; p++)
          th.emplace_back([&, p] {
            for (int n = p; n < N; n += P)
              for (int m = 0; m < M; m++) {
                double s = 0, a = 0;
                const float* w = &W[(size_t)n * K];
                const float* xr = &x[(size_t)m * K];
                for (int k = 0; k < K; k++) {
                  s += (double)w[k] * xr[k];
                  a += fabs((double)w[k] * xr[k]);
                }
                ref[(size_t)m * N + n] = s;
                mag[(size_t)m * N + n] = a;
              }
          });
        for (auto& t : th) t.join();
      }
      float *dx, *dy, *dpart;
      CK(cudaMalloc(&dx, x.size() * 4));
      CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMalloc(&dy, (size_t)M * N * 4));
      CK(cudaMalloc(&dpart, (size_t)M * N * 4 * (K / 64)));
      std::vector<float> y((size_t)M * N);
      auto check = [&]() {
        CK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (size_t i = 0; i < y.size(); i++) {
          if (std::isnan(y[i])) return (double)INFINITY; // never written (poisoned) or NaN
          worst = std::max(worst, fabs(y[i] - ref[i]) / std::max(mag[i], 1e-30));
        }
        return worst;
      };
      auto time_it = [&](auto launch) { return (float)rotating_us([&](int i) { launch(qs[i]); }, copies, 20); };
      std::vector<Run> runs;
      // v0, as the engine launches it.
      {
        const int nt = M <= 8 ? 1 : M <= 16 ? 2 : 4;
        const int units = N / 16;
        int wpp = 1;
        while (wpp * 2 <= std::min(std::min(8, K / 64), (132 * 32 + units - 1) / units)) wpp *= 2;
        int occ;
        const void* fn = nt == 1 ? (const void*)v0<1> : nt == 2 ? (const void*)v0<2> : (const void*)v0<4>;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, 256, 0));
        const int per = 8 / wpp, grid = std::min((units + per - 1) / per, std::max(1, occ) * SMs);
        auto launch = [&](const Q& q) {
          if (nt == 1) v0<1><<<grid, 256>>>(q, dx, dy, M, wpp);
          else if (nt == 2) v0<2><<<grid, 256>>>(q, dx, dy, M, wpp);
          else v0<4><<<grid, 256>>>(q, dx, dy, M, wpp);
        };
        CK(cudaMemset(dy, 0xff, y.size() * 4));
        CK(cudaMemset(dpart, 0xff, (size_t)M * N * 4 * (K / 64))); // stale partials must not pass
        launch(qs[0]);
        CK(cudaGetLastError());
        const double err = check();
        runs.push_back({"v0 engine", time_it(launch), err, 1e-5});
      }
      // v1 over WARPS × kchunk.
      auto v1 = [&](auto kern, int NT, int WARPS, int kchunk, const char* name, int P = 3) {
        const int smem = 2 * P * NT * 8 * ROWW * 4;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const int S = (K + kchunk - 1) / kchunk;
        const dim3 grid((N / 16 + WARPS - 1) / WARPS, S);
        auto launch = [&](const Q& q) {
          kern<<<grid, WARPS * 32, smem>>>(q, dx, dpart, M, kchunk);
          v1_reduce<<<(M * N + 255) / 256, 256>>>(dy, dpart, M * N, S);
        };
        CK(cudaMemset(dy, 0xff, y.size() * 4));
        CK(cudaMemset(dpart, 0xff, (size_t)M * N * 4 * (K / 64))); // stale partials must not pass
        launch(qs[0]);
        CK(cudaGetLastError());
        const double err = check();
        char nm[64];
        snprintf(nm, sizeof nm, "%s W%d k%d (%d blocks)", name, WARPS, kchunk, grid.x * grid.y);
        // Two parts: each x off by ≤ 2^-17 of itself, so ≤ 2^-17 of Σ|w·x| + fp32 sums.
        runs.push_back({nm, time_it(launch), err, P == 2 ? 2e-5 : 1e-5});
      };
      const bool all = getenv("ALL") != nullptr; // v1–v4 and v6 too
      for (int kc : {256, 512}) {
        if (kc > K || !all) continue;
        if (M <= 24) {
          v1(v1_part<3, 4, false>, 3, 4, kc, "v1");
          v1(v1_part<3, 8, false>, 3, 8, kc, "v1");
          v1(v1_part<3, 8, true>, 3, 8, kc, "v2");
          v1(v1_part<3, 8, true, 2>, 3, 8, kc, "v3", 2);
        } else if (M <= 64) {
          v1(v1_part<8, 4, false>, 8, 4, kc, "v1");
          v1(v1_part<8, 8, false>, 8, 8, kc, "v1");
          v1(v1_part<8, 8, true>, 8, 8, kc, "v2");
          v1(v1_part<8, 8, true, 2>, 8, 8, kc, "v3", 2);
        } else {
          v1(v1_part<16, 4, false>, 16, 4, kc, "v1");
          v1(v1_part<16, 8, false>, 16, 8, kc, "v1");
          v1(v1_part<16, 8, true>, 16, 8, kc, "v2");
          v1(v1_part<16, 8, true, 2>, 16, 8, kc, "v3", 2);
        }
      }
      auto v4 = [&](auto kern, int NT, int WARPS, int KC, int P) {
        const int smem = P * NT * 8 * (KC / 2 + 4) * 4;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const int S = (K + KC - 1) / KC;
        const dim3 grid((N / 16 + WARPS - 1) / WARPS, S);
        auto launch = [&](const Q& q) {
          kern<<<grid, WARPS * 32, smem>>>(q, dx, dpart, M);
          v1_reduce<<<(M * N + 255) / 256, 256>>>(dy, dpart, M * N, S);
        };
        CK(cudaMemset(dy, 0xff, y.size() * 4));
        CK(cudaMemset(dpart, 0xff, (size_t)M * N * 4 * (K / 64))); // stale partials must not pass
        launch(qs[0]);
        CK(cudaGetLastError());
        const double err = check();
        char nm[64];
        snprintf(nm, sizeof nm, "v4 P%d W%d k%d (%d blocks)", P, WARPS, KC, grid.x * grid.y);
        runs.push_back({nm, time_it(launch), err, P == 2 ? 2e-5 : 1e-5});
      };
      // persistent: a kernel whose blocks each take KC columns of K and walk
      // tiles (v5–v8), launched as one wave, and the reduce; label names it.
      auto persistent = [&](auto kern, int WARPS, int KC, int smem, const char* label, double bound) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        int occ;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, WARPS * 32, smem));
        const int S = (K + KC - 1) / KC, tiles = N / 16;
        // groups: one wave, and at most one tile a warp more than needed.
        const int groups = std::max(1, std::min((occ * SMs) / S, (tiles + WARPS - 1) / WARPS));
        const dim3 grid(groups, S);
        auto launch = [&](const Q& q) {
          kern<<<grid, WARPS * 32, smem>>>(q, dx, dpart, M);
          v1_reduce<<<(M * N + 255) / 256, 256>>>(dy, dpart, M * N, S);
        };
        CK(cudaMemset(dy, 0xff, y.size() * 4));
        CK(cudaMemset(dpart, 0xff, (size_t)M * N * 4 * (K / 64))); // stale partials must not pass
        launch(qs[0]);
        CK(cudaGetLastError());
        const double err = check();
        char nm[96];
        snprintf(nm, sizeof nm, "%s (%dx%d, occ %d)", label, groups, S, occ);
        runs.push_back({nm, time_it(launch), err, bound});
      };
      auto v5 = [&](auto kern, int NT, int WARPS, int KC, int P, const char* name = "v5") {
        char label[64];
        snprintf(label, sizeof label, "%s P%d W%d k%d", name, P, WARPS, KC);
        persistent(kern, WARPS, KC, P * NT * 8 * (KC / 2 + 4) * 4, label, P == 2 ? 2e-5 : 1e-5);
      };
      auto v7 = [&](auto kern, int NT, int WARPS, int KC) {
        char label[64];
        snprintf(label, sizeof label, "v7 W%d k%d", WARPS, KC);
        persistent(kern, WARPS, KC, KC / 16 * (16 * NT * 8 + 4) * 4, label, 2e-5);
      };
      auto v8 = [&](auto kern, int NT, int WARPS, int STAGES) {
        char label[64];
        snprintf(label, sizeof label, "v8 W%d stages %d", WARPS, STAGES);
        persistent(kern, WARPS, 256, 16 * (16 * NT * 8 + 4) * 4 + WARPS * STAGES * 2048, label, 2e-5);
      };
      if (M <= 24) {
        v8(v8_part<3, 8, 3>, 3, 8, 3);
        v8(v8_part<3, 8, 4>, 3, 8, 4);
        v8(v8_part<3, 16, 3>, 3, 16, 3);
        v8(v8_part<3, 8, 3, 3>, 3, 8, 3);
      } else if (M <= 64) {
        v8(v8_part<8, 8, 3>, 8, 8, 3);
        v8(v8_part<8, 8, 4>, 8, 8, 4);
      }
      if (M <= 24) {
        v7(v7_part<3, 8, 256>, 3, 8, 256);
        v7(v7_part<3, 8, 256, 3>, 3, 8, 256); // ≤ 80 registers: 6 warps a scheduler
        v7(v7_part<3, 8, 256, 4>, 3, 8, 256); // ≤ 64: 8 warps a scheduler
        v7(v7_part<3, 4, 256>, 3, 4, 256);
        v7(v7_part<3, 8, 512>, 3, 8, 512);
      } else if (M <= 64) {
        v7(v7_part<8, 8, 256>, 8, 8, 256);
        v7(v7_part<8, 4, 256>, 8, 4, 256);
        v7(v7_part<4, 8, 256>, 4, 8, 256); // two launches' worth: M ≤ 32 only
      } else {
        v7(v7_part<16, 8, 256>, 16, 8, 256);
      }
      if (M <= 24) {
        v5(v5_part<3, 8, 256, 2>, 3, 8, 256, 2);
        if (all) v5(v5_part<3, 8, 256, 2, true>, 3, 8, 256, 2, "v6");
        v5(v5_part<3, 16, 256, 2>, 3, 16, 256, 2);
        v5(v5_part<3, 8, 512, 2>, 3, 8, 512, 2);
        v5(v5_part<3, 16, 512, 2>, 3, 16, 512, 2);
        v5(v5_part<3, 16, 512, 3>, 3, 16, 512, 3);
      } else if (M <= 64) {
        v5(v5_part<8, 8, 256, 2>, 8, 8, 256, 2);
        if (all) v5(v5_part<8, 8, 256, 2, true>, 8, 8, 256, 2, "v6");
        v5(v5_part<8, 16, 256, 2>, 8, 16, 256, 2);
        v5(v5_part<8, 8, 512, 2>, 8, 8, 512, 2);
      } else {
        v5(v5_part<16, 8, 128, 2>, 16, 8, 128, 2);
        v5(v5_part<16, 8, 256, 2>, 16, 8, 256, 2);
      }
      if (!all) {
      } else if (M <= 24) {
        v4(v4_part<3, 4, 256, 2>, 3, 4, 256, 2);
        v4(v4_part<3, 8, 256, 2>, 3, 8, 256, 2);
        v4(v4_part<3, 4, 512, 2>, 3, 4, 512, 2);
        v4(v4_part<3, 8, 512, 2>, 3, 8, 512, 2);
        v4(v4_part<3, 8, 512, 3>, 3, 8, 512, 3);
        v4(v4_part<3, 8, 1024, 2>, 3, 8, 1024, 2);
      } else if (M <= 64) {
        v4(v4_part<8, 4, 128, 2>, 8, 4, 128, 2);
        v4(v4_part<8, 8, 128, 2>, 8, 8, 128, 2);
        v4(v4_part<8, 4, 256, 2>, 8, 4, 256, 2);
        v4(v4_part<8, 8, 256, 2>, 8, 8, 256, 2);
        v4(v4_part<8, 8, 256, 3>, 8, 8, 256, 3);
      } else {
        v4(v4_part<16, 4, 128, 2>, 16, 4, 128, 2);
        v4(v4_part<16, 8, 128, 2>, 16, 8, 128, 2);
        v4(v4_part<16, 8, 128, 3>, 16, 8, 128, 3);
      }
      printf("%s N %d K %d M %d (weights %.1f MB, %d copies)\n", c.name, N, K, M, bytes / 1e6, copies);
      printf("  %-34s %9s %9s %7s %10s\n", "version", "µs", "GB/s", "% copy", "max rel err");
      for (const Run& r : runs) {
        const double gbs = bytes / (r.us * 1e-6) / 1e9;
        printf("  %-34s %9.1f %9.0f %6.1f%% %10.2g%s\n", r.name.c_str(), r.us, gbs, 100 * gbs / copy_gbs, r.err, r.err > r.bound ? "  WRONG" : "");
      }
      cudaFree(dx);
      cudaFree(dy);
      cudaFree(dpart);
    }
    for (auto& q : qs) {
      cudaFree((void*)q.codes);
      cudaFree((void*)q.lut);
      cudaFree((void*)q.qabsmax);
    }
    cudaFree(dcode);
    cudaFree(dnest);
    printf("\n");
  }
  return 0;
}
