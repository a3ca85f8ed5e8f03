// sample.cu: greedy token choice on the device, so only ids come back.
//
// argmax: one block per row of logits [M, V]; the largest value, the lowest
// index on ties (as torch.argmax and the CPU reference). Bytes: M·V·4.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) argmax(int32_t* ids, const float* logits, long long V) {
  const float* row = logits + (long long)blockIdx.x * V;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (v == best && i < idx)) {
      best = v;
      idx = i;
    }
  }
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
    ids[blockIdx.x] = idx;
  }
}
