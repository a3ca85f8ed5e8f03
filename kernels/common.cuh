// common.cuh: the structs shared by the kernels and their Go launchers
// (kernels/desc.go mirrors them field for field; TestStructLayout checks it),
// and small device helpers. Conventions: row-major, fp32 activations and
// accumulation, weights [N, K] as PyTorch stores them (y = W·x).
#pragma once
#include <stdint.h>

#define MAX_ADAPTERS 8 // LoRA adapters one model can carry at once
#define MAX_SLOTS 3    // modules sharing one LoRA shrink (q, k, v)
#define WARP 32

// Formats of a weight matrix.
#define FMT_NF4 0  // bitsandbytes NF4 codes, two per byte, element 2j in the high nibble
#define FMT_BF16 1 // bfloat16
#define FMT_F32 2  // float32
#define FMT_NF4_TILED 3 // NF4 whose codes are reordered within each 1024-column tile (coalesced x loads)
#define FMT_NF4_LUT 5   // NF4 whose codes are reordered per (row, 256 columns) for nf4_lut and mmas_nf4 (4: an older layout)

// Epilogues of the matrix-vector kernel.
#define MODE_STORE 0  // y[m, n] = W·x + b (+ LoRA)
#define MODE_RESID 1  // y[m, n] += W·x + b (+ LoRA): residual add
#define MODE_QKV 2    // three matrices q, k, v: bias, RoPE, q to y, k/v into each row's cache
#define MODE_GATEUP 3 // two matrices gate, up: y[m, n] = silu(gate)·up

// Mat is one weight matrix on the device (224 bytes).
struct Mat {
  const uint8_t* packed;   // FMT_NF4: [N*K/2] codes
  const uint16_t* bf16;    // FMT_BF16: [N*K]
  const float* f32;        // FMT_F32: [N*K]
  const uint8_t* qabsmax;  // NF4 double quantisation: [N*K/block] 8-bit codes into code[], or null
  const float* absmax;     // NF4 without double quantisation: [N*K/block] fp32 scales
  const float* nested;     // NF4 double quantisation: [ceil(blocks/nestedBlock)] scales of the codes
  const float* code;       // NF4 double quantisation: the 256-entry dynamic map
  const float* bias;       // [N], or null
  const float* loraB[MAX_ADAPTERS]; // [N, rank] per adapter; null where the adapter skips this matrix
  float loraScale[MAX_ADAPTERS];
  int32_t loraRank[MAX_ADAPTERS];
  float offset;            // NF4 double quantisation: the mean added back to every scale
  int32_t N, K;
  int32_t fmt;
  int32_t blockShift;      // log2 of the NF4 block size (64 → 6)
  int32_t nestedShift;     // log2 of the nested block size (256 → 8)
  int32_t round;           // dequantised weights rounded to: 0 bf16, 1 f16, 2 not rounded
  int32_t loraSlot;        // where this matrix's A·x sits in the shrink buffer; −1 = no LoRA
};

// RowMeta describes one row of a batch (32 bytes).
struct RowMeta {
  int32_t tok;     // token id
  int32_t pos;     // position in its sequence (the cache slot this row writes)
  int32_t adapter; // −1 = base model
  int32_t cap;     // cache capacity of its sequence, in tokens
  float* k;        // its sequence's K cache [layers, cap, kvHeads*headDim]
  float* v;        // its sequence's V cache, same shape
};

// GemvOp is one launch of the matrix-vector kernel.
struct GemvOp {
  struct Mat mat[3];
  const float* x;        // input [M, K]
  float* y;              // output, see the mode
  const float* t;        // LoRA A·x for this op [M, tStride], or null
  const struct RowMeta* rows;
  const float* rope;     // MODE_QKV: [M, headDim/2, 2] cos and sin of each row's angles
  int32_t nmat, mode;
  int32_t ldy;           // row stride of y, in floats
  int32_t tStride, rmax; // shrink buffer: floats per row, floats per slot
  int32_t layer, headDim, kvDim;
};

// ShrinkOp computes t[m, slot, j] = Σ_k A[adapter(m)][slot][j, k]·x[m, k].
struct ShrinkOp {
  const float* A[MAX_SLOTS][MAX_ADAPTERS]; // [rank, K], or null
  int32_t rank[MAX_SLOTS][MAX_ADAPTERS];
  const float* x;        // [M, K]
  float* t;              // [M, tStride]
  const struct RowMeta* rows;
  int32_t nslots, K, tStride, rmax;
};

// Programmatic dependent launch (Hopper, PTX built for compute_90; a no-op
// in the compute_80 build). A kernel launched as a programmatic dependent
// starts as soon as every block of its predecessor has called pdl_trigger or
// exited: the small kernels trigger at their top (rmsnorm_lora, lora_shrink
// and the attention combines just after their wait: measured faster), so the
// matrix kernel after them is launched and fetches its first weights (its
// independent prologue) while they run; the persistent matrix kernels never
// trigger, so their dependents start as they exit (triggering earlier let the
// next kernel's blocks take multiprocessors the matrix kernel's own late
// blocks needed: kernels/PERF.md, v9) — but for the split-K products
// (mmas_nf4, wgmma_split_64), which trigger just after their wait, so that
// their finish launches and computes its LoRA terms while they run. pdl_wait
// then blocks until the predecessor grid has finished and its writes are
// visible. Every kernel calls pdl_wait in every thread before reading
// anything its predecessor wrote, so the ordering is transitive along the
// whole pass; a kernel whose predecessor triggers only after its own wait may
// read, before its wait, what the launches before that predecessor wrote.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

#if __CUDA_ARCH__ >= 900
// The thread-block cluster's barrier (every thread of every block of the
// cluster; memory operations before it are visible to all after it), and a
// value of another block's shared memory: the one at shared address a of
// this block's, in the block of rank r.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t dsmem_addr(const void* p, uint32_t r) {
  uint32_t a;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"((uint32_t)__cvta_generic_to_shared(p)), "r"(r));
  return a;
}
__device__ __forceinline__ float dsmem_f32(const float* p, uint32_t r) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(dsmem_addr(p, r)));
  return v;
}
__device__ __forceinline__ double dsmem_f64(const double* p, uint32_t r) {
  double v;
  asm volatile("ld.shared::cluster.f64 %0, [%1];\n" : "=d"(v) : "r"(dsmem_addr(p, r)));
  return v;
}
#endif

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum adds v over the block; thread 0 gets the total (the others their
// warp's share). Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    v = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) v += part[w];
  }
  return v;
}

// bf16 bits → float, exact.
__device__ __forceinline__ float bf16f(uint16_t b) { return __uint_as_float(((uint32_t)b) << 16); }

// cp_async16 copies 16 bytes from global to shared memory without a
// register (L2 only).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem));
}

// cp_async_wait_after waits for this thread's copies (which it may then read
// without a barrier) only once dep — any bits of values loaded meanwhile —
// has arrived: ptxas would otherwise move the wait above loads issued after
// the copies, and the two trips run one after the other.
__device__ __forceinline__ void cp_async_wait_after(uint32_t dep) {
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n cp.async.commit_group;\n @p cp.async.wait_group 0;\n @!p cp.async.wait_group 0;\n}\n" ::"r"(dep)
               : "memory");
}
