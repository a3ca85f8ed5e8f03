// attention.cu: causal grouped-query attention over each row's KV cache,
// split-K ("flash-decoding") in two kernels.
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
// positions, H200); v2 (this file) — CHUNK 32, 4 positions in flight a warp.
#include "common.cuh"

#define CHUNK 32

extern "C" __global__ void __launch_bounds__(128) attn_split(float* part, const float* q, const struct RowMeta* rows,
    long long layer, long long heads, long long kvHeads, long long hd, long long splits) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int h = blockIdx.x, m = blockIdx.y, s = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const struct RowMeta rm = rows[m];
  const int n = rm.pos + 1, lo = s * CHUNK, hi = min(n, lo + CHUNK);
  float* out = part + (((long long)m * heads + h) * splits + s) * (hd + 2);
  if (lo >= hi) { // nothing to see in this split
    if (threadIdx.x == 0) {
      out[0] = -INFINITY;
      out[1] = 0.0f;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[2 + d] = 0.0f;
    return;
  }
  const long long kvDim = kvHeads * hd, g = h / (heads / kvHeads);
  const float* qh = q + (long long)m * heads * hd + h * hd;
  const float* K = rm.k + (layer * rm.cap) * kvDim + g * hd;
  const float* V = rm.v + (layer * rm.cap) * kvDim + g * hd;
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
            const float4 kv = *(const float4*)(K + (long long)t * kvDim + i);
            d[u] += qv[c].x * kv.x + qv[c].y * kv.y + qv[c].z * kv.z + qv[c].w * kv.w;
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
      for (int u = 0; u < 8; u++) acc[u] += sc[t + u - lo] * V[(long long)(t + u) * kvDim + d];
    }
    for (; t < hi; t++) acc[0] += sc[t - lo] * V[(long long)t * kvDim + d];
    out[2 + d] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

// combine_body merges head h of row m into att (and keeps the values in
// av[] for the LoRA shrink when av is given).
__device__ __forceinline__ void combine_body(float* att, const float* part, long long heads, long long hd, long long splits,
                                             int h, int m, float* av) {
  const float* p = part + ((long long)m * heads + h) * splits * (hd + 2);
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

// attn_combine_lora is attn_combine with the o_proj LoRA shrink of decode
// steps folded in (one launch a layer fewer): head h's block also computes
// the partial dots A[j, h·hd … h·hd + hd)·att of its row's adapter into
// tp[m, h, j]; the last of the row's head blocks to finish (a counter a row,
// reset by it for the next pass) adds the heads' partials in head order —
// the same sum whichever block is last — into t[m, j], zeros where lora_shrink
// writes zeros. sh is the o shrink (one slot, K = heads·hd).
extern "C" __global__ void __launch_bounds__(128) attn_combine_lora(float* att, const float* part, long long heads, long long hd,
    long long splits, const __grid_constant__ struct ShrinkOp sh, float* tp, int* count) {
  pdl_trigger();
  __shared__ float av[512];
  __shared__ bool last;
  const int h = blockIdx.x, m = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // A's values for this head's columns, warp w taking outputs w, w + 4, …:
  // 16 outputs × 128 columns a round, the first round's loads issued before
  // the wait (A and the row metadata are not written by kernels).
  const int ad = sh.rows[m].adapter;
  const float* A = ad >= 0 ? sh.A[0][ad] : nullptr;
  const int rank = A ? sh.rank[0][ad] : 0;
  float a[4][4];
  auto load = [&](int j0, int d0) {
#pragma unroll
    for (int jj = 0; jj < 4; jj++)
#pragma unroll
      for (int dd = 0; dd < 4; dd++) {
        const int j = j0 + warp + 4 * jj, d = d0 + lane + 32 * dd;
        a[jj][dd] = j < rank && d < hd ? __ldg(A + (long long)j * sh.K + h * hd + d) : 0.0f;
      }
  };
  load(0, 0);
  pdl_wait(); // everything below may read what the previous kernel wrote
  combine_body(att, part, heads, hd, splits, h, m, av);
  __syncthreads();
  for (int j0 = 0; j0 < sh.rmax; j0 += 16) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int d0 = 0; d0 < hd; d0 += 128) {
      if (j0 > 0 || d0 > 0) load(j0, d0);
#pragma unroll
      for (int jj = 0; jj < 4; jj++)
#pragma unroll
        for (int dd = 0; dd < 4; dd++)
          if (d0 + lane + 32 * dd < hd) s[jj] += a[jj][dd] * av[d0 + lane + 32 * dd];
    }
#pragma unroll
    for (int jj = 0; jj < 4; jj++) {
      const int j = j0 + warp + 4 * jj;
      const float v = warp_sum(s[jj]);
      if (lane == 0 && j < sh.rmax) tp[((long long)m * heads + h) * sh.rmax + j] = v;
    }
  }
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

// attn_flash_<D>: causal attention of prefill passes (flash attention on the
// CUDA cores, fp32 throughout; dev: kernels/dev/attn_prefill.cu v1). The pass
// is cut into tiles of up to FQ consecutive rows of one sequence (tiles[i] =
// {first row, rows}, built by the host); block (tile, h) takes the tile's
// rows for query head h over the keys 0 … its last row's position, FK
// positions at a time: S = q·Kᵀ·scale (a thread 4 rows × 4 positions 16
// apart), the causal mask by each row's own position, the online softmax
// (row max and sum across the 16 threads of a row group by shuffles), P
// through shared memory, O += P·V (a thread 4 rows × D/16 dims, in
// registers); O / l at the end into att[m, h·D + d], as attn_combine writes
// it. 256 threads; dynamic shared memory (FQ·D + FK·(D+4) + FK·D + FQ·(FK+4))·4.
// Bytes per block: the tile's K and V once (the heads of a group read them
// again, from L2); flops 4·FQ·(pos+1)·D. The flash-decoding pair above
// would take a block per (head, row, 32 positions): 2.1 M blocks a layer for
// one 2,048-token prompt.
constexpr int FQ = 64, FK = 64;

template <int D>
__device__ void attn_flash_body(float* __restrict__ att, const float* __restrict__ q, const struct RowMeta* __restrict__ rows,
                                const int* __restrict__ tiles, int layer, int heads, int kvHeads) {
  constexpr int LDK = D + 4, LDP = FK + 4, DT = D / 16; // K's padded rows; P's; dims a thread
  extern __shared__ float sm[];
  float* qs = sm;             // [FQ][D]
  float* ks = qs + FQ * D;    // [FK][LDK]
  float* vs = ks + FK * LDK;  // [FK][D]
  float* ps = vs + FK * D;    // [FQ][LDP]
  __shared__ int qpos[FQ];    // each row's position; −1 past the tile
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int h = blockIdx.y, r0 = tiles[2 * blockIdx.x], n = tiles[2 * blockIdx.x + 1];
  const struct RowMeta rm = rows[r0];
  const long long kvDim = (long long)kvHeads * D, g = h / (heads / kvHeads);
  const float* K = rm.k + (long long)layer * rm.cap * kvDim + g * D;
  const float* V = rm.v + (long long)layer * rm.cap * kvDim + g * D;
  const int tid = threadIdx.x, rg = tid >> 4, cg = tid & 15; // rows 4rg … 4rg + 3; positions cg + 16j; dims DT·cg …
  const float scale = 1.0f / sqrtf((float)D);
  for (int i = tid; i < FQ; i += blockDim.x) qpos[i] = i < n ? rows[r0 + i].pos : -1;
  for (int i = tid; i < FQ * D / 4; i += blockDim.x) {
    const int r = i / (D / 4), c = i % (D / 4);
    *(float4*)(qs + r * D + 4 * c) = r < n ? *(const float4*)(q + ((long long)(r0 + r) * heads + h) * D + 4 * c) : make_float4(0, 0, 0, 0);
  }
  __syncthreads();
  int last = 0; // the keys the tile needs: 0 … its largest position
  for (int i = 0; i < n; i++) last = max(last, qpos[i]);
  float acc[4][DT] = {}, mrow[4], lrow[4];
#pragma unroll
  for (int i = 0; i < 4; i++) mrow[i] = -INFINITY, lrow[i] = 0.0f;
  for (int kv0 = 0; kv0 <= last; kv0 += FK) {
    __syncthreads(); // the previous tile's K, V and P are read
    for (int i = tid; i < FK * D / 4; i += blockDim.x) {
      const int r = i / (D / 4), c = i % (D / 4), pos = kv0 + r;
      float4 kk = make_float4(0, 0, 0, 0), vv = kk;
      if (pos <= last) {
        kk = *(const float4*)(K + pos * kvDim + 4 * c);
        vv = *(const float4*)(V + pos * kvDim + 4 * c);
      }
      *(float4*)(ks + r * LDK + 4 * c) = kk;
      *(float4*)(vs + r * D + 4 * c) = vv;
    }
    __syncthreads();
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
    // The row group's 16 threads are lanes 0–15 or 16–31 of one warp.
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int pq = qpos[4 * rg + i];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        s[i][j] = kv0 + cg + 16 * j > pq ? -INFINITY : s[i][j] * scale;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mnew = fmaxf(mrow[i], mx);
      const float mref = mnew == -INFINITY ? 0.0f : mnew; // no key yet (or a row past the tile): exp gives 0, not NaN
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        s[i][j] = expf(s[i][j] - mref);
        sum += s[i][j];
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float corr = expf(mrow[i] - mref);
      lrow[i] = lrow[i] * corr + sum;
      mrow[i] = mnew;
#pragma unroll
      for (int e = 0; e < DT; e++) acc[i][e] *= corr;
#pragma unroll
      for (int j = 0; j < 4; j++) ps[(4 * rg + i) * LDP + cg + 16 * j] = s[i][j];
    }
    __syncthreads();
    for (int j = 0; j < FK; j++) {
      float vj[DT];
#pragma unroll
      for (int e = 0; e < DT; e += 4) *(float4*)(vj + e) = *(const float4*)(vs + j * D + DT * cg + e);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float p = ps[(4 * rg + i) * LDP + j];
#pragma unroll
        for (int e = 0; e < DT; e++) acc[i][e] += p * vj[e];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int r = 4 * rg + i;
    if (r >= n) continue;
    float* out = att + ((long long)(r0 + r) * heads + h) * D + DT * cg;
    const float inv = 1.0f / lrow[i];
#pragma unroll
    for (int e = 0; e < DT; e += 4) *(float4*)(out + e) = make_float4(acc[i][e] * inv, acc[i][e + 1] * inv, acc[i][e + 2] * inv, acc[i][e + 3] * inv);
  }
}

#define ATTN_FLASH(D)                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(256) attn_flash_##D(float* att, const float* q, const struct RowMeta* rows,           \
                                                                   const int* tiles, long long layer, long long heads, long long kvHeads) { \
    attn_flash_body<D>(att, q, rows, tiles, (int)layer, (int)heads, (int)kvHeads);                                                   \
  }
ATTN_FLASH(64)
ATTN_FLASH(128)
