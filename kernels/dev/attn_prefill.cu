// attn_prefill.cu — standalone development benchmark of causal attention for
// prefill (issue 12: prefill ≥ 20,000 tok/s for one prompt of 2,048 tokens;
// llm.c dev/cuda style). T new tokens at positions P … P + T − 1 of one
// sequence attend to its cache's positions 0 … their own (grouped-query: query
// head h reads KV head h / (H/KVH)); fp32 throughout, as the engine's
// attention and the CPU reference. Checked against a float64 CPU reference on
// sampled (row, head) pairs, every output checked written (poisoned first);
// timed with events. Build and run on the GPU machine:
//
//   BENCHES=attn_prefill kernels/dev/run.sh
//
// Why: the engine's attention (attention.cu) is flash-decoding — a block per
// (head, row, 32 positions) — which for a 2,048-token prompt launches 2.1 M
// blocks a layer, most of them doing a few thousand flops.
//
// v1: flash attention on the CUDA cores: a block per (64 query rows, head),
// 256 threads; for each 64-position tile of K and V (up to the causal limit of
// the block's last row) S = Q·Kᵀ·scale (a thread 4 rows × 4 positions 16 apart), the
// causal mask, the online softmax (row max and sum across the 16 threads of a
// row group by shuffles), P to shared memory, then O += P·V (a thread 4 rows ×
// 8 dims, in registers); O / l at the end. Written in the fourth session after
// its device time was spent: not yet run.
#include "common.cuh"
#include <math.h>
#include <time.h>
#include <algorithm>
#include <thread>
#include <vector>

constexpr int D = 128, BQ = 64, BKV = 64, LDK = D + 4, LDP = BKV + 4;

// attn_v1: grid (⌈T/BQ⌉, H), 256 threads; q [T][H][D], k/v [P+T][KVH][D],
// o [T][H][D]; dynamic shared memory (BQ·D + BKV·LDK + BKV·D + BQ·LDP)·4.
__global__ void __launch_bounds__(256) attn_v1(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                               float* __restrict__ o, int T, int P, int H, int KVH) {
  extern __shared__ float sm[];
  float* qs = sm;               // [BQ][D], pre-scaled by 1/√D
  float* ks = qs + BQ * D;      // [BKV][LDK]
  float* vs = ks + BKV * LDK;   // [BKV][D]
  float* ps = vs + BKV * D;     // [BQ][LDP]
  const int h = blockIdx.y, g = h / (H / KVH), r0 = blockIdx.x * BQ;
  const int tid = threadIdx.x, rg = tid >> 4, cg = tid & 15; // S: rows 4rg…+3, positions cg, cg + 16, cg + 32, cg + 48 of the tile
  const int og = tid & 15;                                   // O: rows 4rg…+3, dims 8og…+7
  const float scale = 1.0f / sqrtf((float)D);
  for (int i = tid; i < BQ * D / 4; i += 256) {
    const int r = i / (D / 4), c = i % (D / 4);
    float4 x = make_float4(0, 0, 0, 0);
    if (r0 + r < T) x = *(const float4*)(q + ((size_t)(r0 + r) * H + h) * D + 4 * c);
    *(float4*)(qs + r * D + 4 * c) = make_float4(x.x * scale, x.y * scale, x.z * scale, x.w * scale);
  }
  float acc[4][8] = {}, mrow[4], lrow[4];
#pragma unroll
  for (int i = 0; i < 4; i++) mrow[i] = -INFINITY, lrow[i] = 0.0f;
  const int last = min(T, r0 + BQ) - 1 + P; // the block's last row's position: keys 0 … last
  for (int kv0 = 0; kv0 <= last; kv0 += BKV) {
    __syncthreads(); // the previous tile's K, V and P are read (and Q is written)
    for (int i = tid; i < BKV * D / 4; i += 256) {
      const int r = i / (D / 4), c = i % (D / 4), pos = kv0 + r;
      float4 kk = make_float4(0, 0, 0, 0), vv = kk;
      if (pos <= last) {
        kk = *(const float4*)(k + ((size_t)pos * KVH + g) * D + 4 * c);
        vv = *(const float4*)(v + ((size_t)pos * KVH + g) * D + 4 * c);
      }
      *(float4*)(ks + r * LDK + 4 * c) = kk;
      *(float4*)(vs + r * D + 4 * c) = vv;
    }
    __syncthreads();
    // S for rows 4rg + i, positions kv0 + cg + 16j (K rows 132 floats apart:
    // a half-warp's 16 float4 loads hit 64 different banks).
    float s[4][4] = {};
    for (int d = 0; d < D; d += 4) {
      float4 qa[4], kb[4];
#pragma unroll
      for (int i = 0; i < 4; i++) qa[i] = *(const float4*)(qs + (4 * rg + i) * D + d);
#pragma unroll
      for (int j = 0; j < 4; j++) kb[j] = *(const float4*)(ks + (cg + 16 * j) * LDK + d);
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) s[i][j] += qa[i].x * kb[j].x + qa[i].y * kb[j].y + qa[i].z * kb[j].z + qa[i].w * kb[j].w;
    }
    // Causal mask, online softmax: the 16 threads of row group rg are lanes
    // 0–15 or 16–31 of one warp.
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int pos_q = P + r0 + 4 * rg + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        if (kv0 + cg + 16 * j > pos_q) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mnew = fmaxf(mrow[i], mx);
      // A row past T (or with no key yet in this tile) keeps mnew = −inf: use 0 so that exp gives 0, not NaN.
      const float mref = mnew == -INFINITY ? 0.0f : mnew;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        s[i][j] = __expf(s[i][j] - mref);
        sum += s[i][j];
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float corr = __expf(mrow[i] - mref);
      lrow[i] = lrow[i] * corr + sum;
      mrow[i] = mnew;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[i][e] *= corr;
#pragma unroll
      for (int j = 0; j < 4; j++) ps[(4 * rg + i) * LDP + cg + 16 * j] = s[i][j];
    }
    __syncthreads();
    // O[rows 4rg…, dims 8og…] += P·V.
    for (int j = 0; j < BKV; j++) {
      const float4 v0 = *(const float4*)(vs + j * D + 8 * og), v1 = *(const float4*)(vs + j * D + 8 * og + 4);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float p = ps[(4 * rg + i) * LDP + j];
        acc[i][0] += p * v0.x, acc[i][1] += p * v0.y, acc[i][2] += p * v0.z, acc[i][3] += p * v0.w;
        acc[i][4] += p * v1.x, acc[i][5] += p * v1.y, acc[i][6] += p * v1.z, acc[i][7] += p * v1.w;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int r = r0 + 4 * rg + i;
    if (r >= T) continue;
    float* out = o + ((size_t)r * H + h) * D + 8 * og;
    const float inv = 1.0f / lrow[i];
    *(float4*)out = make_float4(acc[i][0] * inv, acc[i][1] * inv, acc[i][2] * inv, acc[i][3] * inv);
    *(float4*)(out + 4) = make_float4(acc[i][4] * inv, acc[i][5] * inv, acc[i][6] * inv, acc[i][7] * inv);
  }
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  srand(99 + (unsigned)time(nullptr));
  const int H = 16, KVH = 2; // Qwen2.5-3B
  for (int T : {512, 2048}) {
    for (int P : {0, 100}) {
      const int N = P + T;
      std::vector<float> q((size_t)T * H * D), k((size_t)N * KVH * D), v((size_t)N * KVH * D);
      for (auto& x : q) x = (float)rand() / RAND_MAX * 2 - 1;
      for (auto& x : k) x = (float)rand() / RAND_MAX * 2 - 1;
      for (auto& x : v) x = (float)rand() / RAND_MAX * 2 - 1;
      float *dq, *dk, *dv, *dout;
      CK(cudaMalloc(&dq, q.size() * 4));
      CK(cudaMalloc(&dk, k.size() * 4));
      CK(cudaMalloc(&dv, v.size() * 4));
      CK(cudaMalloc(&dout, q.size() * 4));
      CK(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dk, k.data(), k.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dv, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
      const int smem = (BQ * D + BKV * LDK + BKV * D + BQ * LDP) * 4;
      CK(cudaFuncSetAttribute(attn_v1, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      const dim3 grid((T + BQ - 1) / BQ, H);
      CK(cudaMemset(dout, 0xff, q.size() * 4));
      attn_v1<<<grid, 256, smem>>>(dq, dk, dv, dout, T, P, H, KVH);
      CK(cudaGetLastError());
      std::vector<float> out(q.size());
      CK(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost));
      double worst = 0;
      for (float x : out)
        if (std::isnan(x)) worst = INFINITY;
      // float64 reference on sampled (row, head) pairs: the first and last rows included.
      std::vector<int> rows = {0, T - 1};
      for (int i = 0; i < 30; i++) rows.push_back(rand() % T);
      for (int r : rows)
        for (int hh = 0; hh < H; hh += 5) {
          const int gg = hh / (H / KVH), pos = P + r;
          std::vector<double> sc(pos + 1);
          double mx = -INFINITY;
          for (int t = 0; t <= pos; t++) {
            double s = 0;
            for (int d = 0; d < D; d++) s += (double)q[((size_t)r * H + hh) * D + d] * k[((size_t)t * KVH + gg) * D + d];
            sc[t] = s / sqrt((double)D);
            mx = std::max(mx, sc[t]);
          }
          double sum = 0;
          for (int t = 0; t <= pos; t++) sum += sc[t] = exp(sc[t] - mx);
          for (int d = 0; d < D; d++) {
            double a = 0, mag = 0;
            for (int t = 0; t <= pos; t++) {
              a += sc[t] * v[((size_t)t * KVH + gg) * D + d];
              mag += sc[t] * fabs(v[((size_t)t * KVH + gg) * D + d]);
            }
            worst = std::max(worst, fabs(out[((size_t)r * H + hh) * D + d] - a / sum) / std::max(mag / sum, 1e-30));
          }
        }
      cudaEvent_t e0, e1;
      cudaEventCreate(&e0);
      cudaEventCreate(&e1);
      for (int i = 0; i < 3; i++) attn_v1<<<grid, 256, smem>>>(dq, dk, dv, dout, T, P, H, KVH);
      const int reps = 20;
      cudaEventRecord(e0);
      for (int i = 0; i < reps; i++) attn_v1<<<grid, 256, smem>>>(dq, dk, dv, dout, T, P, H, KVH);
      cudaEventRecord(e1);
      CK(cudaEventSynchronize(e1));
      float ms;
      cudaEventElapsedTime(&ms, e0, e1);
      const double us = ms * 1000 / reps;
      const double flops = 4.0 * H * D * ((double)T * P + (double)T * (T + 1) / 2); // QKᵀ and PV, causal
      printf("T %5d P %3d: v1 %9.1f µs, %6.1f TFLOP/s, 36 layers %.1f ms, max rel err %.2g%s\n", T, P, us, flops / (us * 1e-6) / 1e12, 36 * us / 1000,
             worst, worst > 1e-5 ? "  WRONG" : "");
      cudaFree(dq);
      cudaFree(dk);
      cudaFree(dv);
      cudaFree(dout);
    }
  }
  return 0;
}
