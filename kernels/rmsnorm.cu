// rmsnorm.cu: RMSNorm and the embedding gather.
//
// rmsnorm: out[i, :] = x[src(i), :] / sqrt(mean(x²) + eps) · w, one block per
// row; src(i) = rows[i] when a row list is given (the final norm of only the
// rows that need logits), else i. The mean is summed in double and rounded
// once, as the CPU reference does. Bytes per call: 2·M·H·4 + H·4; flops ~4·M·H.
//
// embed: x[m, :] = table[tok(m), :], bf16 or fp32 rows widened to fp32; and
// each row's RoPE table rope[m, j] = (cos, sin)(pos(m)·inv_freq[j]), the angle
// in fp32 and cos/sin in double rounded once, as the CPU reference does; the
// q/k/v epilogues of every layer read it. Bytes: M·H·(2 or 4) read, M·H·4 +
// M·headDim·4 written.
#include "common.cuh"

// inv_rms is 1/sqrt(mean(x²) + eps) of one row, the sum in double over the
// block's threads; every thread of the block gets it.
__device__ float inv_rms(const float* xr, long long H, float eps) {
  __shared__ double part[32];
  double ss = 0;
  for (long long k = threadIdx.x; k < H; k += blockDim.x) ss += (double)xr[k] * (double)xr[k];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int j = 0; j < (int)(blockDim.x >> 5); j++) t += part[j];
    part[0] = t;
  }
  __syncthreads();
  return 1.0f / (float)sqrt((double)((float)(part[0] / (double)H) + eps));
}

extern "C" __global__ void rmsnorm(float* out, const float* x, const float* w, const int32_t* rows,
                                   long long H, float eps) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int i = blockIdx.x;
  const float* xr = x + (long long)(rows ? rows[i] : i) * H;
  const float inv = inv_rms(xr, H, eps);
  float* o = out + (long long)i * H;
  for (long long k = threadIdx.x; k < H; k += blockDim.x) o[k] = w[k] * (xr[k] * inv);
}

extern "C" __global__ void embed(float* x, const void* table, long long isBF16, const struct RowMeta* rows, long long H,
                                 float* rope, const float* invFreq, long long half) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int m = blockIdx.x;
  const long long tok = rows[m].tok;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float ang = (float)rows[m].pos * invFreq[j];
    rope[((long long)m * half + j) * 2] = (float)cos((double)ang);
    rope[((long long)m * half + j) * 2 + 1] = (float)sin((double)ang);
  }
  for (long long k = threadIdx.x; k < H; k += blockDim.x) {
    x[m * H + k] = isBF16 ? bf16f(((const uint16_t*)table)[tok * H + k]) : ((const float*)table)[tok * H + k];
  }
}

// rmsnorm_lora: rmsnorm (blocks with blockIdx.y == 0) fused with the LoRA
// shrink of the modules that read its output (q/k/v, or gate/up): block
// (i, 1 + b) recomputes row i's norm the same way into shared memory (H
// floats of dynamic shared memory), then computes per (1, 2, 4 or 8) outputs
// idx = per·b + o, 8/per warps each (a share of k each, summed in warp order):
// t[i, slot, j] = Σ_k A[adapter(i)][slot][j, k]·xn[i, k] (slot = idx / rmax,
// j = idx % rmax; 0 without an adapter or past its rank), so the shrink needs
// no launch of its own. per is the launcher's: few rows take 1 (enough blocks
// to fill the card), many 8 (the norm computed once for 8 outputs). (Until
// the fourth session a block an output always: 3,136 blocks at batch 64, 17 µs
// a launch on an H200; 8 always: 448, but 7 blocks at batch 1.)
extern "C" __global__ void rmsnorm_lora(float* out, const float* x, const float* w, long long H, float eps,
                                        const __grid_constant__ struct ShrinkOp op, long long per) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  extern __shared__ float xn[]; // [H]: row i normed, for the shrink blocks
  __shared__ float part[8];
  const int i = blockIdx.x;
  const float* xr = x + (long long)i * H;
  const float inv = inv_rms(xr, H, eps); // exactly as rmsnorm computes it
  if (blockIdx.y == 0) {
    float* o = out + (long long)i * H;
    for (long long k = threadIdx.x; k < H; k += blockDim.x) o[k] = w[k] * (xr[k] * inv);
    return;
  }
  for (long long k = threadIdx.x; k < H; k += blockDim.x) xn[k] = w[k] * (xr[k] * inv); // the same values
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wpo = 8 / (int)per; // warps an output
  const int idx = (blockIdx.y - 1) * (int)per + warp / wpo, q = warp % wpo;      // output, and this warp's share
  const int slot = idx / op.rmax, j = idx % op.rmax, ad = op.rows[i].adapter;
  float s = 0.0f;
  if (idx < op.nslots * op.rmax && ad >= 0 && op.A[slot][ad] != nullptr && j < op.rank[slot][ad]) { // the same for the whole warp
    const float* a = op.A[slot][ad] + (long long)j * H;
    if (H % 4 == 0) { // 16-byte loads, four in flight
      const float4* a4 = (const float4*)a;
      const float4* x4 = (const float4*)xn;
      const long long step = 32 * wpo;
      float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      long long k = lane + 32 * q;
      for (; k + 3 * step < H / 4; k += 4 * step)
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const float4 av = __ldg(a4 + k + step * u), xv = x4[k + step * u];
          s4[u] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
        }
      for (; k < H / 4; k += step) {
        const float4 av = __ldg(a4 + k), xv = x4[k];
        s4[0] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
      }
      s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    } else {
      for (long long k = lane + 32 * q; k < H; k += 32 * wpo) s += __ldg(a + k) * xn[k];
    }
    s = warp_sum(s);
  }
  if (wpo > 1) { // the output's warps' sums, in warp order
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (q != 0) return;
    for (int u = 1; u < wpo; u++) s += part[warp + u];
  }
  if (lane == 0 && idx < op.nslots * op.rmax) op.t[(long long)i * op.tStride + slot * op.rmax + j] = s;
}

// shrink_rows: the LoRA shrink of long passes (more than prefillMin rows; the
// launcher takes it for short K only), t[m, slot, j] = Σ_k A[adapter(m)][slot][j, k]·x[m, k]
// for every output of a row by one warp: block b takes rows 8b … 8b + 7, a
// warp each; the lanes walk k in 16-byte steps and hold 16 outputs' sums at a
// time (each output's A row read as its own stream), then reduce them across
// the warp. The 8 warps read the same A rows when their rows share an adapter:
// for K = 2,048 (A 128 KB) mostly from L1; for K = 11,008 (704 KB) the warps
// drift apart and A comes from L2 again for each row, as in lora_shrink (a
// block an output). Zeros for rows without an adapter and ranks below rmax.
// Needs K % 4 == 0 (lora_shrink too).
extern "C" __global__ void __launch_bounds__(256) shrink_rows(const __grid_constant__ struct ShrinkOp op, long long M) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int lane = threadIdx.x & 31, m = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (m >= M) return;
  const int ad = op.rows[m].adapter, outs = op.nslots * op.rmax, K4 = op.K / 4;
  const float4* x = (const float4*)(op.x + (long long)m * op.K);
  for (int c0 = 0; c0 < outs; c0 += 16) {
    const float4* a[16]; // each output's A row, or null (a zero)
#pragma unroll
    for (int o = 0; o < 16; o++) {
      const int idx = c0 + o, slot = idx / op.rmax, j = idx % op.rmax;
      a[o] = idx < outs && ad >= 0 && op.A[slot][ad] != nullptr && j < op.rank[slot][ad] ? (const float4*)(op.A[slot][ad] + (long long)j * op.K) : nullptr;
    }
    float s[16] = {};
    for (int k = lane; k < K4; k += 32) {
      const float4 xv = __ldg(x + k);
#pragma unroll
      for (int o = 0; o < 16; o++)
        if (a[o]) {
          const float4 av = __ldg(a[o] + k);
          s[o] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
        }
    }
#pragma unroll
    for (int o = 0; o < 16; o++) {
      const float v = warp_sum(s[o]);
      if (lane == 0 && c0 + o < outs) op.t[(long long)m * op.tStride + c0 + o] = v; // slot·rmax + j
    }
  }
}
