// qbench: sm_90a
// prefill_wgmma.cu: prefill_nf4 (prefill.cu) on Hopper's warpgroup MMAs
// (wgmma: compute capability 9.0 only; gen.go builds this file's compute_90
// PTX for sm_90a). Developed as kernels/dev/nf4_gemm.cu v4.
//
// split_planes: x [M, K] fp32 → two bf16 planes hi, lo (x ≈ hi + lo, as the
// other tensor-core kernels split it), a thread per 4 values.
//
// prefill_wgmma: grid (⌈pairs/64⌉, ⌈M/128⌉), 256 threads (two warpgroups),
// PW_SMEM bytes of dynamic shared memory. A block takes 64 pairs — 128
// weight rows in prefill_nf4's order (row g of each 16 is pair g's A-row,
// g + 8 its B-row) — and 128 x rows, and walks K in steps of 64 through two
// stages of shared memory: the weights [128][64] bf16, then x's hi and lo
// planes [128][64] bf16, each K-major with the 128-byte swizzle (a row is 128
// bytes; its 16-byte chunk c sits at c ^ (row % 8)). Each step the block's
// threads dequantise the next step's weights into the other stage (the
// per-block table: bitsandbytes' values bit for bit) and copy x's planes
// beside them by cp.async, while each warpgroup's 8 asynchronous
// m64n128k16 MMAs (4 k16 × hi, lo) over its 64 weight rows run on the tensor
// cores. Then the LoRA terms of one adapter's rows as one more step (pw_lora:
// B and the shrink's outputs t as bf16 planes). The sums go through shared
// memory to prefill_finish (the other adapters' LoRA terms and the epilogue,
// as prefill_nf4). prefill_wgmma_64: the same with 64 x rows a block
// (m64n64k16; grid (⌈pairs/64⌉, ⌈M/64⌉), stages of 32 KB), for batches of
// 33–64 rows.
//
// Bytes per launch: the weights once per 128 (64) x rows, x's planes once
// per 64 pairs. Requires K % 64 == 0.
#include "prefill.cuh"

constexpr int PW_TILE = 128 * 64 * 2, PW_STAGE = 3 * PW_TILE; // bytes: weights, x hi, x lo
constexpr int PW_SMEM = 2 * PW_STAGE + 1024;                   // two stages, and room to align them to 1,024 bytes
static_assert((128 * PF_LDR + 2 * PF_RMAX * 64) * 4 <= 2 * PW_STAGE, "the epilogue's sums and B rows fit");
static_assert(PW_SMEM + 4096 <= 227 * 1024 / 2, "two blocks an SM");
static_assert((64 * PF_LDR + 2 * PF_RMAX * 64) * 4 <= 2 * (PW_TILE + 2 * 64 * 128), "prefill_wgmma_64: the same in its stages");

extern "C" __global__ void split_planes(const float* __restrict__ x, uint16_t* __restrict__ hi, uint16_t* __restrict__ lo, long long n4) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 v = __ldg((const float4*)x + i);
  const uint32_t h01 = pack_bf16(v.x, v.y), h23 = pack_bf16(v.z, v.w);
  ((uint2*)hi)[i] = make_uint2(h01, h23);
  ((uint2*)lo)[i] = make_uint2(pack_bf16(v.x - __uint_as_float(h01 << 16), v.y - __uint_as_float(h01 & 0xffff0000u)),
                               pack_bf16(v.z - __uint_as_float(h23 << 16), v.w - __uint_as_float(h23 & 0xffff0000u)));
}

// pw_sw128 is the byte offset of 16-byte chunk c of row r in a swizzled tile.
__device__ __forceinline__ uint32_t pw_sw128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

// pw_desc is wgmma's descriptor of a K-major 128-byte-swizzled tile at
// shared address a: start >> 4 (bits 0–13), leading byte offset 16 >> 4
// (unused with this swizzle), stride 1,024 >> 4 between 8-row atoms
// (32–45), swizzle mode 1 (62–63). 16 columns further along K: a + 32.
__device__ __forceinline__ uint64_t pw_desc(uint32_t a) {
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

__device__ __forceinline__ void pw_cp16(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0));
}

// pw_mma<N>: d[64 weight rows × N x rows] += A·B from shared memory
// (wgmma.m64nNk16). Thread (warp w of the warpgroup, lane l) holds d[4i + j]:
// weight row 16w + l/4 + 8·(j/2), x row 8i + 2·(l%4) + j%2.
template <int N>
__device__ __forceinline__ void pw_mma(float (&d)[N / 2], uint64_t a, uint64_t b);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <>
__device__ __forceinline__ void pw_mma<64>(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void pw_mma<128>(float (&d)[64], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(1)); // scale-d 1: d += A·B (d starts at zero)
}
#endif

// PwX is a thread's share of x's two [NX][64] tiles of a step (hi and lo
// planes): chunk c = threadIdx.x + 256·i is row c / 8, 16-byte column c % 8
// — its source offset and place in a stage, set up once; rows past the pass
// read as zeros.
template <int NX>
struct PwX {
  static constexpr int N = NX * 8 / 256;
  static_assert(NX * 8 % 256 == 0, "x's chunks: a whole number a thread");
  int src[N];
  uint32_t dst[N];
  bool ok[N];
  __device__ __forceinline__ PwX(int rows, int K) {
#pragma unroll
    for (int i = 0; i < N; i++) {
      const int c = threadIdx.x + 256 * i, r = c >> 3, cc = c & 7;
      ok[i] = r < rows;
      src[i] = min(r, rows - 1) * K + 8 * cc;
      dst[i] = PW_TILE + pw_sw128(r, cc);
    }
  }
  // load copies step kb's chunks of both planes by cp.async into the stage
  // at shared address stage (the lo plane's tile NX·128 bytes after the hi
  // one's) and commits them as a group.
  __device__ __forceinline__ void load(uint32_t stage, const uint16_t* xh, const uint16_t* xl, int kb) const {
#pragma unroll
    for (int i = 0; i < N; i++) {
      pw_cp16(stage + dst[i], xh + src[i] + 64 * kb, ok[i]);
      pw_cp16(stage + dst[i] + NX * 128, xl + src[i] + 64 * kb, ok[i]);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }
};

extern __shared__ __align__(16) uint8_t smraw[]; // the kernels' dynamic shared memory

// pw_mmas issues a warpgroup's MMAs of one step: its 64 weight rows at
// descriptor a, x's hi plane at b and lo plane XT bytes further, k16 slices
// 32 bytes (descriptor + 2) apart.
template <int NX>
__device__ __forceinline__ void pw_mmas(float (&acc)[NX / 2], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#pragma unroll
  for (int ks = 0; ks < 4; ks++) {
    pw_mma<NX>(acc, a + 2 * ks, b + 2 * ks);
    pw_mma<NX>(acc, a + 2 * ks, b + NX * 128 / 16 + 2 * ks);
  }
#endif
}

// pw_main runs the block's steps kb0 … kb1 − 1 of K (64 columns each) for
// its 64 pairs (blockIdx.x; prefill_nf4's row order) against NX x rows
// whose bf16 planes start at xh, xl (rows [rows][K], those past rows zero),
// into acc: the weights dequantised into one stage while the MMAs of the
// other run. smem: the dynamic shared memory (two stages of PW_TILE +
// 2·NX·128 bytes after 1,024-byte alignment); code: the 256 floats the
// double quantisation's codes map to, loaded by the caller (synchronised
// here). 256 threads.
template <int NX, bool TRIG = false>
__device__ __forceinline__ void pw_main(const struct GemvOp& op, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                        int rows, int kb0, int kb1, uint8_t* smraw, const float* code, float (&acc)[NX / 2]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int XT = NX * 128, STAGE = PW_TILE + 2 * XT; // bytes: an x plane's tile, a stage (multiples of 1,024)
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(smraw), sbase = (sraw + 1023) & ~1023u;
  uint8_t* sgen = smraw + (sbase - sraw);
  const struct Mat* A0 = &op.mat[0];
  const int K = A0->K, nblk = K / 64;
  const int wg = threadIdx.x >> 7;
  const int lr = threadIdx.x >> 1, h = threadIdx.x & 1, P = pairs_of(&op); // this thread's weight row (local) and half block
  const int pair = blockIdx.x * 64 + (lr >> 4) * 8 + (lr & 7);
  const bool live = pair < P, isB = (lr & 8) != 0;
  const PairRows pr = pair_rows(&op, live ? pair : 0);
  const MatRegs mr = mat_regs(isB && pr.B ? pr.B : pr.A);
  const long long row = isB && pr.B ? pr.rb : pr.ra;
  const uint8_t* wrow = mr.packed + row * (K / 2);
  const unsigned e0 = (unsigned)(row * K); // the row's first element (its blocks' scales)
  struct Raw {
    uint4 cw;
    uint32_t q;
    float n;
  };
  auto load_w = [&](Raw& r, int kb) { // half a block of the thread's weight row (lutNF4's layout), and its scale's sources
    const int s = kb >> 2, nb = min(4, nblk - 4 * s);
    r.cw = make_uint4(0, 0, 0, 0);
    r.q = 0;
    r.n = 0.0f;
    if (live) {
      r.cw = __ldg((const uint4*)(wrow + 128 * s + 16 * (kb & 3) + (h ? 16 * nb : 0)));
      const RawScale rs = raw_scale(mr, e0 + 64 * kb);
      r.q = rs.q;
      r.n = rs.n;
    }
  };
  const PwX<NX> xs(rows, K);
  auto load_x = [&](int s, int kb) { xs.load(sbase + s * STAGE, xh, xl, kb); }; // x's two tiles of step kb into stage s
  uint32_t soff[4]; // the thread's 16-byte chunks in a stage's weight tile
#pragma unroll
  for (int i = 0; i < 4; i++) soff[i] = pw_sw128(lr, 4 * h + i);
  auto store_w = [&](int s, const Raw& r) { // the 32 weights, dequantised, into stage s
    const Lut L = make_lut(live ? scale_of(mr, code, RawScale{r.q, r.n}) : 0.0f);
    uint32_t o[16];
    dequant32(L, r.cw, o);
#pragma unroll
    for (int i = 0; i < 4; i++) *(uint4*)(sgen + s * STAGE + soff[i]) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
  };
#pragma unroll
  for (int i = 0; i < NX / 2; i++) acc[i] = 0.0f;
  Raw r;
  load_w(r, kb0); // the weights: in flight before the wait
  pdl_wait();     // x's planes and the outputs come after earlier kernels
  if (TRIG) pdl_trigger(); // its finish let in now, after the wait (as mmas_nf4: PreLora in gemv.cuh)
  load_x(0, kb0);
  __syncthreads(); // code[] is written
  store_w(0, r);
  if (kb0 + 1 < kb1) load_w(r, kb0 + 1);
  asm volatile("cp.async.wait_group 0;\n" ::);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the stores are visible to the tensor cores
  __syncthreads();
  const uint64_t d0 = pw_desc(sbase);
  for (int kb = kb0; kb < kb1; kb++) {
    const int s = (kb - kb0) & 1;
    const uint64_t ds = d0 + (s ? STAGE / 16 : 0);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    pw_mmas<NX>(acc, ds + wg * (64 * 128 / 16), ds + PW_TILE / 16); // (a branch a warpgroup made ptxas serialise the MMAs)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    if (kb + 1 < kb1) { // the next step into the other stage while the MMAs run
      load_x(s ^ 1, kb + 1);
      store_w(s ^ 1, r);
      if (kb + 2 < kb1) load_w(r, kb + 2);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads(); // stage s is read, stage s ^ 1 is in
  }
#endif
}

// pw_local is where acc[4i + j] of thread (warpgroup wg, warp w, lane l)
// belongs: the block's local pair (4wg + w)·8 + l/4 and which of its rows
// (A: 0, B: 1), and the x row 8i + 2·(l%4) + j%2.
struct PwLocal {
  int pair, ab, xrow;
};
__device__ __forceinline__ PwLocal pw_local(int i, int j) {
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  return PwLocal{(4 * wg + warp) * 8 + (lane >> 2), j >> 1, 8 * i + 2 * (lane & 3) + (j & 1)};
}

// pw_lora_width is how many columns the LoRA terms of op take as extra
// columns of the product (see pw_lora): its matrices' shrink slots, rmax
// each, rounded up to 16; 0 where it has no LoRA or they would not fit
// one 64-column step (the epilogue adds them then).
__device__ __forceinline__ int pw_lora_cols(const struct GemvOp& op) { // the slots' columns, not rounded
  int w = 0;
  for (int i = 0; i < op.nmat; i++)
    if (op.mat[i].loraSlot >= 0) w = max(w, (op.mat[i].loraSlot + 1) * op.rmax);
  return min(w, op.tStride);
}
__device__ __forceinline__ int pw_lora_width(const struct GemvOp& op) {
  const int w = (pw_lora_cols(op) + 15) / 16 * 16;
  return op.t == nullptr || w > 64 ? 0 : w;
}

// pw_lora adds the LoRA terms of the block's x rows of adapter ad (rows of
// other adapters are zero here: the epilogue adds theirs) to acc on the
// tensor cores, as one more step of the product whose columns are the
// shrink's outputs t[m, slot·rmax + j]: a weight row's columns hold
// scale·B[row, j] in its matrix's slot, zeros elsewhere. In fp32-grade
// precision as x: B = Bh + Bl and t = th + tl in bf16, and Bh·th + Bh·tl +
// Bl·th summed by the MMAs (Bl·tl, ~2^-17 of the term, dropped). width:
// pw_lora_width(op). Stage 0 takes Bh and t's planes, stage 1's weight tile
// Bl; both are free after pw_main.
template <int NX>
__device__ __forceinline__ void pw_lora(const struct GemvOp& op, int mb, int rows, int ad, int width, uint8_t* smraw, float (&acc)[NX / 2]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int XT = NX * 128, STAGE = PW_TILE + 2 * XT;
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(smraw), sbase = (sraw + 1023) & ~1023u;
  uint8_t* sgen = smraw + (sbase - sraw);
  const int R = op.rmax, cols = pw_lora_cols(op);
  { // the weight rows' B values: thread (row lr, half h) writes columns 32h … 32h + 31
    const int lr = threadIdx.x >> 1, h = threadIdx.x & 1, P = pairs_of(&op);
    const int pair = blockIdx.x * 64 + (lr >> 4) * 8 + (lr & 7);
    const PairRows pr = pair_rows(&op, pair < P ? pair : 0);
    const bool isB = (lr & 8) != 0 && pr.B;
    const struct Mat& a = isB ? *pr.B : *pr.A;
    const float* B = pair < P && pr.valid && a.loraSlot >= 0 ? a.loraB[ad] : nullptr;
    const int rank = B ? a.loraRank[ad] : 0, c0 = a.loraSlot * R;
    const float scale = B ? a.loraScale[ad] : 0.0f;
    if (B) B += (long long)(isB ? pr.rb : pr.ra) * rank;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      uint32_t hi[4], lo[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float v[2];
#pragma unroll
        for (int u = 0; u < 2; u++) {
          const int j = 32 * h + 8 * c + 2 * e + u - c0;
          v[u] = B && j >= 0 && j < rank ? scale * B[j] : 0.0f;
        }
        hi[e] = pack_bf16(v[0], v[1]);
        lo[e] = pack_bf16(v[0] - __uint_as_float(hi[e] << 16), v[1] - __uint_as_float(hi[e] & 0xffff0000u));
      }
      const uint32_t o = pw_sw128(lr, 4 * h + c);
      *(uint4*)(sgen + o) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
      *(uint4*)(sgen + STAGE + o) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    }
  }
  // t's rows of adapter ad as x's planes (zeros past the slots, past the pass
  // and for rows of other adapters): chunk c = threadIdx.x + 256·i is row
  // c / 8, columns 8·(c % 8) …
#pragma unroll
  for (int i = 0; i < NX * 8 / 256; i++) {
    const int c = threadIdx.x + 256 * i, r = c >> 3, cc = c & 7, m = mb + r;
    float v[8] = {};
    if (r < rows && 8 * cc < cols && op.rows[m].adapter == ad) {
      const float* t = op.t + (long long)m * op.tStride + 8 * cc;
#pragma unroll
      for (int e = 0; e < 8; e++) v[e] = 8 * cc + e < cols ? t[e] : 0.0f;
    }
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
      hi[e] = pack_bf16(v[2 * e], v[2 * e + 1]);
      lo[e] = pack_bf16(v[2 * e] - __uint_as_float(hi[e] << 16), v[2 * e + 1] - __uint_as_float(hi[e] & 0xffff0000u));
    }
    const uint32_t o = PW_TILE + pw_sw128(r, cc);
    *(uint4*)(sgen + o) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    *(uint4*)(sgen + o + XT) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the stores are visible to the tensor cores
  __syncthreads();
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0);
  const uint64_t d0 = pw_desc(sbase), ah = d0 + wg * (64 * 128 / 16), al = ah + STAGE / 16, th = d0 + PW_TILE / 16, tl = th + XT / 16;
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  for (int ks = 0; ks < width / 16; ks++) {
    pw_mma<NX>(acc, ah + 2 * ks, th + 2 * ks);
    pw_mma<NX>(acc, ah + 2 * ks, tl + 2 * ks);
    pw_mma<NX>(acc, al + 2 * ks, th + 2 * ks);
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  __syncthreads(); // every warpgroup's MMAs have read the stages
#endif
}

// pw_dense_main is pw_main for dense bf16 weights (Mat.bf16; the lm_head):
// each step's weight tile copied into its stage by cp.async beside x's
// planes, no dequantisation, the next step's copies in flight while this
// step's MMAs run. All K / 64 steps.
template <int NX>
__device__ __forceinline__ void pw_dense_main(const struct GemvOp& op, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                              int rows, uint8_t* smraw, float (&acc)[NX / 2]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int XT = NX * 128, STAGE = PW_TILE + 2 * XT;
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(smraw), sbase = (sraw + 1023) & ~1023u;
  const int K = op.mat[0].K, nk = K / 64;
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0);
  const int lr = threadIdx.x >> 1, h = threadIdx.x & 1, P = pairs_of(&op); // this thread's weight row (local) and half of it
  const int pair = blockIdx.x * 64 + (lr >> 4) * 8 + (lr & 7);
  const bool live = pair < P, isB = (lr & 8) != 0;
  const PairRows pr = pair_rows(&op, live ? pair : 0);
  const struct Mat& m = isB && pr.B ? *pr.B : *pr.A;
  const bool ok = live && pr.valid && (!isB || pr.B);
  const uint16_t* wrow = m.bf16 + (long long)(isB && pr.B ? pr.rb : pr.ra) * K + 32 * h;
  uint32_t wdst[4];
#pragma unroll
  for (int i = 0; i < 4; i++) wdst[i] = pw_sw128(lr, 4 * h + i);
  auto load_w = [&](int s, int kb) {
#pragma unroll
    for (int i = 0; i < 4; i++) pw_cp16(sbase + s * STAGE + wdst[i], wrow + 64 * kb + 8 * i, ok);
  };
  const PwX<NX> xs(rows, K);
  auto load_x = [&](int s, int kb) { xs.load(sbase + s * STAGE, xh, xl, kb); };
#pragma unroll
  for (int i = 0; i < NX / 2; i++) acc[i] = 0.0f;
  load_w(0, 0); // the weights: in flight before the wait
  pdl_wait();   // x's planes come after earlier kernels
  load_x(0, 0);
  const uint64_t d0 = pw_desc(sbase);
  for (int kb = 0; kb < nk; kb++) {
    const int s = kb & 1;
    if (kb + 1 < nk) { // the next step into the other stage (read by the previous step's MMAs, which have finished)
      load_w(s ^ 1, kb + 1);
      load_x(s ^ 1, kb + 1);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the copies are visible to the tensor cores
    __syncthreads();
    const uint64_t ds = d0 + (s ? STAGE / 16 : 0);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    pw_mmas<NX>(acc, ds + wg * (64 * 128 / 16), ds + PW_TILE / 16);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    __syncthreads(); // stage s is read before the next step's copies overwrite it
  }
#endif
}

// prefill_wgmma_<NX>: NX x rows a block (128: long passes and batches of
// 65–128 rows; 64: batches of 33–64, half the MMAs and stages). Two blocks
// an SM at NX 128 (128 registers: 64 of them the accumulators).
template <int NX, bool DENSE>
__device__ __forceinline__ void pw_body(const struct GemvOp& op, int M, const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ float code[256];
  const struct Mat* A0 = &op.mat[0];
  const int K = A0->K, mb = blockIdx.y * NX;
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  float acc[NX / 2];
  if (DENSE)
    pw_dense_main<NX>(op, xh + (long long)mb * K, xl + (long long)mb * K, M - mb, smraw, acc);
  else
    pw_main<NX>(op, xh + (long long)mb * K, xl + (long long)mb * K, M - mb, 0, K / 64, smraw, code, acc);
  // The LoRA terms of the block's rows of one adapter (the largest id among
  // them) as one more step on the tensor cores; the epilogue adds the rest.
  __shared__ int adapter;
  if (threadIdx.x == 0) adapter = -1;
  __syncthreads();
  if (threadIdx.x < NX && mb + threadIdx.x < M) atomicMax(&adapter, op.rows[mb + threadIdx.x].adapter);
  __syncthreads();
  const int ad = adapter, width = pw_lora_width(op);
  if (ad >= 0 && width > 0) pw_lora<NX>(op, mb, M - mb, ad, width, smraw, acc);
  // Through shared memory (the stages, free now) to the epilogue's threads,
  // as prefill_nf4.
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(smraw);
  float* res = (float*)(smraw + (((sraw + 1023) & ~1023u) - sraw)); // [NX][PF_LDR]
#pragma unroll
  for (int i = 0; i < NX / 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const PwLocal q = pw_local(i, j);
      res[q.xrow * PF_LDR + 2 * q.pair + q.ab] = acc[4 * i + j];
    }
  __syncthreads();
  prefill_finish<NX>(&op, M, mb, res, width > 0 ? ad : -1);
#endif
}

extern "C" __global__ void __launch_bounds__(256, 2) prefill_wgmma(const __grid_constant__ struct GemvOp op, long long M,
                                                                   const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl) {
  pw_body<128, false>(op, (int)M, xh, xl);
}
extern "C" __global__ void __launch_bounds__(256, 2) prefill_wgmma_64(const __grid_constant__ struct GemvOp op, long long M,
                                                                      const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl) {
  pw_body<64, false>(op, (int)M, xh, xl);
}

// wgmma_split_64: prefill_wgmma_64's product over a split of K, for the
// narrow matrices of batches (down, o, q/k/v: 16–20 blocks of 64 pairs, too
// few to fill the card over the whole of K): grid (⌈pairs/64⌉, 1, splits),
// block (b, 0, s) takes steps s·sps … of 64 columns and writes its sums to
// mmas_nf4's split workspace, ws[s][x row][2·pair + {A, B}] (64 rows a
// split); mmas_finish adds the splits in order, the LoRA terms and the
// epilogue. Up to 64 rows; sps ≥ 4 (at most K / 256 splits, as mmas_nf4's).
extern "C" __global__ void __launch_bounds__(256, 2) wgmma_split_64(const __grid_constant__ struct GemvOp op, long long Mrows,
                                                                    const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl,
                                                                    float* __restrict__ ws, long long sps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ float code[256];
  const struct Mat* A0 = &op.mat[0];
  const int M = (int)Mrows, K = A0->K, P = pairs_of(&op), kb0 = blockIdx.z * (int)sps, kb1 = min(K / 64, kb0 + (int)sps);
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  float acc[32];
  pw_main<64, true>(op, xh, xl, M, kb0, kb1, smraw, code, acc);
  float* w = ws + (long long)blockIdx.z * 64 * 2 * P;
#pragma unroll
  for (int i = 0; i < 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const PwLocal q = pw_local(i, j);
      const int pair = blockIdx.x * 64 + q.pair;
      if (pair < P && q.xrow < M) w[(long long)q.xrow * 2 * P + 2 * pair + q.ab] = acc[4 * i + j];
    }
#endif
}

// dense_wgmma(_64): prefill_wgmma(_64) for dense bf16 weights (the lm_head
// of batches and of passes that want every row's logits).
extern "C" __global__ void __launch_bounds__(256, 2) dense_wgmma(const __grid_constant__ struct GemvOp op, long long M,
                                                                 const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl) {
  pw_body<128, true>(op, (int)M, xh, xl);
}
extern "C" __global__ void __launch_bounds__(256, 2) dense_wgmma_64(const __grid_constant__ struct GemvOp op, long long M,
                                                                    const uint16_t* __restrict__ xh, const uint16_t* __restrict__ xl) {
  pw_body<64, true>(op, (int)M, xh, xl);
}
