// grid_barrier.cu — standalone benchmark of what a persistent decode-step
// kernel (issue 11's route: one resident kernel a step, the layers as phases)
// pays to move from one phase to the next, against what the engine pays today
// (a kernel boundary inside a CUDA graph, with programmatic dependent launch).
// Build and run on the GPU machine: BENCHES=grid_barrier kernels/dev/run.sh
//
// Versions (each: µs a phase, over many phases, after a warm-up):
//   graph   a kernel a phase, replayed as a CUDA graph (today's engine, no PDL)
//   v1      one resident kernel, a grid-wide barrier a phase: each block's
//           thread 0 adds to a counter with release semantics and spins on
//           it (acquire loads) until every block of the phase has arrived
//   v2      v1 with the whole grid's 16 KB of "weights" for the next phase
//           requested (prefetch.global.L2) before the barrier, as a step
//           kernel would, to see what the prefetch costs the barrier
//   v3      no barrier: each phase's blocks wait only for the 8 blocks of the
//           previous phase whose outputs they read (per-block flags), the
//           dataflow a persistent kernel can use instead of full barriers
// Each phase does a little work (a block sums 1,024 floats from the previous
// phase's outputs) so that the timings include the data dependency.
// The values are not checked (v3's readers may lag a phase behind a writer
// of the other buffer): this measures time only.
#include "common.cuh"
#include <algorithm>
#include <vector>

constexpr int WORK = 1024; // floats a block reads from the previous phase

// phase_work: block b of phase p sums WORK floats of the previous phase's
// output (blocks b … b+7, rotating) and writes one float.
__device__ __forceinline__ void phase_work(const float* in, float* out, int nblocks) {
  __shared__ float red[32];
  float s = 0.0f;
  for (int i = threadIdx.x; i < WORK; i += blockDim.x) s += in[((blockIdx.x + i / 128) % nblocks) * 128 + i % 128];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
    for (int i = 0; i < 128; i++) out[blockIdx.x * 128 + i] = t + i;
  }
  __syncthreads();
}

__global__ void one_phase(const float* in, float* out) { phase_work(in, out, gridDim.x); }

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// grid_barrier: every block arrives at the counter (monotonic: phase p waits
// for it to reach gridDim.x · (p + 1)).
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    red_release(counter, 1);
    while (ld_acquire(counter) < target) {
    }
  }
  __syncthreads();
}

// resident: phases phases in one launch; mode 1 barrier, 2 barrier + L2
// prefetch of the next phase's weights, 3 per-block flags (wait for the 8
// blocks read).
__global__ void resident(float* bufs, unsigned* counter, unsigned* flags, const float* weights, size_t wbytes, int phases, int mode) {
  const int nb = gridDim.x;
  for (int p = 0; p < phases; p++) {
    const float* in = bufs + (size_t)(p & 1) * nb * 128;
    float* out = bufs + (size_t)((p + 1) & 1) * nb * 128;
    if (mode == 3 && p > 0) { // wait for the blocks whose outputs this one reads
      if (threadIdx.x < 8)
        while (ld_acquire(flags + (blockIdx.x + threadIdx.x) % nb) < (unsigned)p) {
        }
      __syncthreads();
    }
    phase_work(in, out, nb);
    if (mode == 3) {
      if (threadIdx.x == 0) {
        __threadfence();
        red_release(flags + blockIdx.x, 1);
      }
      continue;
    }
    if (mode == 2) { // the next phase's weights: this block's share, to L2
      const size_t lines = wbytes / 128, per = (lines + nb - 1) / nb;
      for (size_t l = blockIdx.x * per + threadIdx.x; l < min(lines, (blockIdx.x + 1) * per); l += blockDim.x)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(weights + l * 32));
    }
    grid_barrier(counter, (unsigned)nb * (p + 1));
  }
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("%s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  const int phases = 2000;
  const size_t wbytes = 40u << 20; // a layer's NF4 weights at the 3B shape, about
  float* weights;
  CK(cudaMalloc(&weights, wbytes));
  CK(cudaMemset(weights, 0, wbytes));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  printf("%-34s %8s %10s\n", "version", "blocks", "µs/phase");
  for (int per_sm : {1, 2}) {
    const int nb = per_sm * prop.multiProcessorCount;
    float* bufs;
    unsigned *counter, *flags;
    CK(cudaMalloc(&bufs, 2 * (size_t)nb * 128 * 4));
    CK(cudaMemset(bufs, 0, 2 * (size_t)nb * 128 * 4));
    CK(cudaMalloc(&counter, 4));
    CK(cudaMalloc(&flags, nb * 4));
    // graph: a kernel a phase.
    {
      const int n = 200;
      cudaGraph_t g;
      cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      for (int p = 0; p < n; p++) one_phase<<<nb, 256, 0, st>>>(bufs + (size_t)(p & 1) * nb * 128, bufs + (size_t)((p + 1) & 1) * nb * 128);
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiateWithFlags(&ge, g, 0));
      CK(cudaGraphLaunch(ge, st));
      CK(cudaEventRecord(a, st));
      CK(cudaGraphLaunch(ge, st));
      CK(cudaEventRecord(b, st));
      CK(cudaEventSynchronize(b));
      float ms;
      CK(cudaEventElapsedTime(&ms, a, b));
      printf("%-34s %8d %10.2f\n", "graph: a kernel a phase", nb, 1000 * ms / n);
      cudaGraphExecDestroy(ge);
      cudaGraphDestroy(g);
    }
    const char* names[] = {"", "v1 grid barrier", "v2 barrier + L2 prefetch of 40 MB", "v3 flags of the 8 blocks read"};
    for (int mode = 1; mode <= 3; mode++) {
      float best = 1e30f;
      for (int rep = 0; rep < 3; rep++) {
        CK(cudaMemsetAsync(counter, 0, 4, st));
        CK(cudaMemsetAsync(flags, 0, nb * 4, st));
        CK(cudaEventRecord(a, st));
        resident<<<nb, 256, 0, st>>>(bufs, counter, flags, weights, wbytes, phases, mode); // nb ≤ resident blocks: every block runs at once
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        CK(cudaGetLastError());
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        best = std::min(best, ms);
      }
      printf("%-34s %8d %10.2f\n", names[mode], nb, 1000 * best / phases);
    }
    cudaFree(bufs);
    cudaFree(counter);
    cudaFree(flags);
  }
  return 0;
}
