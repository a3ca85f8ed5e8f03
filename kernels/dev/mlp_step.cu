// mlp_step.cu — standalone development benchmark of issue 11's route (one
// persistent kernel a decode step) on the half of a batch-1 step that holds
// most of its bytes: each layer's MLP, at the Qwen2.5-3B shape (hidden 2048,
// intermediate 11008, 36 layers of distinct NF4 weights: 1.2 GB, no L2 reuse).
//
//   xn = rmsnorm(x)·w;  act = silu(W_gate·xn)·(W_up·xn);  x += W_down·act
//
// Build and run on the GPU machine: BENCHES=mlp_step kernels/dev/run.sh
//
// Versions (µs a layer; each checked against a double-precision CPU
// reference over the exact dequantised weights, two layers, x poisoned
// between runs — only x's rows written by the layer survive):
//   v1  two launches a layer, the engine's shape of the work (kernels/PERF.md,
//       fourteenth session: gate/up 22.0 and down 15.6 µs of a step's
//       critical path without an adapter): gate/up with the RMSNorm in every
//       block (nf4_lut's fused norm), 2 warps a 16-row tile; down two blocks
//       a tile (halves of K met through a counter), 8 warps a tile — 72
//       launches in a CUDA graph.
//   v2  one persistent kernel for all 36 layers (a block per SM slot,
//       cooperative launch), the same two phases a layer with a grid-wide
//       barrier after each: what the launch boundaries cost.
//   v3  v2 with each block's down codes and scales (16 rows × half of K:
//       45 KB) copied into shared memory (cp.async) between its last gate/up
//       tile and the barrier — during the gate/up launch's part-filled last
//       round — so the down phase waits on no DRAM load.
//   v4  v3 with the next layer's first gate/up loads issued before the
//       barrier that ends a layer (as nf4_lut issues its first before its
//       wait).
// Prediction (kernels/PERF.md, fifteenth session): v1 ≈ 38 µs; v3 ≈ 30 µs.
#include "nf4_v4.cuh"
#include <math.h>
#include <time.h>

constexpr int H = 2048, I = 11008, LAYERS = 36, CHECK_LAYERS = 2;
constexpr float EPS = 1e-6f;
constexpr int GU_KP = 2, DN_KP = 8; // warps a tile: gate/up, down (as the engine's launcher picks them)
constexpr int GU_S = H / 256, DN_S = I / 256 + (I % 256 != 0), DN_HALF = (DN_S + 1) / 2; // steps of 256 columns
constexpr int XS_BYTES = DN_HALF * 16 * 3 * 4 * 8;                                      // x parts: the larger phase's
constexpr int DC_BYTES = 16 * DN_HALF * 128;                                             // a down item's codes
constexpr int DS_FLOATS = 16 * DN_HALF * 4;                                              // its scales
constexpr int SMEM = XS_BYTES + DC_BYTES + DS_FLOATS * 4;

// Layer is one layer's weights: gate/up as one matrix of 2I rows, tile t's
// fragment rows g = gate row 8t + g, g + 8 = up row 8t + g (so a lane holds
// the pair the SiLU product needs); down as H rows. Codes in mma_layout.
struct Layer {
  Q gu, dn;
  const float* w; // the RMSNorm weight
};

// split_x writes v = x[k]·(w[k]·inv where w) for steps [s0, s1) of a row
// into shared memory as bf16 parts in fragment order ([s − s0][16][3][4]
// uint2s); x through L2 (other blocks wrote it).
__device__ void split_x(const float* x, const float* w, float inv, int K, int s0, int s1, uint2* xs) {
  for (int i = threadIdx.x; i < (s1 - s0) * 64; i += blockDim.x) {
    const int s = s0 + i / 64, j = (i / 4) % 16, t = i % 4, c = 256 * s + 64 * t + 4 * j;
    float4 v = make_float4(0, 0, 0, 0);
    if (c < K) {
      v = __ldcg((const float4*)(x + c));
      if (w) {
        const float4 wv = __ldg((const float4*)(w + c));
        v = make_float4(wv.x * (v.x * inv), wv.y * (v.y * inv), wv.z * (v.z * inv), wv.w * (v.w * inv));
      }
    }
    uint32_t p[3][2];
    split3(v.x, v.y, p[0][0], p[1][0], p[2][0]);
    split3(v.z, v.w, p[0][1], p[1][1], p[2][1]);
#pragma unroll
    for (int pp = 0; pp < 3; pp++) xs[(((s - s0) * 16 + j) * 3 + pp) * 4 + t] = make_uint2(p[pp][0], p[pp][1]);
  }
}

// inv_rms: 1/sqrt(mean(x²) + eps) of the H-vector x, the same in every block
// (a fixed order: each thread's strided sum, then the warps' in order).
__device__ float inv_rms(const float* x, float* red) {
  float s = 0.0f;
  for (int k = threadIdx.x; k < H; k += blockDim.x) {
    const float v = __ldcg(x + k);
    s += v * v;
  }
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
  __syncthreads();
  return rsqrtf(t / H + EPS);
}

// tile_sums: rows g and g + 8 of the warp's tile (lane t == 0 holds them),
// the tile's KP warps met in red ([8][16]) in warp order; valid in its
// first warp (part 0). Every warp of the block calls it (barriers).
template <int KP>
__device__ __forceinline__ void tile_sums(const float* tot, float* red, float& ya, float& yb) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  ya = t == 0 ? tot[0] + tot[1] : tot[0], yb = t == 0 ? tot[2] + tot[3] : tot[2]; // columns 0–2: hi, mid, lo
  ya += __shfl_down_sync(0xffffffffu, ya, 1);
  yb += __shfl_down_sync(0xffffffffu, yb, 1);
  if (KP == 1) return;
  if (t == 0) {
    red[warp * 16 + g] = ya;
    red[warp * 16 + g + 8] = yb;
  }
  __syncthreads();
  if (warp % KP == 0 && t == 0) {
    ya = yb = 0.0f;
    for (int w = 0; w < KP; w++) {
      ya += red[(warp + w) * 16 + g];
      yb += red[(warp + w) * 16 + g + 8];
    }
  }
  __syncthreads();
}

// gateup_first is this warp's first gate/up step's raw loads.
__device__ __forceinline__ Raw gateup_first(const Layer& L) {
  constexpr int tpb = 8 / GU_KP, per = (GU_S + GU_KP - 1) / GU_KP;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x * tpb + warp / GU_KP;
  Raw r{};
  if (tile < 2 * I / 16) r = load_raw(L.gu, tile * 16 + g, tile * 16 + g + 8, warp % GU_KP * per, t, H / 64);
  return r;
}

// gateup_phase: act = silu(W_gate·xn)·(W_up·xn), the block's tiles (tiles
// of 8 pairs, GU_KP warps each, a round of the grid at a time), xn normed
// by every block itself; first: the first step's loads if already issued.
__device__ void gateup_phase(const Layer& L, const float* code, const float* x, float* act, uint2* xs, float* red, const Raw* first) {
  constexpr int tpb = 8 / GU_KP, per = (GU_S + GU_KP - 1) / GU_KP;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, part = warp % GU_KP;
  const int tiles = 2 * I / 16, nblk = H / 64, sbeg = part * per, send = min(GU_S, sbeg + per);
  int tb = blockIdx.x * tpb;
  Raw cur = first ? *first : gateup_first(L);
  const float inv = inv_rms(x, red);
  split_x(x, L.w, inv, H, 0, GU_S, xs);
  __syncthreads();
  for (; tb < tiles; tb += gridDim.x * tpb) {
    const int tile = tb + warp / GU_KP, ra = tile * 16 + g, rb = ra + 8;
    float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (tile < tiles)
      for (int s = sbeg; s < send; s++) {
        Raw nxt = cur;
        if (s + 1 < send) nxt = load_raw(L.gu, ra, rb, s + 1, t, nblk);
        else if (tile + gridDim.x * tpb < tiles) nxt = load_raw(L.gu, ra + 16 * gridDim.x * tpb, rb + 16 * gridDim.x * tpb, sbeg, t, nblk);
        run_raw(cur, 4 * s + t < nblk, L.gu, code, xs, s, g % 3, t, tot);
        cur = nxt;
      }
    float ya, yb;
    tile_sums<GU_KP>(tot, red, ya, yb);
    if (tile < tiles && part == 0 && t == 0) act[tile * 8 + g] = ya * (1.0f / (1.0f + expf(-ya))) * yb;
  }
}

// Down items: (tile, half) = (item / 2, item % 2), DN_KP warps a tile; the
// half's steps [s0, s1). The block that finishes second adds the other's
// sums (ws, a counter a tile it resets) and adds the rows into x.
__device__ __forceinline__ void down_steps(int item, int& s0, int& s1) {
  s0 = item % 2 * DN_HALF;
  s1 = min(DN_S, s0 + DN_HALF);
}

__device__ void down_finish(int tile, int half, float ya, float yb, float* x, float* ws, int* count) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  __shared__ bool last;
  if (warp == 0 && t == 0) {
    ws[(tile * 2 + half) * 16 + g] = ya;
    ws[(tile * 2 + half) * 16 + g + 8] = yb;
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(count + tile, 1) == 1;
  __syncthreads();
  if (!last || warp != 0 || t != 0) return;
  const float* o = ws + (tile * 2 + (half ^ 1)) * 16;
  const float va = half == 0 ? ya + __ldcg(o + g) : __ldcg(o + g) + ya; // half 0's sum first, whichever finishes last
  const float vb = half == 0 ? yb + __ldcg(o + g + 8) : __ldcg(o + g + 8) + yb;
  x[tile * 16 + g] = __ldcg(x + tile * 16 + g) + va; // through L2: the other block of the tile may have written it last
  x[tile * 16 + g + 8] = __ldcg(x + tile * 16 + g + 8) + vb;
  if (lane == 0) count[tile] = 0;
}

// down_phase: x += W_down·act for the block's item, codes from global memory
// (the next step's raw loads in flight, as nf4_lut).
__device__ void down_phase(const Layer& L, const float* code, const float* act, float* x, uint2* xs, float* red, float* ws, int* count,
                           int item) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int tile = item / 2, nblk = I / 64;
  int s0, s1;
  down_steps(item, s0, s1);
  const int per = (s1 - s0 + DN_KP - 1) / DN_KP, sbeg = min(s1, s0 + warp * per), send = min(s1, sbeg + per);
  const int ra = tile * 16 + g, rb = ra + 8;
  Raw cur{};
  if (sbeg < send) cur = load_raw(L.dn, ra, rb, sbeg, t, nblk);
  split_x(act, nullptr, 1.0f, I, s0, s1, xs);
  __syncthreads();
  float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int s = sbeg; s < send; s++) {
    Raw nxt = cur;
    if (s + 1 < send) nxt = load_raw(L.dn, ra, rb, s + 1, t, nblk);
    run_raw(cur, 4 * s + t < nblk, L.dn, code, xs, s - s0, g % 3, t, tot);
    cur = nxt;
  }
  float ya, yb;
  tile_sums<DN_KP>(tot, red, ya, yb);
  down_finish(tile, item % 2, ya, yb, x, ws, count);
}

// down_fetch copies the item's codes ([row 0–15][step s0…s1) 128 bytes) and
// scales into shared memory (cp.async; down_phase_smem waits for them).
__device__ void down_fetch(const Layer& L, const float* code, int item, uint8_t* dc, float* dsc) {
  const int tile = item / 2, nblk = I / 64;
  int s0, s1;
  down_steps(item, s0, s1);
  const int ns = s1 - s0;
  for (int i = threadIdx.x; i < 16 * ns * 8; i += blockDim.x) { // 16-byte pieces
    const int r = i / (ns * 8), rest = i % (ns * 8);
    const uint8_t* src = L.dn.codes + (size_t)(tile * 16 + r) * (I / 2) + 128 * s0 + 16 * rest;
    const unsigned dst = (unsigned)__cvta_generic_to_shared(dc + (r * DN_HALF * 8 + rest) * 16);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
  }
  asm volatile("cp.async.commit_group;\n" ::);
  for (int i = threadIdx.x; i < 16 * ns * 4; i += blockDim.x) { // the scales, rebuilt now
    const int r = i / (ns * 4), b = 4 * s0 + i % (ns * 4);
    const unsigned e = (unsigned)(tile * 16 + r) * nblk + b;
    dsc[r * DN_HALF * 4 + i % (ns * 4)] = b < nblk ? raw_scale(L.dn, code, __ldg(L.dn.qabsmax + e), __ldg(L.dn.nested + (e >> 8)), true) : 0.0f;
  }
}

// down_phase_smem is down_phase over the codes down_fetch staged.
__device__ void down_phase_smem(const float* act, float* x, uint2* xs, float* red, float* ws, int* count, int item, const uint8_t* dc,
                                const float* dsc) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  int s0, s1;
  down_steps(item, s0, s1);
  const int per = (s1 - s0 + DN_KP - 1) / DN_KP, sbeg = min(s1, s0 + warp * per), send = min(s1, sbeg + per);
  split_x(act, nullptr, 1.0f, I, s0, s1, xs);
  asm volatile("cp.async.wait_all;\n" ::);
  __syncthreads();
  float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int s = sbeg; s < send; s++) {
    const int sl = s - s0;
    const uint4* pa = (const uint4*)(dc + (g * DN_HALF + sl) * 128);
    const uint4* pb = (const uint4*)(dc + ((g + 8) * DN_HALF + sl) * 128);
    run_codes(pa[t], pa[4 + t], pb[t], pb[4 + t], dsc[(g * DN_HALF + sl) * 4 + t], dsc[((g + 8) * DN_HALF + sl) * 4 + t],
              xs + (sl * 16 * 3 + g % 3) * 4 + t, tot);
  }
  float ya, yb;
  tile_sums<DN_KP>(tot, red, ya, yb);
  down_finish(item / 2, item % 2, ya, yb, x, ws, count);
}

// grid_barrier: every block of the (co-resident) grid arrives; count is
// zeroed before the launch, n the barrier's number in it (from 1).
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned n) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(count, 1);
    unsigned v;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(count));
    } while (v < n * gridDim.x);
  }
  __syncthreads();
}

__device__ __forceinline__ void load_code(const float* src, float* code) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = src[i];
}

// v1's two kernels.
__global__ void __launch_bounds__(256, 2) k_gateup(Layer L, const float* x, float* act) {
  extern __shared__ uint2 smem[];
  __shared__ float code[256], red[8 * 16];
  load_code(L.gu.code, code);
  gateup_phase(L, code, x, act, smem, red, nullptr);
}
__global__ void __launch_bounds__(256, 2) k_down(Layer L, const float* act, float* x, float* ws, int* count) {
  extern __shared__ uint2 smem[];
  __shared__ float code[256], red[8 * 16];
  load_code(L.dn.code, code);
  __syncthreads();
  down_phase(L, code, act, x, smem, red, ws, count, blockIdx.x);
}

// v2 (FETCH, AHEAD false), v3 (FETCH) and v4 (both: the next layer's first
// gate/up loads issued before the barrier that ends a layer): all layers in
// one launch.
template <bool FETCH, bool AHEAD>
__global__ void __launch_bounds__(256, 2) k_persist(const Layer* layers, int nl, float* x, float* act, float* ws, int* count, unsigned* bar) {
  extern __shared__ uint2 smem[];
  __shared__ float code[256], red[8 * 16];
  uint8_t* dc = (uint8_t*)smem + XS_BYTES;
  float* dsc = (float*)(dc + DC_BYTES);
  const int items = 2 * H / 16;
  unsigned n = 0;
  Raw first{};
  for (int l = 0; l < nl; l++) {
    const Layer L = layers[l];
    load_code(L.gu.code, code); // every layer's maps are the same here; loaded as an engine would
    gateup_phase(L, code, x, act, smem, red, AHEAD && l > 0 ? &first : nullptr);
    if (FETCH && blockIdx.x < items) down_fetch(L, code, blockIdx.x, dc, dsc);
    grid_barrier(bar, ++n);
    if (blockIdx.x < items) {
      if (FETCH) down_phase_smem(act, x, smem, red, ws, count, blockIdx.x, dc, dsc);
      else down_phase(L, code, act, x, smem, red, ws, count, blockIdx.x);
    }
    if (AHEAD && l + 1 < nl) first = gateup_first(layers[l + 1]);
    grid_barrier(bar, ++n);
  }
}

// ---------------------------------------------------------------------------
// Host.

struct HostLayer {
  std::vector<uint8_t> gu, dn, guq, dnq; // codes (bitsandbytes order), absmax codes
  std::vector<float> gun, dnn, w;        // nested scales, norm weight
};

// deq is the exact dequantised weight of element e of a matrix.
static float deq(const std::vector<uint8_t>& codes, const std::vector<uint8_t>& q, const std::vector<float>& nested, const float* dmap,
                 float offset, size_t e) {
  const uint8_t byte = codes[e / 2];
  const float p = dmap[q[e / 64]] * nested[e / 64 / 256] + 0.0f; // fp32 product (nf4_gemv.cu's reference), then the add
  const float s = p + offset;
  return bf16_round(NF4_HOST[e % 2 ? byte & 15 : byte >> 4] * s);
}

int main() {
  rng ^= (uint64_t)time(nullptr) * 0x2545F4914F6CDD1Dull; // fresh inputs every run
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int SMs = prop.multiProcessorCount;
  printf("device: %s, %d SMs\n", prop.name, SMs);
  const double copyGBs = copy_bandwidth();
  std::vector<float> dmap(256);
  for (auto& v : dmap) v = urand();
  const float offset = 0.01f + urand() * 0.02f;
  float* dmapd;
  CK(cudaMalloc(&dmapd, 1024));
  CK(cudaMemcpy(dmapd, dmap.data(), 1024, cudaMemcpyHostToDevice));
  // Weights: random codes and scales for every layer; the first CHECK_LAYERS
  // kept on the host for the reference.
  std::vector<HostLayer> hl(CHECK_LAYERS);
  std::vector<Layer> layers(LAYERS);
  size_t bytes = 0;
  for (int l = 0; l < LAYERS; l++) {
    HostLayer h;
    const size_t ngu = (size_t)2 * I * H, ndn = (size_t)H * I;
    h.gu.resize(ngu / 2), h.dn.resize(ndn / 2), h.guq.resize(ngu / 64), h.dnq.resize(ndn / 64);
    h.gun.resize(ngu / 64 / 256 + 1), h.dnn.resize(ndn / 64 / 256 + 1), h.w.resize(H);
    for (auto* v : {&h.gu, &h.dn, &h.guq, &h.dnq})
      for (auto& c : *v) c = rnd() & 0xff;
    for (auto* v : {&h.gun, &h.dnn})
      for (auto& f : *v) f = 0.002f + urand() * 0.01f;
    for (auto& f : h.w) f = 0.5f + urand();
    std::vector<uint8_t> lg, ld;
    mma_layout(h.gu, lg, 2 * I, H);
    mma_layout(h.dn, ld, H, I);
    auto up = [&](const void* p, size_t n) {
      void* d;
      CK(cudaMalloc(&d, n));
      CK(cudaMemcpy(d, p, n, cudaMemcpyHostToDevice));
      return d;
    };
    Layer& L = layers[l];
    L.gu = Q{(const uint8_t*)up(lg.data(), lg.size()), (const uint8_t*)up(h.guq.data(), h.guq.size()), (const float*)up(h.gun.data(), h.gun.size() * 4),
             dmapd, offset, 2 * I, H};
    L.dn = Q{(const uint8_t*)up(ld.data(), ld.size()), (const uint8_t*)up(h.dnq.data(), h.dnq.size()), (const float*)up(h.dnn.data(), h.dnn.size() * 4),
             dmapd, offset, H, I};
    L.w = (const float*)up(h.w.data(), H * 4);
    bytes += lg.size() + ld.size() + h.guq.size() + h.dnq.size();
    if (l < CHECK_LAYERS) hl[l] = std::move(h);
  }
  std::vector<float> x0(H);
  for (auto& v : x0) v = urand() * 2 - 1;
  // The reference: CHECK_LAYERS layers in double over the exact weights.
  std::vector<double> xr(x0.begin(), x0.end());
  for (int l = 0; l < CHECK_LAYERS; l++) {
    const HostLayer& h = hl[l];
    double ss = 0;
    for (double v : xr) ss += v * v;
    const double inv = 1 / sqrt(ss / H + EPS);
    std::vector<double> xn(H), act(I);
    for (int k = 0; k < H; k++) xn[k] = h.w[k] * (xr[k] * inv);
    for (int n = 0; n < I; n++) {
      double gsum = 0, usum = 0;
      const int tile = n / 8, g = n % 8; // gate row n = GU row 16·tile + g, up row n = 16·tile + 8 + g
      for (int k = 0; k < H; k++) {
        gsum += deq(h.gu, h.guq, h.gun, dmap.data(), offset, (size_t)(16 * tile + g) * H + k) * xn[k];
        usum += deq(h.gu, h.guq, h.gun, dmap.data(), offset, (size_t)(16 * tile + 8 + g) * H + k) * xn[k];
      }
      act[n] = gsum / (1 + exp(-gsum)) * usum;
    }
    for (int r = 0; r < H; r++) {
      double s = 0;
      for (int k = 0; k < I; k++) s += deq(h.dn, h.dnq, h.dnn, dmap.data(), offset, (size_t)r * I + k) * act[k];
      xr[r] += s;
    }
  }
  float *dx, *dact, *dws;
  int* dcount;
  unsigned* dbar;
  Layer* dlayers;
  CK(cudaMalloc(&dx, H * 4));
  CK(cudaMalloc(&dact, I * 4));
  CK(cudaMalloc(&dws, 2 * H * 4));
  CK(cudaMalloc(&dcount, H / 16 * 4));
  CK(cudaMalloc(&dbar, 4));
  CK(cudaMemset(dcount, 0, H / 16 * 4));
  CK(cudaMalloc(&dlayers, LAYERS * sizeof(Layer)));
  CK(cudaMemcpy(dlayers, layers.data(), LAYERS * sizeof(Layer), cudaMemcpyHostToDevice));
  const int guShm = GU_S * 16 * 3 * 4 * 8, dnShm = DN_HALF * 16 * 3 * 4 * 8;
  CK(cudaFuncSetAttribute(k_gateup, cudaFuncAttributeMaxDynamicSharedMemorySize, guShm));
  CK(cudaFuncSetAttribute(k_down, cudaFuncAttributeMaxDynamicSharedMemorySize, dnShm));
  const void* persist[] = {(const void*)k_persist<false, false>, (const void*)k_persist<true, false>, (const void*)k_persist<true, true>};
  for (const void* f : persist) CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
  int occGU = 0, occP = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occGU, k_gateup, 256, guShm));
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occP, k_persist<true, true>, 256, SMEM));
  const int gridGU = std::min(2 * I / 16 / (8 / GU_KP), occGU * SMs), gridP = occP * SMs;
  printf("gate/up grid %d (%d an SM), persistent grid %d (%d an SM, %d bytes of shared memory a block)\n", gridGU, occGU, gridP, occP, SMEM);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto run = [&](int v, int nl) {
    if (v == 1) {
      for (int l = 0; l < nl; l++) {
        k_gateup<<<gridGU, 256, guShm, st>>>(layers[l], dx, dact);
        k_down<<<2 * H / 16, 256, dnShm, st>>>(layers[l], dact, dx, dws, dcount);
      }
      return;
    }
    CK(cudaMemsetAsync(dbar, 0, 4, st));
    void* args[] = {(void*)&dlayers, (void*)&nl, (void*)&dx, (void*)&dact, (void*)&dws, (void*)&dcount, (void*)&dbar};
    CK(cudaLaunchCooperativeKernel(persist[v - 2], gridP, 256, args, SMEM, st));
  };
  printf("\n%-4s %12s %12s %12s %8s\n", "ver", "us a layer", "GB/s", "% of copy", "max err");
  for (int v = 1; v <= 4; v++) {
    // Check: CHECK_LAYERS layers from x0, x's bytes poisoned first.
    CK(cudaMemset(dact, 0xff, I * 4));
    CK(cudaMemcpy(dx, x0.data(), H * 4, cudaMemcpyHostToDevice));
    run(v, CHECK_LAYERS);
    CK(cudaStreamSynchronize(st));
    CK(cudaGetLastError());
    std::vector<float> got(H);
    CK(cudaMemcpy(got.data(), dx, H * 4, cudaMemcpyDeviceToHost));
    double norm = 0, err = 0;
    for (int r = 0; r < H; r++) norm = std::max(norm, fabs(xr[r]));
    for (int r = 0; r < H; r++) {
      const double e = fabs(got[r] - xr[r]) / norm;
      err = e == e ? std::max(err, e) : INFINITY;
    }
    // Time: all layers (v1's 72 launches as a CUDA graph; v2 and v3 are one
    // launch), warmed up, the median of 7; x restarted from x0 each time.
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (v == 1) {
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      run(v, LAYERS);
      CK(cudaStreamEndCapture(st, &graph));
      CK(cudaGraphInstantiateWithFlags(&exec, graph, 0));
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ts;
    for (int rep = 0; rep < 10; rep++) {
      CK(cudaMemcpyAsync(dx, x0.data(), H * 4, cudaMemcpyHostToDevice, st));
      CK(cudaEventRecord(e0, st));
      if (v == 1) CK(cudaGraphLaunch(exec, st));
      else run(v, LAYERS);
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (rep >= 3) ts.push_back(ms * 1000 / LAYERS);
    }
    CK(cudaGetLastError());
    if (exec) {
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
    }
    std::sort(ts.begin(), ts.end());
    const double us = ts[ts.size() / 2], gbs = bytes / LAYERS / (us * 1e-6) / 1e9;
    printf("v%-3d %12.2f %12.0f %11.1f%% %8.1e%s\n", v, us, gbs, 100 * gbs / copyGBs, err, err <= 1e-5 ? "" : "  FAIL");
  }
  return 0;
}
