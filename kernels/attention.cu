// attention.cu: causal grouped-query attention of decode steps over each
// row's KV cache: split-K ("flash-decoding") in two kernels; for short
// sequences in one (attn_decode_c, below). Prefill passes: attn_flash.cu.
//
// attn_split: grid (heads, M, splits), block 128 (4 warps). Block (h, m, s)
// takes positions [s·CHUNK, min((s+1)·CHUNK, pos(m)+1)) of row m's sequence
// for query head h, which reads KV head h/(heads/kvHeads); it writes its
// partial max, sum of exp and un-normalised output to part[m, h, s, :].
// Scores: each warp takes CHUNK/4 positions, 4 at a time with independent
// 16-byte loads (a lane holds 4 of the head's dims); values: a thread per dim,
// positions unrolled by 8.
// attn_combine: grid (heads, M), block 128: merges the splits,
// out[m, h·hd + d] = Σ_s e^{max_s − max} acc_s[d] / Σ_s e^{max_s − max} sum_s;
// attn_combine_lora also computes the o_proj LoRA shrink (below).
//
// Bytes per row: 2·(pos+1)·headDim·4 per KV head (the heads/kvHeads query
// heads of a group read them again, from L2); flops ~4·heads·(pos+1)·headDim.
// Needs headDim % 4 == 0 and headDim ≤ 512.
//
// Versions: v1 — CHUNK 64, one position at a time (48 µs a launch at ~130
// positions, H200); v2 (attn_split) — CHUNK 32, 4 positions in flight a
// warp; v3 (attn_split_kv, decode steps of few rows) — the chunk's K and V
// copied into shared memory at once, before the wait where they can be; v4
// (attn_decode_c, decode steps of up to 32 rows) — split and combine in one
// launch, a row's heads one cluster (batch 20 +6 %, kernels/PERF.md).
#include "common.cuh"

#define CHUNK 32

// stage_kv copies positions [a, b) of a head's K and V rows into kv
// ([2][C][hd], position t at t − lo), every copy in flight at once.
template <int C = CHUNK>
__device__ __forceinline__ void stage_kv(float* kv, const float* K, const float* V, long long kvDim, int hd, int lo, int a, int b) {
  const int q4 = hd / 4, n = (b - a) * q4;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int t = a + i / q4, c = 4 * (i % q4);
    cp_async16(kv + (t - lo) * hd + c, K + (long long)t * kvDim + c);
    cp_async16(kv + (C + t - lo) * hd + c, V + (long long)t * kvDim + c);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// split_body is attn_split (STAGE false: K and V read from global memory
// after the wait, 4 positions and 8 at a time — six dependent round trips)
// and attn_split_kv (STAGE: the chunk's K and V rows copied at once into
// dynamic shared memory, 2·CHUNK·hd floats, 32 KB at hd 128). With early
// set (each row the only new token of its sequence: decode steps) the
// positions before the row's own were written by earlier passes, so
// attn_split_kv copies them before the wait — while the q/k/v launch still
// runs — and only the row's own position after it.
template <bool STAGE>
__device__ __forceinline__ void split_body(float* part, const float* q, const struct RowMeta* rows, long long layer, long long heads,
                                           long long kvHeads, long long hd, long long splits, bool early) {
  pdl_trigger();
  extern __shared__ float4 kvsm[];
  float* kv = (float*)kvsm;
  const int h = blockIdx.x, m = blockIdx.y, s = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const struct RowMeta rm = rows[m]; // staged by the host before the pass
  const int n = rm.pos + 1, lo = s * CHUNK, hi = min(n, lo + CHUNK);
  const long long kvDim = kvHeads * hd, g = h / (heads / kvHeads);
  const float* K = rm.k + (layer * rm.cap) * kvDim + g * hd;
  const float* V = rm.v + (layer * rm.cap) * kvDim + g * hd;
  const int old = STAGE && early && lo < hi ? min(hi, n - 1) : lo; // [lo, old): written by earlier passes
  if (old > lo) stage_kv(kv, K, V, kvDim, (int)hd, lo, lo, old);
  pdl_wait(); // everything below may read what the previous kernel wrote
  float* out = part + (((long long)m * heads + h) * splits + s) * (hd + 2);
  if (lo >= hi) { // nothing to see in this split
    if (threadIdx.x == 0) {
      out[0] = -INFINITY;
      out[1] = 0.0f;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[2 + d] = 0.0f;
    return;
  }
  if (STAGE) stage_kv(kv, K, V, kvDim, (int)hd, lo, old, hi);
  const float* qh = q + (long long)m * heads * hd + h * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  __shared__ float sc[CHUNK];
  __shared__ float red[4];
  // This lane's 4-dim slices of q (up to 4 slices: hd ≤ 512).
  float4 qv[4];
#pragma unroll
  for (int c = 0; c < 4; c++) {
    const int i = lane * 4 + c * 128;
    qv[c] = i < hd ? *(const float4*)(qh + i) : make_float4(0, 0, 0, 0);
  }
  if (STAGE) {
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
  }
  // Position t's K row at Ks + t·ks, its V row at Vs + t·ks.
  const float* Ks = STAGE ? kv - (long long)lo * hd : K;
  const float* Vs = STAGE ? kv + (CHUNK - lo) * hd : V;
  const long long ks = STAGE ? hd : kvDim;
  for (int t0 = lo + warp * 4; t0 < hi; t0 += 16) {
    float d[4] = {0, 0, 0, 0};
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int t = t0 + u;
      if (t < hi) {
#pragma unroll
        for (int c = 0; c < 4; c++) {
          const int i = lane * 4 + c * 128;
          if (i < hd) {
            const float4 kv4 = *(const float4*)(Ks + t * ks + i);
            d[u] += qv[c].x * kv4.x + qv[c].y * kv4.y + qv[c].z * kv4.z + qv[c].w * kv4.w;
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const float v = warp_sum(d[u]);
      if (lane == 0 && t0 + u < hi) sc[t0 + u - lo] = v * scale;
    }
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < hi - lo; i += blockDim.x) mx = fmaxf(mx, sc[i]);
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
  __syncthreads();
  float sum = 0.0f;
  for (int i = threadIdx.x; i < hi - lo; i += blockDim.x) {
    const float e = expf(sc[i] - mx);
    sc[i] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    out[0] = mx;
    out[1] = red[0] + red[1] + red[2] + red[3];
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int t = lo;
    for (; t + 8 <= hi; t += 8) {
#pragma unroll
      for (int u = 0; u < 8; u++) acc[u] += sc[t + u - lo] * Vs[(t + u) * ks + d];
    }
    for (; t < hi; t++) acc[0] += sc[t - lo] * Vs[t * ks + d];
    out[2 + d] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

extern "C" __global__ void __launch_bounds__(128) attn_split(float* part, const float* q, const struct RowMeta* rows, long long layer,
                                                            long long heads, long long kvHeads, long long hd, long long splits) {
  split_body<false>(part, q, rows, layer, heads, kvHeads, hd, splits, false);
}

extern "C" __global__ void __launch_bounds__(128) attn_split_kv(float* part, const float* q, const struct RowMeta* rows, long long layer,
                                                               long long heads, long long kvHeads, long long hd, long long splits,
                                                               long long early) {
  split_body<true>(part, q, rows, layer, heads, kvHeads, hd, splits, early != 0);
}

// combine_body merges head h of row m into att (and keeps the values in
// av[] for the LoRA shrink when av is given). Up to CS splits, each split's
// max and sum are loaded at once and its weight exp(m_s − max) computed
// once; the sums run over s in order either way (more splits: the loop).
constexpr int CS = 16;
__device__ __forceinline__ void combine_body(float* att, const float* part, long long heads, long long hd, long long splits,
                                             int h, int m, float* av) {
  const float* p = part + ((long long)m * heads + h) * splits * (hd + 2);
  if (splits <= CS) {
    float ms[CS], ls[CS], e[CS];
#pragma unroll
    for (int s = 0; s < CS; s++)
      if (s < splits) {
        ms[s] = p[s * (hd + 2)];
        ls[s] = p[s * (hd + 2) + 1];
      }
    float mx = -INFINITY, sum = 0.0f;
#pragma unroll
    for (int s = 0; s < CS; s++)
      if (s < splits) mx = fmaxf(mx, ms[s]);
#pragma unroll
    for (int s = 0; s < CS; s++) {
      e[s] = s < splits && ms[s] != -INFINITY ? expf(ms[s] - mx) : 0.0f;
      if (s < splits && ms[s] != -INFINITY) sum += e[s] * ls[s];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      float v[CS];
#pragma unroll
      for (int s = 0; s < CS; s++)
        if (s < splits) v[s] = p[s * (hd + 2) + 2 + d];
      float acc = 0.0f;
#pragma unroll
      for (int s = 0; s < CS; s++)
        if (s < splits && ms[s] != -INFINITY) acc += e[s] * v[s];
      att[(long long)m * heads * hd + h * hd + d] = acc / sum;
      if (av) av[d] = acc / sum;
    }
    return;
  }
  float mx = -INFINITY;
  for (int s = 0; s < splits; s++) mx = fmaxf(mx, p[s * (hd + 2)]);
  float sum = 0.0f;
  for (int s = 0; s < splits; s++) {
    const float ms = p[s * (hd + 2)];
    if (ms != -INFINITY) sum += expf(ms - mx) * p[s * (hd + 2) + 1];
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; s++) {
      const float ms = p[s * (hd + 2)];
      if (ms != -INFINITY) acc += expf(ms - mx) * p[s * (hd + 2) + 2 + d];
    }
    att[(long long)m * heads * hd + h * hd + d] = acc / sum;
    if (av) av[d] = acc / sum;
  }
}

extern "C" __global__ void __launch_bounds__(128) attn_combine(float* att, const float* part, long long heads, long long hd, long long splits) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  combine_body(att, part, heads, hd, splits, blockIdx.x, blockIdx.y, nullptr);
}

// HeadDots is the o_proj LoRA shrink's partial dots of one head's columns,
// A[j, h·hd … h·hd + hd)·av for the row's adapter ad (zeros past its rank
// and without one; hd ≤ 512), over a block of NW warps: warp w takes
// outputs w, w + NW, … (16 a round), lane l the columns l + 32·dd of each
// 128. load(0, 0) issues the first round's loads, before the kernel's wait
// where it can be (A and the row metadata are no kernel's output); run
// writes dst[j], j < rmax, once av (the head's values) is in shared memory.
template <int NW>
struct HeadDots {
  const float* A = nullptr;
  long long K = 0;
  int rank = 0, col = 0, hd = 0;
  float a[16 / NW][4];
  __device__ __forceinline__ void init(const struct ShrinkOp& sh, int ad, int h, int hd_) {
    A = ad >= 0 ? sh.A[0][ad] : nullptr;
    rank = A ? sh.rank[0][ad] : 0;
    K = sh.K, col = h * hd_, hd = hd_;
  }
  __device__ __forceinline__ void load(int j0, int d0) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int jj = 0; jj < 16 / NW; jj++)
#pragma unroll
      for (int dd = 0; dd < 4; dd++) {
        const int j = j0 + warp + NW * jj, d = d0 + lane + 32 * dd;
        a[jj][dd] = j < rank && d < hd ? __ldg(A + (long long)j * K + col + d) : 0.0f;
      }
  }
  __device__ __forceinline__ void run(const float* av, int rmax, float* dst) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int j0 = 0; j0 < rmax; j0 += 16) {
      float s[16 / NW] = {};
      for (int d0 = 0; d0 < hd; d0 += 128) {
        if (j0 > 0 || d0 > 0) load(j0, d0);
#pragma unroll
        for (int jj = 0; jj < 16 / NW; jj++)
#pragma unroll
          for (int dd = 0; dd < 4; dd++)
            if (d0 + lane + 32 * dd < hd) s[jj] += a[jj][dd] * av[d0 + lane + 32 * dd];
      }
#pragma unroll
      for (int jj = 0; jj < 16 / NW; jj++) {
        const int j = j0 + warp + NW * jj;
        const float v = warp_sum(s[jj]);
        if (lane == 0 && j < rmax) dst[j] = v;
      }
    }
  }
};

// combine_dots is attn_combine for head h of row m (into att, and av in
// shared memory) followed by the head's o shrink dots (HeadDots) into dst.
__device__ __forceinline__ void combine_dots(float* att, const float* part, long long heads, long long hd, long long splits,
                                             const struct ShrinkOp& sh, float* av, float* dst) {
  const int h = blockIdx.x, m = blockIdx.y;
  HeadDots<4> dots;
  dots.init(sh, sh.rows[m].adapter, h, (int)hd);
  dots.load(0, 0);
  pdl_wait(); // everything below may read what the previous kernel wrote
  pdl_trigger(); // the next launch let in only now (rmsnorm_lora's note)
  combine_body(att, part, heads, hd, splits, h, m, av);
  __syncthreads();
  dots.run(av, sh.rmax, dst);
}

// attn_combine_lora is attn_combine with the o_proj LoRA shrink of decode
// steps folded in (one launch a layer fewer): head h's block also computes
// its partial dots (combine_dots) into tp[m, h, j]; the last of the row's
// head blocks to finish (a counter a row, reset by it for the next pass)
// adds the heads' partials in head order — the same sum whichever block is
// last — into t[m, j], zeros where lora_shrink writes zeros. sh is the o
// shrink (one slot, K = heads·hd).
extern "C" __global__ void __launch_bounds__(128) attn_combine_lora(float* att, const float* part, long long heads, long long hd,
    long long splits, const __grid_constant__ struct ShrinkOp sh, float* tp, int* count) {
  __shared__ float av[512];
  __shared__ bool last;
  const int h = blockIdx.x, m = blockIdx.y;
  combine_dots(att, part, heads, hd, splits, sh, av, tp + ((long long)m * heads + h) * sh.rmax);
  __threadfence(); // the partials are visible before the count says so
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(count + m, 1) == heads - 1;
  __syncthreads();
  if (!last) return;
  for (int j = threadIdx.x; j < sh.rmax; j += blockDim.x) {
    float v = 0.0f;
#pragma unroll 8
    for (int hh = 0; hh < heads; hh++) v += __ldcg(tp + ((long long)m * heads + hh) * sh.rmax + j);
    sh.t[(long long)m * sh.tStride + j] = v;
  }
  if (threadIdx.x == 0) count[m] = 0;
}

#if __CUDA_ARCH__ >= 900
// head_sum is Σ_r p[r] over blocks r < heads (≤ 16) of the cluster, in
// order: all the loads in flight at once (a loop with a load a trip would
// wait out a distributed-shared-memory round trip a head).
__device__ __forceinline__ float head_sum(const float* p, int heads) {
  float v[16];
#pragma unroll
  for (int r = 0; r < 16; r++) v[r] = r < heads ? dsmem_f32(p, r) : 0.0f;
  float s = 0.0f;
#pragma unroll
  for (int r = 0; r < 16; r++) s += v[r];
  return s;
}
#endif

// attn_combine_lora_c is attn_combine_lora for rows whose heads (at most 16)
// form a thread-block cluster (grid (heads, M), cluster (heads, 1, 1);
// compute capability 9.0): each head block keeps its partial dots in shared
// memory and head 0's block adds them in head order from distributed shared
// memory — the same sums as attn_combine_lora's, without its fence, counter
// and second global round trip. rmax ≤ 64.
extern "C" __global__ void __launch_bounds__(128) attn_combine_lora_c(float* att, const float* part, long long heads, long long hd,
                                                                     long long splits, const __grid_constant__ struct ShrinkOp sh) {
#if __CUDA_ARCH__ >= 900
  __shared__ float av[512];
  __shared__ float tp[64]; // this head's partial dots
  const int h = blockIdx.x, m = blockIdx.y;
  combine_dots(att, part, heads, hd, splits, sh, av, tp);
  cluster_sync(); // every head's partials are in its shared memory
  const bool sums = h == 0 && threadIdx.x < sh.rmax; // rmax ≤ 64: a thread an output
  const float v = sums ? head_sum(tp + threadIdx.x, (int)heads) : 0.0f;
  cluster_sync(); // head 0 has read the others' shared memory
  if (sums) sh.t[(long long)m * sh.tStride + threadIdx.x] = v; // after the barrier: its fence waits for no store
#endif
}

// attn_decode_c and attn_decode_lora_c: the attention of decode steps of
// short sequences in one launch (attn_split_kv + a combine in two): grid
// (heads, M), a row's heads one thread-block cluster (compute capability
// 9.0; heads ≤ 16, heads/kvHeads ≤ 8, hd ≤ 128), 256 threads. The blocks of
// KV head g's group (heads/kvHeads of them, G) split its positions: block j
// of the group takes [j·P, (j + 1)·P), P = ⌈n/G⌉, DK at a time in shared
// memory, and computes there the partial softmax of every query head of
// the group (warp w: head g·G + w) — K and V read once a group, not once a
// head. Then block h merges head h's G partials in split order from
// distributed shared memory, as combine_body does, into att; with lora, it
// also computes head h's partial dots of the o_proj LoRA shrink and block 0
// adds the heads' in head order into t (as attn_combine_lora_c). Each row
// is the only new token of its sequence: the positions before its own were
// written by earlier passes, so the first slice's K and V are copied before
// the wait. Dynamic shared memory 2·DK·hd floats.
#define DK 64
template <bool LORA>
__device__ __forceinline__ void decode_body(float* att, const float* q, const struct RowMeta* rows, long long layer, long long heads,
                                            long long kvHeads, long long hd, const struct ShrinkOp* sh) {
#if __CUDA_ARCH__ >= 900
  extern __shared__ float4 kvsm[];
  float* kv = (float*)kvsm;
  __shared__ float sc[8][DK];        // a warp's scores, then weights, of the slice
  __shared__ __align__(16) float part[8][4 + 128]; // head g·G + w's partial: max, sum of exp, -, -, un-normalised output
  __shared__ float av[128];          // head h's output (the shrink's input)
  __shared__ float tp[64];           // head h's partial dots of the o shrink
  const int h = blockIdx.x, m = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = (int)(heads / kvHeads), g = h / G, j = h % G;
  const struct RowMeta rm = rows[m]; // staged by the host, or advanced by the last step's argmax
  const int n = rm.pos + 1, P = (n + G - 1) / G, lo = min(n, j * P), hi = min(n, lo + P);
  const long long kvDim = kvHeads * hd;
  const float* K = rm.k + (layer * rm.cap) * kvDim + g * hd;
  const float* V = rm.v + (layer * rm.cap) * kvDim + g * hd;
  HeadDots<8> dots; // the o shrink's, its first round before the wait
  if (lo < hi) stage_kv<DK>(kv, K, V, kvDim, (int)hd, lo, lo, min(min(hi, lo + DK), n - 1)); // written by earlier passes
  if (LORA) { // after the copies are issued, with the adapter from rm (sh's rows are rows): the warp waits on A's address, not they
    dots.init(*sh, rm.adapter, h, (int)hd);
    dots.load(0, 0);
  }
  pdl_wait(); // everything below may read what the previous kernel wrote
  pdl_trigger(); // the next launch let in only now (rmsnorm_lora's note)
  const bool mine = warp < G;
  float4 qv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), acc = qv;
  if (mine && 4 * lane < hd) qv = *(const float4*)(q + ((long long)m * heads + g * G + warp) * hd + 4 * lane);
  const float scale = 1.0f / sqrtf((float)hd);
  float mx = -INFINITY, sum = 0.0f;
  for (int a0 = lo; a0 < hi; a0 += DK) {
    const int b0 = min(hi, a0 + DK);
    if (a0 > lo) {
      __syncthreads(); // the last slice is read
      stage_kv<DK>(kv, K, V, kvDim, (int)hd, a0, a0, b0);
    } else if (b0 == n) {
      stage_kv<DK>(kv, K, V, kvDim, (int)hd, a0, n - 1, n); // the row's own position, written by the q/k/v launch
    }
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    if (mine) {
      const float* Ks = kv - (long long)a0 * hd;
      const float* Vs = kv + (DK - a0) * hd;
      for (int t0 = a0; t0 < b0; t0 += 4) {
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int u = 0; u < 4; u++)
          if (t0 + u < b0 && 4 * lane < hd) {
            const float4 k4 = *(const float4*)(Ks + (t0 + u) * hd + 4 * lane);
            d[u] = qv.x * k4.x + qv.y * k4.y + qv.z * k4.z + qv.w * k4.w;
          }
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const float v = warp_sum(d[u]);
          if (lane == 0 && t0 + u < b0) sc[warp][t0 + u - a0] = v * scale;
        }
      }
      __syncwarp();
      float s0 = lane < b0 - a0 ? sc[warp][lane] : -INFINITY, s1 = lane + 32 < b0 - a0 ? sc[warp][lane + 32] : -INFINITY;
      const float mn = fmaxf(mx, warp_max(fmaxf(s0, s1))), corr = expf(mx - mn); // the slice is not empty: mn is finite
      s0 = lane < b0 - a0 ? expf(s0 - mn) : 0.0f;
      s1 = lane + 32 < b0 - a0 ? expf(s1 - mn) : 0.0f;
      sum = sum * corr + warp_sum(s0 + s1);
      mx = mn;
      __syncwarp();
      if (lane < b0 - a0) sc[warp][lane] = s0;
      if (lane + 32 < b0 - a0) sc[warp][lane + 32] = s1;
      __syncwarp();
      acc = make_float4(acc.x * corr, acc.y * corr, acc.z * corr, acc.w * corr);
      float4 a2 = make_float4(0.0f, 0.0f, 0.0f, 0.0f); // the odd positions: two dependency chains
      if (4 * lane < hd) {
        int t = a0;
#pragma unroll 2
        for (; t + 1 < b0; t += 2) {
          const float e0 = sc[warp][t - a0], e1 = sc[warp][t + 1 - a0];
          const float4 v0 = *(const float4*)(Vs + t * hd + 4 * lane), v1 = *(const float4*)(Vs + (t + 1) * hd + 4 * lane);
          acc = make_float4(acc.x + e0 * v0.x, acc.y + e0 * v0.y, acc.z + e0 * v0.z, acc.w + e0 * v0.w);
          a2 = make_float4(a2.x + e1 * v1.x, a2.y + e1 * v1.y, a2.z + e1 * v1.z, a2.w + e1 * v1.w);
        }
        if (t < b0) {
          const float e0 = sc[warp][t - a0];
          const float4 v0 = *(const float4*)(Vs + t * hd + 4 * lane);
          acc = make_float4(acc.x + e0 * v0.x, acc.y + e0 * v0.y, acc.z + e0 * v0.z, acc.w + e0 * v0.w);
        }
      }
      acc = make_float4(acc.x + a2.x, acc.y + a2.y, acc.z + a2.z, acc.w + a2.w);
    }
  }
  if (mine) {
    if (lane == 0) {
      part[warp][0] = mx;
      part[warp][1] = sum;
    }
    if (4 * lane < hd) *(float4*)&part[warp][4 + 4 * lane] = acc;
  }
  cluster_sync(); // every block's partials are in its shared memory
  // Head h = g·G + j: its partials are slot j of the group's blocks g·G … g·G + G − 1.
  // Its outputs (and t) are stored after the last cluster barrier, whose
  // fences then wait for no global store.
  float out = 0.0f, tv = 0.0f;
  if (threadIdx.x < hd) {
    const int d = threadIdx.x;
    float ms[8], ls[8], os[8]; // every load in flight at once
#pragma unroll
    for (int s = 0; s < 8; s++) {
      ms[s] = s < G ? dsmem_f32(&part[j][0], g * G + s) : -INFINITY;
      ls[s] = s < G ? dsmem_f32(&part[j][1], g * G + s) : 0.0f;
      os[s] = s < G ? dsmem_f32(&part[j][4 + d], g * G + s) : 0.0f;
    }
    float big = -INFINITY, tot = 0.0f, o = 0.0f;
#pragma unroll
    for (int s = 0; s < 8; s++) big = fmaxf(big, ms[s]);
#pragma unroll
    for (int s = 0; s < 8; s++)
      if (ms[s] != -INFINITY) {
        const float e = expf(ms[s] - big);
        tot += e * ls[s];
        o += e * os[s];
      }
    out = o / tot;
    av[d] = out;
  }
  if (LORA) {
    __syncthreads(); // av is whole
    dots.run(av, sh->rmax, tp);
    cluster_sync(); // every head's partial dots are in its shared memory
    if (h == 0 && threadIdx.x < sh->rmax) tv = head_sum(tp + threadIdx.x, (int)heads);
  }
  cluster_sync(); // the others are done with this block's shared memory
  if (threadIdx.x < hd) att[((long long)m * heads + h) * hd + threadIdx.x] = out;
  if (LORA && h == 0 && threadIdx.x < sh->rmax) sh->t[(long long)m * sh->tStride + threadIdx.x] = tv;
#endif
}

extern "C" __global__ void __launch_bounds__(256) attn_decode_c(float* att, const float* q, const struct RowMeta* rows, long long layer,
                                                               long long heads, long long kvHeads, long long hd) {
  decode_body<false>(att, q, rows, layer, heads, kvHeads, hd, nullptr);
}

extern "C" __global__ void __launch_bounds__(256) attn_decode_lora_c(float* att, const float* q, const struct RowMeta* rows, long long layer,
                                                                    long long heads, long long kvHeads, long long hd,
                                                                    const __grid_constant__ struct ShrinkOp sh) {
  decode_body<true>(att, q, rows, layer, heads, kvHeads, hd, &sh);
}
