// attention.cu: causal grouped-query attention over each row's KV cache,
// split-K ("flash-decoding") in two kernels.
//
// attn_split: grid (heads, M, splits), block 128. Block (h, m, s) takes
// positions [s·CHUNK, min((s+1)·CHUNK, pos(m)+1)) of row m's sequence and
// query head h, which reads KV head h/(heads/kvHeads); it writes its partial
// max, sum of exp and un-normalised output to part[m, h, s, :].
// attn_combine: grid (heads, M), block 128: merges the splits,
// out[m, h·hd + d] = Σ_s e^{max_s − max} acc_s[d] / Σ_s e^{max_s − max} sum_s.
//
// Bytes per row: 2·(pos+1)·headDim·4 per KV head read (each of the
// heads/kvHeads query heads of a group reads them again, from L2);
// flops ~4·heads·(pos+1)·headDim.
#include "common.cuh"

#define CHUNK 64

extern "C" __global__ void __launch_bounds__(128) attn_split(float* part, const float* q, const struct RowMeta* rows,
    long long layer, long long heads, long long kvHeads, long long hd, long long splits) {
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
  for (int t = lo + warp; t < hi; t += 4) {
    float d = 0.0f;
    for (int i = lane; i < hd; i += 32) d += qh[i] * K[(long long)t * kvDim + i];
    d = warp_sum(d);
    if (lane == 0) sc[t - lo] = d * scale;
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
    float acc = 0.0f;
    for (int t = lo; t < hi; t++) acc += sc[t - lo] * V[(long long)t * kvDim + d];
    out[2 + d] = acc;
  }
}

extern "C" __global__ void __launch_bounds__(128) attn_combine(float* att, const float* part, long long heads, long long hd, long long splits) {
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
