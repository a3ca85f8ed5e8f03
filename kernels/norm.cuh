// norm.cuh: the RMSNorm's scale, shared by rmsnorm.cu's kernels and
// nf4_lut's fused norm (the same additions in the same order: the same
// values).
#pragma once
#include "gemv.cuh"

// block_sum is the sum of v over the block's threads (each warp's, then the
// warps' in order); every thread of the block gets it.
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int j = 0; j < (int)(blockDim.x >> 5); j++) t += part[j];
    part[0] = t;
  }
  __syncthreads();
  return part[0];
}

// rms_scale is 1/sqrt(ss/H + eps) for a row's sum of squares ss (the mean
// rounded to fp32, as transformers computes it).
__device__ __forceinline__ float rms_scale(double ss, long long H, float eps) {
  return 1.0f / (float)sqrt((double)((float)(ss / (double)H) + eps));
}

// inv_rms is 1/sqrt(mean(x²) + eps) of one row, the sum in double over the
// block's threads; every thread of the block gets it. A thread's values are
// loaded 8 at a time, all in flight together, and added in k order (one
// dependent load a trip made a 2,048-wide row eight round trips at 256
// threads: most of nf4_lut's q/k/v time with the norm inside, Nsight Compute).
__device__ float inv_rms(const float* xr, long long H, float eps) {
  constexpr int U = 8;
  double ss = 0;
  long long k = threadIdx.x;
  for (; k + (U - 1) * (long long)blockDim.x < H; k += U * (long long)blockDim.x) {
    float v[U];
#pragma unroll
    for (int u = 0; u < U; u++) v[u] = xr[k + u * (long long)blockDim.x];
#pragma unroll
    for (int u = 0; u < U; u++) ss += (double)v[u] * (double)v[u];
  }
  for (; k < H; k += blockDim.x) ss += (double)xr[k] * (double)xr[k];
  return rms_scale(block_sum(ss), H, eps);
}

// norm_out writes o[k] = w[k]·(x[k]·inv) for the block's k (rmsnorm's
// values), a thread's loads 8 at a time, all in flight (as inv_rms).
__device__ __forceinline__ void norm_out(float* o, const float* xr, const float* w, long long H, float inv) {
  constexpr int U = 8;
  const long long bd = blockDim.x;
  long long k = threadIdx.x;
  for (; k + (U - 1) * bd < H; k += U * bd) {
    float a[U], b[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      a[u] = xr[k + u * bd];
      b[u] = w[k + u * bd];
    }
#pragma unroll
    for (int u = 0; u < U; u++) o[k + u * bd] = b[u] * (a[u] * inv);
  }
  for (; k < H; k += bd) o[k] = w[k] * (xr[k] * inv);
}

// norm_out with w's values already in wn (wn[u] is w at k = threadIdx.x +
// u·blockDim, loaded by the caller before its wait; H ≤ 8·blockDim).
__device__ __forceinline__ void norm_out(float* o, const float* xr, const float (&wn)[8], long long H, float inv) {
  const long long bd = blockDim.x, k = threadIdx.x;
  float a[8];
#pragma unroll
  for (int u = 0; u < 8; u++) a[u] = k + u * bd < H ? xr[k + u * bd] : 0.0f;
#pragma unroll
  for (int u = 0; u < 8; u++)
    if (k + u * bd < H) o[k + u * bd] = wn[u] * (a[u] * inv);
}
