// attn_flash.cu: the causal attention of prefill passes (flash attention on
// the tensor cores); decode steps' attention is attention.cu's.
#include "common.cuh"

// attn_flash_<D>: causal attention of prefill passes: flash attention on the
// tensor cores in fp32-grade precision (dev: kernels/dev/attn_prefill.cu v3).
// Products in 3×TF32: x = big + small (both tf32, small the rounding
// residue), x·y ≈ small·big + big·small + big·big (~2^-22 relative; the
// small·small term dropped), mma.sync m16n8k8, fp32 accumulation. The pass is
// cut into tiles of up to FQ consecutive rows of one sequence (tiles[i] =
// {first row, rows}, built by the host); block (tile, h) — 4 warps, a warp 16
// rows — takes the tile's rows for query head h over the keys 0 … its last
// row's position, FK at a time. Each key tile lands in shared memory split
// into big and small planes (once, by the block); per warp S = q·Kᵀ (the
// big·big products in a second accumulator: two dependency chains), ·scale,
// the causal mask by each row's own position, the online softmax (a row's
// keys lie across a quad: shuffles), P through a per-warp shared tile into A
// fragments, O += P·V in D/2 accumulator registers; O / l at the end into
// att[m, h·D + d], as attn_combine writes it. 128 threads; dynamic shared
// memory: launch.go's flashShmem. Strides: Q and K rows D + 4 words, V rows D + 8, P
// rows FK + 4, so that every fragment load of a warp is conflict-free.
constexpr int FQ = 64, FK = 32; // launch.go: flashRows, flashKeys

__device__ __forceinline__ uint32_t tf32_of(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// mma_tf32: d += a·b, m16n8k8 (A row-major fragments a, B column-major b0, b1).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// a_frag splits the m16n8k8 A fragment of a row-major fp32 tile (row stride
// ld; this lane's rows g, g + 8 and columns c, c + 4) into big and small.
__device__ __forceinline__ void a_frag(const float* p, int ld, int g, int c, uint32_t (&big)[4], uint32_t (&small)[4]) {
  const float x[4] = {p[g * ld + c], p[(g + 8) * ld + c], p[g * ld + c + 4], p[(g + 8) * ld + c + 4]};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    big[i] = tf32_of(x[i]);
    small[i] = tf32_of(x[i] - __uint_as_float(big[i]));
  }
}

template <int D>
__device__ void attn_flash_body(float* __restrict__ att, const float* __restrict__ q, const struct RowMeta* __restrict__ rows,
                                const int* __restrict__ tiles, int layer, int heads, int kvHeads) {
  constexpr int LDQ = D + 4, LDK = D + 4, LDV = D + 8, LDP = FK + 4, NT = D / 8;
  extern __shared__ float sm[];
  float* qs = sm;                                   // [FQ][LDQ]
  uint32_t* kb = (uint32_t*)(qs + FQ * LDQ);        // K big [FK][LDK]
  uint32_t* ksm = kb + FK * LDK;                    // K small
  uint32_t* vb = ksm + FK * LDK;                    // V big [FK][LDV]
  uint32_t* vsm = vb + FK * LDV;                    // V small
  __shared__ int qpos[FQ];                          // each row's position; −1 past the tile
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float* ps = (float*)(vsm + FK * LDV) + warp * 16 * LDP; // this warp's P [16][LDP]
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int h = blockIdx.y, r0 = tiles[2 * blockIdx.x], n = tiles[2 * blockIdx.x + 1];
  const struct RowMeta rm = rows[r0];
  const long long kvDim = (long long)kvHeads * D, kvh = h / (heads / kvHeads);
  const float* K = rm.k + (long long)layer * rm.cap * kvDim + kvh * D;
  const float* V = rm.v + (long long)layer * rm.cap * kvDim + kvh * D;
  const float scale = 1.0f / sqrtf((float)D);
  for (int i = threadIdx.x; i < FQ; i += blockDim.x) qpos[i] = i < n ? rows[r0 + i].pos : -1;
  for (int i = threadIdx.x; i < FQ * D / 4; i += blockDim.x) {
    const int r = i / (D / 4), c = i % (D / 4);
    *(float4*)(qs + r * LDQ + 4 * c) = r < n ? *(const float4*)(q + ((long long)(r0 + r) * heads + h) * D + 4 * c) : make_float4(0, 0, 0, 0);
  }
  __syncthreads();
  int last = 0, wlast = -1; // the keys the tile needs (0 … its largest position), and this warp's rows
  for (int i = 0; i < n; i++) last = max(last, qpos[i]);
  for (int i = 16 * warp; i < 16 * warp + 16; i++) wlast = max(wlast, qpos[i]);
  const int qp[2] = {qpos[16 * warp + g], qpos[16 * warp + g + 8]};
  float acc[NT][4] = {}, mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const float* qw = qs + 16 * warp * LDQ;
  for (int kv0 = 0; kv0 <= last; kv0 += FK) {
    __syncthreads(); // the previous tile's K and V are read
    for (int i = threadIdx.x; i < FK * D / 4; i += blockDim.x) {
      const int r = i / (D / 4), c = i % (D / 4), pos = kv0 + r;
      float4 x[2] = {make_float4(0, 0, 0, 0), make_float4(0, 0, 0, 0)};
      if (pos <= last) {
        x[0] = *(const float4*)(K + pos * kvDim + 4 * c);
        x[1] = *(const float4*)(V + pos * kvDim + 4 * c);
      }
#pragma unroll
      for (int kv = 0; kv < 2; kv++) {
        const uint4 b = make_uint4(tf32_of(x[kv].x), tf32_of(x[kv].y), tf32_of(x[kv].z), tf32_of(x[kv].w));
        const uint4 sm4 = make_uint4(tf32_of(x[kv].x - __uint_as_float(b.x)), tf32_of(x[kv].y - __uint_as_float(b.y)),
                                     tf32_of(x[kv].z - __uint_as_float(b.z)), tf32_of(x[kv].w - __uint_as_float(b.w)));
        *(uint4*)((kv ? vb : kb) + r * (kv ? LDV : LDK) + 4 * c) = b;
        *(uint4*)((kv ? vsm : ksm) + r * (kv ? LDV : LDK) + 4 * c) = sm4;
      }
    }
    __syncthreads();
    if (kv0 > wlast) continue; // every key of the tile is after this warp's rows (or it has none)
    float s[FK / 8][4] = {}, s2[FK / 8][4] = {}; // the cross terms; big·big
#pragma unroll 4
    for (int d0 = 0; d0 < D; d0 += 8) {
      uint32_t ab[4], as[4];
      a_frag(qw + d0, LDQ, g, t, ab, as);
#pragma unroll
      for (int j = 0; j < FK / 8; j++) {
        const int e = (8 * j + g) * LDK + d0 + t;
        const uint32_t b0 = kb[e], b1 = kb[e + 4];
        mma_tf32(s[j], as, b0, b1);
        mma_tf32(s[j], ab, ksm[e], ksm[e + 4]);
        mma_tf32(s2[j], ab, b0, b1);
      }
    }
    // s[j][0..1]: row g, keys kv0 + 8j + 2t, +1; s[j][2..3]: row g + 8.
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < FK / 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          float& x = s[j][2 * rr + c];
          x = kv0 + 8 * j + 2 * t + c > qp[rr] ? -INFINITY : (x + s2[j][2 * rr + c]) * scale;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mnew = fmaxf(mrow[rr], mx);
      const float mref = mnew == -INFINITY ? 0.0f : mnew; // no key yet (or a row past the tile): exp gives 0, not NaN
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < FK / 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          s[j][2 * rr + c] = expf(s[j][2 * rr + c] - mref);
          sum += s[j][2 * rr + c];
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float corr = expf(mrow[rr] - mref);
      lrow[rr] = lrow[rr] * corr + sum;
      mrow[rr] = mnew;
#pragma unroll
      for (int j = 0; j < NT; j++) acc[j][2 * rr] *= corr, acc[j][2 * rr + 1] *= corr;
    }
#pragma unroll
    for (int j = 0; j < FK / 8; j++) {
      *(float2*)(ps + g * LDP + 8 * j + 2 * t) = make_float2(s[j][0], s[j][1]);
      *(float2*)(ps + (g + 8) * LDP + 8 * j + 2 * t) = make_float2(s[j][2], s[j][3]);
    }
    __syncwarp();
#pragma unroll
    for (int k0 = 0; k0 < FK; k0 += 8) {
      uint32_t ab[4], as[4];
      a_frag(ps + k0, LDP, g, t, ab, as);
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const int e = (k0 + t) * LDV + 8 * j + g;
        const uint32_t b0 = vb[e], b1 = vb[e + 4 * LDV];
        mma_tf32(acc[j], as, b0, b1);
        mma_tf32(acc[j], ab, vsm[e], vsm[e + 4 * LDV]);
        mma_tf32(acc[j], ab, b0, b1);
      }
    }
    __syncwarp(); // P is read before the next tile writes it
  }
  // acc[j][0..1]: row g, dims 8j + 2t, +1; acc[j][2..3]: row g + 8.
#pragma unroll
  for (int rr = 0; rr < 2; rr++) {
    const int r = 16 * warp + g + 8 * rr;
    if (r >= n) continue;
    float* out = att + ((long long)(r0 + r) * heads + h) * D;
    const float inv = 1.0f / lrow[rr];
#pragma unroll
    for (int j = 0; j < NT; j++) *(float2*)(out + 8 * j + 2 * t) = make_float2(acc[j][2 * rr] * inv, acc[j][2 * rr + 1] * inv);
  }
}

#define ATTN_FLASH(D)                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(128) attn_flash_##D(float* att, const float* q, const struct RowMeta* rows,           \
                                                                   const int* tiles, long long layer, long long heads, long long kvHeads) { \
    attn_flash_body<D>(att, q, rows, tiles, (int)layer, (int)heads, (int)kvHeads);                                                   \
  }
ATTN_FLASH(64)
ATTN_FLASH(128)
