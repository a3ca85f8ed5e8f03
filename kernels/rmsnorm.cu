// rmsnorm.cu: RMSNorm, the embedding gather, and the LoRA shrinks that
// read a norm's output (fused into it: rmsnorm_lora; for long passes after it:
// shrink_split + shrink_sum, which the o and down shrinks of long passes take
// too).
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
#include "norm.cuh"

extern "C" __global__ void rmsnorm(float* out, const float* x, const float* w, const int32_t* rows,
                                   long long H, float eps) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int i = blockIdx.x;
  const float* xr = x + (long long)(rows ? rows[i] : i) * H;
  const float inv = inv_rms(xr, H, eps);
  float* o = out + (long long)i * H;
  norm_out(o, xr, w, H, inv);
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
// to fill the card; then x and w are read beside A, not through shared
// memory: one dependent round trip fewer), many 8 (the norm computed once for
// 8 outputs). (Until
// the fourth session a block an output always: 3,136 blocks at batch 64, 17 µs
// a launch on an H200; 8 always: 448, but 7 blocks at batch 1.)
extern "C" __global__ void rmsnorm_lora(float* out, const float* x, const float* w, long long H, float eps,
                                        const __grid_constant__ struct ShrinkOp op, long long per) {
  extern __shared__ float xn[]; // [H]: row i normed, for the shrink blocks
  __shared__ float part[8];
  const int i = blockIdx.x;
  // A shrink warp's output, its share of k, and its first four 16-byte loads
  // of A: issued before the wait (A and the row metadata are no kernel's
  // output), so the norm's round trips hide their latency.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wpo = 8 / (int)per; // warps an output
  const int idx = ((int)blockIdx.y - 1) * (int)per + warp / wpo, q = warp % wpo;   // output, and this warp's share
  const int slot = idx / op.rmax, j = idx % op.rmax, ad = op.rows[i].adapter;
  const bool live = blockIdx.y > 0 && idx < op.nslots * op.rmax && ad >= 0 && op.A[slot][ad] != nullptr && j < op.rank[slot][ad];
  const float* a = live ? op.A[slot][ad] + (long long)j * H : nullptr;
  const long long step = 32 * wpo; // float4s between a warp's loads
  // One output a block (per 1, few rows): x and w are read beside A, the
  // normed values needed once; else they go through shared memory once.
  // The direct path's first four 16-byte loads of w, like A's, and the norm
  // block's first NW values of w are loaded before the wait too (w is no
  // kernel's output): the normalisation then waits on x alone.
  const bool direct = per == 1 && H % 4 == 0;
  float4 a0[4], w0[4];
#pragma unroll
  for (int u = 0; u < 4; u++) {
    const long long k = lane + 32 * q + step * u;
    a0[u] = live && H % 4 == 0 && k < H / 4 ? __ldg((const float4*)a + k) : make_float4(0, 0, 0, 0);
    w0[u] = live && direct && k < H / 4 ? __ldg((const float4*)w + k) : make_float4(0, 0, 0, 0);
  }
  constexpr int NW = 8;
  float wn[NW];
  if (blockIdx.y == 0)
#pragma unroll
    for (int u = 0; u < NW; u++) {
      const long long k = threadIdx.x + u * (long long)blockDim.x;
      wn[u] = k < H ? __ldg(w + k) : 0.0f;
    }
  pdl_wait(); // everything below may read what the previous kernel wrote
  // The next launch is let in only now: its blocks, resident beside these
  // while they wait, measured slower at the top (batch 1 with adapters
  // +1.5 %, H200, kernels/PERF.md fifteenth session).
  pdl_trigger();
  const float* xr = x + (long long)i * H;
  const float inv = inv_rms(xr, H, eps); // exactly as rmsnorm computes it
  if (blockIdx.y == 0) {
    float* o = out + (long long)i * H;
    if (H > NW * (long long)blockDim.x)
      norm_out(o, xr, w, H, inv);
    else
      norm_out(o, xr, wn, H, inv); // w from before the wait
    return;
  }
  if (!direct) {
    norm_out(xn, xr, w, H, inv); // the same values
    __syncthreads();
  }
  auto xn4 = [&](long long k, bool pre, float4 wp) { // normed values 4k … 4k + 3 (pre: w's are wp, loaded before the wait)
    if (!direct) return ((const float4*)xn)[k];
    const float4 xv = __ldg((const float4*)xr + k), wv = pre ? wp : __ldg((const float4*)w + k);
    return make_float4(wv.x * (xv.x * inv), wv.y * (xv.y * inv), wv.z * (xv.z * inv), wv.w * (xv.w * inv));
  };
  float s = 0.0f;
  if (live) { // the same for the whole warp
    if (H % 4 == 0) { // 16-byte loads, four in flight
      const float4* a4 = (const float4*)a;
      float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      long long k = lane + 32 * q;
      for (; k + 3 * step < H / 4; k += 4 * step)
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const bool first = k == lane + 32 * q;
          const float4 av = first ? a0[u] : __ldg(a4 + k + step * u), xv = xn4(k + step * u, first, w0[u]);
          s4[u] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
        }
      for (; k < H / 4; k += step) {
        const float4 av = __ldg(a4 + k), xv = xn4(k, false, w0[0]);
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

// shrink_prefetch asks L2 for the A row of shrink output o of sh for
// adapter ad, by one warp (a line a lane and step).
__device__ __forceinline__ void shrink_prefetch(const struct ShrinkOp& sh, int ad, int o, int H, int lane) {
  const int slot = o / sh.rmax, j = o % sh.rmax;
  const float* a = sh.A[slot][ad];
  if (a != nullptr && j < sh.rank[slot][ad])
    for (int k = 32 * lane; k < H; k += 32 * 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(a + (long long)j * H + k));
}

// shrink_out is shrink output o of sh (slot o / rmax, rank row j = o %
// rmax) for batch row i of adapter ad, by one warp: t[i, slot·rmax + j] =
// Σ_k A[slot][ad][j, k]·xn[k] over 16-byte loads, four in flight (zero
// without an adapter or past the rank).
__device__ __forceinline__ void shrink_out(const struct ShrinkOp& sh, int i, int ad, int o, const float* xn, int H, int lane) {
  const int slot = o / sh.rmax, j = o % sh.rmax;
  const float* a = ad >= 0 && sh.A[slot][ad] != nullptr && j < sh.rank[slot][ad] ? sh.A[slot][ad] + (long long)j * H : nullptr;
  float s = 0.0f;
  if (a != nullptr) { // the same for the whole warp
    if (H % 4 == 0) {
      const float4* a4 = (const float4*)a;
      const float4* x4 = (const float4*)xn;
      float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      int k = lane;
      for (; k + 96 < H / 4; k += 128)
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const float4 av = __ldg(a4 + k + 32 * u), xv = x4[k + 32 * u];
          s4[u] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
        }
      for (; k < H / 4; k += 32) {
        const float4 av = __ldg(a4 + k), xv = x4[k];
        s4[0] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
      }
      s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    } else {
      for (int k = lane; k < H; k += 32) s += __ldg(a + k) * xn[k];
    }
    s = warp_sum(s);
  }
  if (lane == 0) sh.t[(long long)i * sh.tStride + slot * sh.rmax + j] = s;
}

// resid_norm: a residual matrix op's mmas_finish (o or down, MODE_RESID) for
// batch row i = blockIdx.x, fused with the RMSNorm after it and that norm's
// LoRA shrinks (rmsnorm_lora's work) — one launch where there were two: each
// thread finishes pairs p, p + 1,024, … as mmas_finish does (the splits'
// partial sums in order, the LoRA terms, x[i] += through the epilogue) and
// keeps the new values in shared memory; then the row's norm (inv_rms) into
// out[i] and shared memory, and each warp the shrink outputs warp, warp + 32,
// … of sh (none where sh.nslots is 0), t[i, slot·rmax + j] = Σ_k A·xn over
// 16-byte loads, zero without an adapter or past a rank. The A rows are asked
// into L2 before the wait. The launch's rows are the op's whole batch (one
// mmas_finish launch, m0 = 0); 1,024 threads, 8·H bytes of dynamic shared
// memory.
extern "C" __global__ void __launch_bounds__(1024) resid_norm(const __grid_constant__ struct GemvOp op, const float* __restrict__ ws,
                                                              long long splits, long long mp, float* out, const float* w, float eps,
                                                              const __grid_constant__ struct ShrinkOp sh) {
  pdl_trigger();
  extern __shared__ float xs[]; // [H]: row i after the residual add, then [H] normed
  const int i = blockIdx.x, P = pairs_of(&op), H = op.mat[0].N, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int outs = sh.nslots * sh.rmax, ad = outs > 0 ? sh.rows[i].adapter : -1;
  if (ad >= 0) // the shrink's A rows into L2 while the partial sums finish (weights: no kernel's output)
    for (int o = warp; o < outs; o += blockDim.x / 32) shrink_prefetch(sh, ad, o, H, lane);
  const PreLora pre = pre_lora(op, i, threadIdx.x); // before the wait (PreLora's note)
  pdl_wait(); // everything below may read what the previous kernel wrote
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    PairRows pr;
    float la, lb;
    if (!pre_pair(pre, op, i, p, pr, la, lb)) continue;
    const float2 s = split_sums<8>(ws, P, i, p, splits, mp);
    const float2 v = epilogue(op, i, *pr.A, pr.ra, s.x + la, pr.B, pr.rb, s.y + lb, p); // x[i] += …
    xs[pr.ra] = v.x;
    if (pr.B) xs[pr.rb] = v.y;
  }
  __syncthreads();
  const float inv = inv_rms(xs, H, eps); // as rmsnorm computes it
  float* xn = xs + H;
  for (int k = threadIdx.x; k < H; k += blockDim.x) out[(long long)i * H + k] = xn[k] = w[k] * (xs[k] * inv);
  __syncthreads();
  for (int o = warp; o < outs; o += blockDim.x / 32) shrink_out(sh, i, ad, o, xn, H, lane);
}


// resid_norm_c: resid_norm with each row split over a thread-block cluster
// of C = gridDim.x blocks (grid (C, rows), cluster (C, 1, 1), C ≤ 8; compute
// capability 9.0): block (c, i) finishes row i's pairs blockDim.x·(c + C·k) +
// thread — runs of 2·blockDim.x columns —, sums their squares (double) and
// computes every shrink output's partial dot over its columns of w·x: the
// shrink of the normed row is t = Σ_k A[j, k]·w[k]·x[k]·inv = inv·Σ_c (block
// c's dot), so the blocks need each other only for the sums. After one
// cluster barrier each adds the C sums of squares in rank order, normalises
// its columns into out, and computes the outputs c, c + C, … of t from the C
// dots in rank order (the shrinks' A rows stream through C multiprocessors a
// row, each block reading its columns of them). Dynamic shared memory 4·H
// bytes and 4 a shrink output (sh.nslots·sh.rmax).
extern "C" __global__ void __launch_bounds__(256) resid_norm_c(const __grid_constant__ struct GemvOp op, const float* __restrict__ ws,
                                                               long long splits, long long mp, float* out, const float* w, float eps,
                                                               const __grid_constant__ struct ShrinkOp sh) {
#if __CUDA_ARCH__ >= 900
  pdl_trigger();
  extern __shared__ float xs[]; // [H]: this block's columns after the residual add; then [outs] its partial dots
  __shared__ double ssq;
  const int c = blockIdx.x, C = gridDim.x, i = blockIdx.y, P = pairs_of(&op), H = op.mat[0].N;
  constexpr int run = 512; // columns of one of this block's runs: 2·blockDim.x, 256 threads (the launch's)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int outs = sh.nslots * sh.rmax, ad = outs > 0 ? sh.rows[i].adapter : -1;
  float* dots = xs + H;
  auto arow = [&](int o) -> const float* { // output o's A row (null: none, or past the rank)
    const int slot = o / sh.rmax, j = o % sh.rmax;
    return ad >= 0 && sh.A[slot][ad] != nullptr && j < sh.rank[slot][ad] ? sh.A[slot][ad] + (long long)j * H : nullptr;
  };
  if (ad >= 0) // this block's columns of the A rows into L2 while the partial sums finish (a line a lane)
    for (int o = warp; o < outs; o += nw)
      if (const float* a = arow(o))
        for (int k0 = run * c; k0 < H; k0 += run * C)
          if (k0 + 32 * lane < min(H, k0 + run)) asm volatile("prefetch.global.L2 [%0];" ::"l"(a + k0 + 32 * lane));
  const PreLora pre = pre_lora(op, i, blockDim.x * c + threadIdx.x); // before the wait (PreLora's note)
  pdl_wait(); // everything below may read what the previous kernel wrote
  double ss = 0.0;
  for (int p = pre.p0; p < P; p += blockDim.x * C) {
    PairRows pr;
    float la, lb;
    if (!pre_pair(pre, op, i, p, pr, la, lb)) continue;
    const float2 s = split_sums<16>(ws, P, i, p, splits, mp);
    const float2 v = epilogue(op, i, *pr.A, pr.ra, s.x + la, pr.B, pr.rb, s.y + lb, p); // x[i] += …
    xs[pr.ra] = v.x;
    ss += (double)v.x * (double)v.x;
    if (pr.B) {
      xs[pr.rb] = v.y;
      ss += (double)v.y * (double)v.y;
    }
  }
  ss = block_sum(ss); // ends with a barrier: xs holds this block's columns
  if (threadIdx.x == 0) ssq = ss;
  // The partial dots: a warp takes outputs warp, warp + 8, … three at a time,
  // a lane the columns 4·lane + 128·u (u < 4) of each of the block's runs of
  // 512, every load of a run (w, and A for the three outputs) in flight
  // together.
  constexpr int U = 4, G = 3;
  for (int o0 = warp; o0 < outs; o0 += G * nw) {
    const float* a[G];
    float d[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
      a[g] = o0 + g * nw < outs ? arow(o0 + g * nw) : nullptr;
      d[g] = 0.0f;
    }
    for (int k0 = run * c; k0 < H; k0 += run * C) {
      float4 wv[U], av[G][U];
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int k = k0 + 4 * lane + 128 * u;
        wv[u] = k < H ? __ldg((const float4*)(w + k)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int g = 0; g < G; g++) av[g][u] = a[g] && k < H ? __ldg((const float4*)(a[g] + k)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int k = k0 + 4 * lane + 128 * u;
        if (k >= H) continue;
        const float4 x = make_float4(wv[u].x * xs[k], wv[u].y * xs[k + 1], wv[u].z * xs[k + 2], wv[u].w * xs[k + 3]);
#pragma unroll
        for (int g = 0; g < G; g++) d[g] += av[g][u].x * x.x + av[g][u].y * x.y + av[g][u].z * x.z + av[g][u].w * x.w;
      }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
      const float s = warp_sum(d[g]);
      if (lane == 0 && o0 + g * nw < outs) dots[o0 + g * nw] = s;
    }
  }
  cluster_sync(); // every block's sum of squares and dots are in
  double tot = 0.0;
  for (int r = 0; r < C; r++) tot += dsmem_f64(&ssq, r);
  const float inv = rms_scale(tot, H, eps);
  for (int p = blockDim.x * c + threadIdx.x; p < P; p += blockDim.x * C)
    for (int k = 2 * p; k < min(2 * p + 2, H); k++) out[(long long)i * H + k] = w[k] * (xs[k] * inv);
  for (int o = c + C * threadIdx.x; o < outs; o += C * blockDim.x) {
    float v[8];
#pragma unroll
    for (int r = 0; r < 8; r++) v[r] = r < C ? dsmem_f32(&dots[o], r) : 0.0f; // in flight together
    float s = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; r++)
      if (r < C) s += v[r]; // rank order
    sh.t[(long long)i * sh.tStride + o] = inv * s;
  }
  cluster_sync(); // the others are done with this block's shared memory
#endif
}

// shrink_split: the LoRA shrink t[m, slot, j] = Σ_k A[adapter(m)][slot][j, k]·x[m, k]
// with K split into chunks of SS_COLS columns: block (c, g) takes chunk c
// and rows SS_ROWS·g …; for each adapter among its rows it stages that
// adapter's A[slot][j][chunk] of every output in shared memory (coalesced,
// zeros past a rank or where a matrix has none), then each thread — 8 a row,
// outputs q, q + 8, … — sums over the chunk with x's 16-byte pieces from
// global memory (a row's 8 threads read the same ones). Partial sums to
// ws[c][m][idx] (idx = slot·rmax + j; zeros for rows without an adapter);
// shrink_sum adds the chunks in order into t (deterministic). Bytes: A once
// per row group, x once — lora_shrink (a block an output) reads A once a row.
// At most SS_OUTS outputs (slots·rmax); dynamic shared memory outs·SS_LDA·4.
// Needs K % 4 == 0.
constexpr int SS_COLS = 256, SS_ROWS = 32, SS_LDA = SS_COLS + 4, SS_OUTS = 64;

extern "C" __global__ void __launch_bounds__(256) shrink_split(const __grid_constant__ struct ShrinkOp op, long long M, float* ws) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  extern __shared__ __align__(16) float as[]; // [outs][SS_LDA]
  __shared__ int ads[SS_ROWS];
  const int c = blockIdx.x, m0 = blockIdx.y * SS_ROWS, k0 = c * SS_COLS, kn = min(SS_COLS, op.K - k0);
  const int outs = op.nslots * op.rmax, r = threadIdx.x >> 3, q = threadIdx.x & 7, m = m0 + r;
  if (threadIdx.x < SS_ROWS) ads[threadIdx.x] = m0 + (int)threadIdx.x < M ? op.rows[m0 + threadIdx.x].adapter : -1;
  __syncthreads();
  const int ad = ads[r];
  const float4* x = (const float4*)(op.x + (long long)(m < M ? m : 0) * op.K + k0);
  float s[SS_OUTS / 8] = {};
  for (int a = 0; a < MAX_ADAPTERS; a++) {
    bool present = false; // the same for every thread
    for (int i = 0; i < SS_ROWS; i++) present |= ads[i] == a;
    if (!present) continue;
    __syncthreads(); // the previous adapter's A is read
    for (int i = threadIdx.x; i < outs * (kn / 4); i += blockDim.x) {
      const int o = i / (kn / 4), kk = i % (kn / 4), slot = o / op.rmax, j = o % op.rmax;
      const float* A = op.A[slot][a];
      *(float4*)(as + o * SS_LDA + 4 * kk) =
          A != nullptr && j < op.rank[slot][a] ? __ldg((const float4*)(A + (long long)j * op.K + k0) + kk) : make_float4(0, 0, 0, 0);
    }
    __syncthreads();
    if (ad != a) continue;
    for (int kk = 0; kk < kn / 4; kk++) {
      const float4 xv = __ldg(x + kk);
#pragma unroll
      for (int u = 0; u < SS_OUTS / 8; u++)
        if (q + 8 * u < outs) {
          const float4 av = *(const float4*)(as + (q + 8 * u) * SS_LDA + 4 * kk);
          s[u] += av.x * xv.x + av.y * xv.y + av.z * xv.z + av.w * xv.w;
        }
    }
  }
  if (m >= M) return;
#pragma unroll
  for (int u = 0; u < SS_OUTS / 8; u++)
    if (q + 8 * u < outs) ws[((long long)c * M + m) * outs + q + 8 * u] = s[u];
}

// shrink_sum: t[m, idx] = Σ_c ws[c][m][idx] in chunk order, a thread an output.
extern "C" __global__ void __launch_bounds__(256) shrink_sum(const __grid_constant__ struct ShrinkOp op, long long M, const float* ws, long long chunks) {
  pdl_trigger();
  pdl_wait();
  const int outs = op.nslots * op.rmax;
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= M * outs) return;
  float s = 0.0f;
#pragma unroll 8
  for (long long c = 0; c < chunks; c++) s += __ldcg(ws + c * M * outs + i); // eight loads in flight, summed in order
  op.t[(i / outs) * op.tStride + i % outs] = s;
}
