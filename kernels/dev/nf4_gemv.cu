// nf4_gemv.cu — standalone development benchmark of the batch-1 NF4 matrix-
// vector product (llm.c dev/cuda style): versions side by side, each checked
// against a CPU reference on fresh random inputs with the output poisoned,
// then timed with events over rotating weight copies (several times the L2),
// reported in GB/s and % of the device-to-device copy bandwidth measured in the
// same run. Build and run (on the GPU machine, nvcc ≥ 12):
//
//   nvcc -O3 -arch=sm_90 -o nf4_gemv kernels/dev/nf4_gemv.cu && ./nf4_gemv
//
// The product: y[n] = Σ_k W[n,k]·x[k], W in bitsandbytes NF4 with double
// quantisation: W[n,k] = bf16(NF4[c]·s), s = fp32(fp32(code[q]·nested) + offset)
// for the 64-block of element n·K+k (q its 8-bit absmax code, nested the scale
// of its 256-block group) — bitsandbytes' dequantised weight, bit for bit.
// Bytes a call: N·K/2 codes + N·K/64 absmax codes + N·K/16384·4 nested.
//
// Versions (kernels/PERF.md has every version's numbers; the ones that lost
// were removed from this file once measured):
//   v1  scalar: a warp a row, 8 weights a lane a step, each weight decoded by a
//       table read, multiply and bf16 rounding, then an fp32 FMA (the shape of
//       the engine's CUDA-core GEMV); the baseline.
//   v4  tensor cores at batch 1 (shipped as nf4_lut.cu): a warp takes 16 rows ×
//       a K slice; per 64-block a thread builds the block's 16 exact bf16
//       values bf16(NF4[i]·s) once, as two byte planes in 8 registers, then
//       looks its codes up with prmt (4 weights: 6 prmt + 2 to pair the planes
//       into bf16x2 A fragments); x enters as the B operand, split into hi +
//       mid + lo bf16 parts in columns 0, 1, 2 of the n8 tile, by each block
//       into shared memory in fragment order; one mma.m16n8k16 does 256
//       weights; the next step's raw loads are in flight during a step; two
//       accumulator chains a step are added into fp32 totals (the error grew
//       with K without). v4b: 3 blocks an SM (80 registers).
#include "nf4_v4.cuh" // Q, Raw, load_raw, run_raw, mma_layout, rnd (and common.cuh)
#include <string.h>
#include <time.h>
#include <math.h>
#include <algorithm>
#include <string>
#include <vector>



__device__ __forceinline__ float scale_of(const Q& q, const float* code, unsigned b) {
  return __fadd_rn(__fmul_rn(code[__ldg(q.qabsmax + b)], __ldg(q.nested + (b >> 8))), q.offset);
}

// ---------------------------------------------------------------------------
// v1: scalar.
__global__ void __launch_bounds__(256) gemv_v1(Q q, const float* __restrict__ x, float* __restrict__ y) {
  __shared__ float code[256];
  __shared__ float table[16];
  code[threadIdx.x] = q.code[threadIdx.x];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int row = blockIdx.x * 8 + (threadIdx.x >> 5); row < q.N; row += gridDim.x * 8) {
    float acc = 0.0f;
    const unsigned e0 = (unsigned)row * q.K;
    for (int k = lane * 8; k < q.K; k += 256) {
      const uint32_t w = __ldg((const uint32_t*)(q.codes + (e0 + k) / 2));
      const float s = scale_of(q, code, (e0 + k) >> 6);
      const float4 xa = __ldg((const float4*)(x + k)), xb = __ldg((const float4*)(x + k + 4));
      const float xs[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const uint32_t byte = (w >> (8 * i)) & 0xffu;
        const __nv_bfloat162 h = __floats2bfloat162_rn(__fmul_rn(table[byte >> 4], s), __fmul_rn(table[byte & 15u], s));
        acc += __bfloat162float(h.x) * xs[2 * i] + __bfloat162float(h.y) * xs[2 * i + 1];
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
  }
}

// ---------------------------------------------------------------------------
// v2/v3: tensor cores with an exact per-block table.

// prmt, Lut, make_lut and lookup4: common.cuh.

// ---------------------------------------------------------------------------
// v4: v3 with (a) only raw loads prefetched (the scale is rebuilt when the
// step runs, so no load result is waited on a step early), (b) x split by the
// block itself into shared memory in a prologue (no producer changes needed;
// the first step's codes are requested before it), (c) every lane loads a B
// fragment (lanes g ≥ 3 repeat parts 0–2: a broadcast, and their columns are
// never read), so no predicate and no zeroing per MMA, (d) two accumulator
// chains per step, added into fp32 totals after each step (shorter tensor-core
// accumulation chains: the fp32 error of v2/v3 grew with K). Its step (Raw,
// load_raw, run_raw): nf4_v4.cuh.
template <int KP, int MINB>
__global__ void __launch_bounds__(256, MINB) gemv_v4(Q q, const float* __restrict__ x, float* __restrict__ y) {
  extern __shared__ uint2 xsm[]; // [S][16][3][4] x split in fragment order
  __shared__ float code[256];
  __shared__ float red[8][16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, g3 = g % 3;
  const int part = warp % KP, tpb = 8 / KP;
  const int K = q.K, nblk = K / 64, S = (nblk + 3) / 4, tiles = q.N / 16;
  const int per = (S + KP - 1) / KP, sbeg = min(S, part * per), send = min(S, sbeg + per);
  int tb = blockIdx.x * tpb;
  // The first step's codes are requested before the prologue.
  int tile = tb + warp / KP;
  Raw cur{};
  if (tile < tiles && sbeg < send) cur = load_raw(q, tile * 16 + g, tile * 16 + g + 8, sbeg, t, nblk);
  code[threadIdx.x] = q.code[threadIdx.x];
  for (int i = threadIdx.x; i < S * 64; i += 256) {
    const int s = i / 64, j = (i / 4) % 16, tt = i % 4;
    const int c = 256 * s + 64 * tt + 4 * j;
    float4 v = make_float4(0, 0, 0, 0);
    if (c < K) v = __ldg((const float4*)(x + c));
    const float in[4] = {v.x, v.y, v.z, v.w};
    uint32_t p[3][2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
      split3(in[2 * h], in[2 * h + 1], p[0][h], p[1][h], p[2][h]);
    }
#pragma unroll
    for (int pp = 0; pp < 3; pp++) xsm[((s * 16 + j) * 3 + pp) * 4 + tt] = make_uint2(p[pp][0], p[pp][1]);
  }
  __syncthreads();
  for (; tb < tiles; tb += gridDim.x * tpb) {
    tile = tb + warp / KP;
    float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (tile < tiles) {
      const int ra = tile * 16 + g, rb = ra + 8;
      for (int s = sbeg; s < send; s++) {
        Raw nxt = cur;
        if (s + 1 < send) nxt = load_raw(q, ra, rb, s + 1, t, nblk);
        else if (tb + gridDim.x * tpb + warp / KP < tiles && sbeg < send) // the next tile's first step
          nxt = load_raw(q, ra + 16 * gridDim.x * tpb, rb + 16 * gridDim.x * tpb, sbeg, t, nblk);
        run_raw(cur, 4 * s + t < nblk, q, code, xsm, s, g3, t, tot);
        cur = nxt;
      }
    }
    // Row g = D[g][0] + D[g][1] + D[g][2]: t = 0 holds columns 0, 1; t = 1 holds 2 (its column 3 repeats a part).
    float ya = t == 0 ? tot[0] + tot[1] : tot[0], yb = t == 0 ? tot[2] + tot[3] : tot[2];
    ya += __shfl_down_sync(0xffffffffu, ya, 1);
    yb += __shfl_down_sync(0xffffffffu, yb, 1);
    if (KP > 1) {
      if (t == 0) {
        red[warp][g] = ya;
        red[warp][g + 8] = yb;
      }
      __syncthreads();
      if (part == 0 && t == 0) {
        ya = yb = 0.0f;
        for (int w = 0; w < KP; w++) {
          ya += red[warp + w][g];
          yb += red[warp + w][g + 8];
        }
      }
      __syncthreads();
    }
    if (tile < tiles && part == 0 && t == 0) {
      y[tile * 16 + g] = ya;
      y[tile * 16 + g + 8] = yb;
    }
  }
}


// ---------------------------------------------------------------------------
// Host.



struct Shape {
  const char* name;
  int N, K;
};

int main(int argc, char** argv) {
  rng ^= (uint64_t)time(nullptr) * 0x2545F4914F6CDD1Dull; // fresh inputs every run
  CK(cudaMemcpyToSymbol(NF4_TABLE, NF4_HOST, sizeof NF4_HOST));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  cudaEvent_t e0, e1;
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const double copyGBs = copy_bandwidth();
  const Shape shapes[] = {
      {"q/k/v 3B (2560x2048)", 2560, 2048},   {"o_proj 3B (2048x2048)", 2048, 2048},
      {"gate+up 3B (22016x2048)", 22016, 2048}, {"down 3B (2048x11008)", 2048, 11008},
      {"gate+up 7B (37888x3584)", 37888, 3584}, {"down 7B (3584x18944)", 3584, 18944},
      {"down 0.5B (896x4864)", 896, 4864},      {"gate+up 3B x36 (792576x2048)", 792576, 2048},
  };
  int SMs = prop.multiProcessorCount;
  struct Result {
    const char* shape;
    std::string ver;
    double frac;
  };
  std::vector<Result> results;
  printf("\n%-30s %-12s %9s %9s %7s %10s\n", "shape", "version", "us/call", "GB/s", "%copy", "max rel err");
  const char* only = argc > 1 ? argv[1] : nullptr; // run shapes whose name contains this
  for (const Shape& sh : shapes) {
    if (only && !strstr(sh.name, only)) continue;
    const int N = sh.N, K = sh.K;
    const size_t elems = (size_t)N * K, blocks = elems / 64, groups = blocks / 256 + 1;
    const size_t bytes = elems / 2 + blocks + groups * 4;
    // Host data: random codes, absmax codes, nested scales, dynamic map, x.
    std::vector<uint8_t> codes(elems / 2), qabs(blocks), laid;
    std::vector<float> nested(groups), dmap(256), x(K);
    for (auto& c : codes) c = rnd() & 0xff;
    for (auto& c : qabs) c = rnd() & 0xff;
    for (auto& v : nested) v = 0.01f + urand() * 0.05f;
    for (int i = 0; i < 256; i++) dmap[i] = urand();
    const float offset = 0.01f + urand() * 0.02f;
    for (auto& v : x) v = urand() * 2 - 1;
    mma_layout(codes, laid, N, K);
    // CPU reference in double over the exact dequantised weights.
    std::vector<double> ref(N);
    std::vector<float> ycpu(N);
    for (int n = 0; n < N; n++) {
      double s = 0;
      for (int k = 0; k < K; k += 2) {
        const size_t e = (size_t)n * K + k;
        const uint8_t byte = codes[e / 2];
        const size_t b = e / 64;
        const float sc = dmap[qabs[b]] * nested[b / 256] + 0.0f; // fp32 product, then the add below
        const float scale = sc + offset;
        s += (double)bf16_round(NF4_HOST[byte >> 4] * scale) * x[k] + (double)bf16_round(NF4_HOST[byte & 15] * scale) * x[k + 1];
      }
      ref[n] = s;
    }
    // Device: R copies of the weights so that a rotation is ≥ 4× the L2.
    const int R = std::max(2, (int)std::min<size_t>(64, (4ull * prop.l2CacheSize) / bytes + 1));
    uint8_t *dcodes, *dlaid, *dq;
    float *dn, *dmapd, *dx, *dy;
    const int S = (K / 64 + 3) / 4;
    CK(cudaMalloc(&dcodes, elems / 2 * R));
    CK(cudaMalloc(&dlaid, elems / 2 * R));
    CK(cudaMalloc(&dq, blocks * R));
    CK(cudaMalloc(&dn, groups * 4 * R));
    CK(cudaMalloc(&dmapd, 1024));
    CK(cudaMalloc(&dx, K * 4));
    CK(cudaMalloc(&dy, N * 4));
    for (int r = 0; r < R; r++) {
      CK(cudaMemcpy(dcodes + r * elems / 2, codes.data(), elems / 2, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dlaid + r * elems / 2, laid.data(), elems / 2, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dq + r * blocks, qabs.data(), blocks, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(dn + r * groups, nested.data(), groups * 4, cudaMemcpyHostToDevice));
    }
    CK(cudaMemcpy(dmapd, dmap.data(), 1024, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x.data(), K * 4, cudaMemcpyHostToDevice));
    auto qof = [&](int r, bool mma) {
      Q q;
      q.codes = (mma ? dlaid : dcodes) + (size_t)r * elems / 2;
      q.qabsmax = dq + (size_t)r * blocks;
      q.nested = dn + (size_t)r * groups;
      q.code = dmapd;
      q.offset = offset;
      q.N = N, q.K = K;
      return q;
    };
    // Versions: name and launcher.
    struct Ver {
      const char* name;
      int kp; // warps per 16-row tile; 0 = v1
    };
    std::vector<Ver> vers = {{"v1", 0}};
    for (int kp : {1, 2, 4, 8}) {
      vers.push_back({"v4", kp});
      vers.push_back({"v4b", kp});
    }
    for (const Ver& v : vers) {
      auto launch = [&](int r) {
        const Q q = qof(r, v.kp > 0);
        if (v.kp == 0) {
          gemv_v1<<<std::min(N / 8 + 1, SMs * 8), 256, 0, stream>>>(q, dx, dy);
          return;
        }
        // v4: x split into dynamic shared memory; 2 or (v4b) 3 blocks an SM.
        const int tpb = 8 / v.kp, tiles = N / 16, shm = S * 64 * 3 * 8;
        const bool b3 = v.name[2] == 'b';
        const void* fn = nullptr;
#define PICK4(KP) \
  if (v.kp == KP) fn = b3 ? (const void*)gemv_v4<KP, 3> : (const void*)gemv_v4<KP, 2>;
        PICK4(1) PICK4(2) PICK4(4) PICK4(8)
        int occ = 0;
        CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, shm));
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, 256, shm));
        const int grid = std::min((tiles + tpb - 1) / tpb, occ * SMs);
        void* args[] = {(void*)&q, (void*)&dx, (void*)&dy};
        CK(cudaLaunchKernel(fn, grid, 256, args, shm, stream));
      };
      // Check on fresh poison.
      CK(cudaMemset(dy, 0xff, N * 4)); // NaN
      launch(0);
      CK(cudaGetLastError());
      CK(cudaStreamSynchronize(stream));
      CK(cudaMemcpy(ycpu.data(), dy, N * 4, cudaMemcpyDeviceToHost));
      double maxrel = 0, norm = 0;
      for (int n = 0; n < N; n++) norm = std::max(norm, fabs(ref[n]));
      bool bad = false;
      for (int n = 0; n < N; n++) {
        const double err = fabs(ycpu[n] - ref[n]) / norm;
        if (!(err <= 1e-5)) {
          if (!bad) printf("  %s kp%d: row %d: got %g want %g\n", v.name, v.kp, n, ycpu[n], ref[n]);
          bad = true;
        }
        if (err > maxrel || err != err) maxrel = err != err ? INFINITY : err;
      }
      // Time: a CUDA graph of 2R launches (rotating copies; graph replay
      // keeps host launch gaps out), warmed up, median of 7 replays.
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < 2 * R; i++) launch(i % R);
      CK(cudaStreamEndCapture(stream, &graph));
      CK(cudaGraphInstantiateWithFlags(&exec, graph, 0));
      for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(exec, stream));
      std::vector<float> ts;
      for (int rep = 0; rep < 7; rep++) {
        CK(cudaEventRecord(e0, stream));
        CK(cudaGraphLaunch(exec, stream));
        CK(cudaEventRecord(e1, stream));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        ts.push_back(ms * 1000 / (2 * R));
      }
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
      std::sort(ts.begin(), ts.end());
      const double us = ts[3], gbs = bytes / (us * 1e-6) / 1e9;
      char vn[32];
      snprintf(vn, sizeof vn, "%s%s", v.name, v.kp ? (v.kp == 1 ? " kp1" : v.kp == 2 ? " kp2" : v.kp == 4 ? " kp4" : v.kp == 8 ? " kp8" : " kp16") : "");
      results.push_back({sh.name, vn, gbs / copyGBs});
      printf("%-30s %-12s %9.2f %9.0f %6.1f%% %10.2e%s\n", sh.name, vn, us, gbs, 100 * gbs / copyGBs, maxrel, bad ? "  FAIL" : "");
    }
    CK(cudaFree(dcodes));
    CK(cudaFree(dlaid));
    CK(cudaFree(dq));
    CK(cudaFree(dn));
    CK(cudaFree(dmapd));
    CK(cudaFree(dx));
    CK(cudaFree(dy));
  }
  printf("\nbest version per shape (%% of copy):\n");
  for (size_t i = 0; i < results.size();) {
    size_t j = i, best = i;
    for (; j < results.size() && !strcmp(results[j].shape, results[i].shape); j++)
      if (results[j].frac > results[best].frac) best = j;
    printf("  %-30s %-10s %5.1f%%\n", results[best].shape, results[best].ver.c_str(), 100 * results[best].frac);
    i = j;
  }
  return 0;
}
