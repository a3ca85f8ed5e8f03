// sample.cu: greedy token choice on the device, so only ids come back.
//
// argmax: one block per row of logits [M, V]; the largest value, the lowest
// index on ties (as torch.argmax and the CPU reference), or −1 when the row
// holds a NaN or infinite logit (the engine reports it). Bytes: M·V·4.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) argmax(int32_t* ids, const float* logits, long long V) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const float* row = logits + (long long)blockIdx.x * V;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  bool bad = false; // a NaN or infinite logit: the row has no meaningful argmax
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    bad |= !isfinite(v);
    if (v > best || (v == best && i < idx)) {
      best = v;
      idx = i;
    }
  }
  bad = __syncthreads_or(bad);
  __shared__ float bv[32];
  __shared__ int bi[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int j = __shfl_xor_sync(0xffffffffu, idx, o);
    if (v > best || (v == best && j < idx)) {
      best = v;
      idx = j;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    bv[warp] = best;
    bi[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
      if (bv[w] > best || (bv[w] == best && bi[w] < idx)) {
        best = bv[w];
        idx = bi[w];
      }
    }
    ids[blockIdx.x] = bad ? -1 : idx;
  }
}

// target_logprob: out[i] = log softmax(logits[i, :])[targets[i]], one block
// per row (the teacher-forced log-likelihood of an expected answer), the sum
// of exponentials in double. Bytes: M·V·4 read, M·4 written.
extern "C" __global__ void __launch_bounds__(1024) target_logprob(float* out, const float* logits, const int32_t* targets, long long V) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const float* row = logits + (long long)blockIdx.x * V;
  __shared__ float smax[32];
  __shared__ double ssum[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
  mx = warp_max(mx);
  if (lane == 0) smax[warp] = mx;
  __syncthreads();
  mx = smax[0];
  for (int w = 1; w < nw; w++) mx = fmaxf(mx, smax[w]);
  double s = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += (double)expf(row[i] - mx);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) ssum[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < nw; w++) t += ssum[w];
    out[blockIdx.x] = (float)((double)row[targets[blockIdx.x]] - (double)mx - log(t));
  }
}
