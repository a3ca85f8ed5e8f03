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
// out[m, h·hd + d] = Σ_s e^{max_s − max} acc_s[d] / Σ_s e^{max_s − max} sum_s.
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

extern "C" __global__ void __launch_bounds__(128) attn_combine(float* att, const float* part, long long heads, long long hd, long long splits) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int h = blockIdx.x, m = blockIdx.y;
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
  }
}
