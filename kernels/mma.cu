// mma.cu: the matrix products of batches on the tensor cores: mma.sync
// m16n8k16, bf16 in, fp32 accumulate, for matrices with K % 64 == 0, 64-blocks
// and rows in 16s. Dense bf16 (the lm_head) runs through mmas_bf16, NF4
// through mmas_nf4 + mmas_finish.
//
// A tile is 8 output pairs (pair_rows in gemv.cuh), the 16 rows of the MMA's
// A operand: fragment row g is pair g's A-row, row g+8 its B-row — so RoPE's
// (j, j+half), gate/up's (gate, up) and the residual's (2p, 2p+1) land in one
// thread's accumulators.
//
// Versions (kernels/PERF.md): v5 NF4 fragments dequantised in registers; v5b
// dense bf16 too; v6, v7 (reverted) x pre-split by its producers or once per
// matrix; v8 two tiles a warp for dense bf16; v9 mmas_nf4 (x staged
// once per block as two bf16 parts, K split across blocks; dev v5); v10 its
// dequantisation by nf4_lut's per-block table (dev v7); v11 mmas_bf16 in the
// same frame for dense bf16 (mma_body, the v5b–v8 kernel, removed).
#include "gemv.cuh"

// ---------------------------------------------------------------------------
// mmas_nf4_<NT> (v10): NF4 on the tensor cores for up to 8·NT batch rows
// m0, m0 + 1, … (one pass; the launcher issues one launch a pass). The grid is
// (groups, splits): block (b, s) takes the columns [256·S·s, 256·S·(s + 1))
// of K, S steps of the codes' nf4_lut layout (lutNF4; S = 1, 2 or 4, chosen
// by the launcher: fewer splits, fewer partial sums to write and add). It
// stages x[rows, those columns] once in shared memory as two bf16 parts (hi +
// lo = bf16(x − hi): 16 significant bits, qwen's TestActivationSplit bounds
// what that moves), then each of its 8 warps walks tiles (8 pairs, the 16
// A-rows of the MMA) tile, tile + 8·groups, …, step by step, the next step's
// codes and scales (the next tile's first, after the last) loaded into
// registers while this step's MMAs run: no barrier after the staging.
// Dequantisation as nf4_lut: thread t of a quad owns 64-block t of the step
// in its two rows, builds each block's table once and looks its 64 codes up
// with prmt; the MMAs' k order inside the step is permuted to match (MMA j
// takes columns 64t + 4j … 4j + 3 for thread t), so x is staged in that
// order. Each warp writes its tile's partial sums to ws[split][batch
// row][2·pair + {0, 1}]; mmas_finish (the next launch) sums them. (Finishing
// in the warp that arrives last at a tile's counter was tried first: its
// serial L2 round trips put 30–150 µs on each tile's critical path.)
constexpr int SK_COLS = 256; // columns of K a block takes: one nf4_lut step

// sk_jw is the words of staged x per MMA j of the step: for each of the four
// ldmatrix matrices (hi or lo part; k pairs 0–1 or 2–3 of each thread's four
// columns) MP rows of 16 bytes, and 4 words of padding so that the staging's
// stores of 16 j of one row fall in different banks.
__host__ __device__ constexpr int sk_jw(int mp) { return 16 * mp + 4; }

// ldmatrix_x4: four 8×8 b16 matrices from shared memory; lane L gives row
// L % 8 of matrix L / 8, and thread (g, t) receives row g, word t of each —
// with rows = batch rows, a B fragment register.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint32_t* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// stage_x writes x[m0 + m][kbeg + 256s + 64c + 4j + o … + 1], part p (hi
// or lo), as word c of row m of matrix 2p + o/2 at (s, j): sx[(16s + j)·JW +
// ((2p + o/2)·MP + m)·4 + c], for s < steps — each step in the k order of
// the MMAs below (MMA j takes columns 64t + 4j … 4j + 3 for thread t). Zeros
// past M and past K. The block's threads all take part.
template <int MP>
__device__ __forceinline__ void stage_x(uint32_t* sx, const float* __restrict__ x, int M, int m0, int K, int kbeg, int steps) {
  constexpr int JW = sk_jw(MP);
  const int n4 = MP * 64 * steps;
  for (int i0 = threadIdx.x; i0 < n4; i0 += 4 * blockDim.x) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int i = i0 + u * blockDim.x, m = i / (64 * steps), q = i % (64 * steps);
      v[u] = make_float4(0, 0, 0, 0);
      if (i < n4 && m0 + m < M && kbeg + 4 * q < K) v[u] = __ldg((const float4*)(x + (long long)(m0 + m) * K + kbeg + 4 * q));
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int i = i0 + u * blockDim.x, m = i / (64 * steps), q = i % (64 * steps);
      if (i < n4) {
        const uint32_t h01 = pack_bf16(v[u].x, v[u].y), h23 = pack_bf16(v[u].z, v[u].w);
        uint32_t* o = sx + (16 * (q / 64) + (q & 15)) * JW + m * 4 + ((q / 16) & 3);
        o[0] = h01;
        o[MP * 4] = h23;
        o[2 * MP * 4] = pack_bf16(v[u].x - __uint_as_float(h01 << 16), v[u].y - __uint_as_float(h01 & 0xffff0000u));
        o[3 * MP * 4] = pack_bf16(v[u].z - __uint_as_float(h23 << 16), v[u].w - __uint_as_float(h23 & 0xffff0000u));
      }
    }
  }
}

// mma_step runs one step's 32·NT MMAs from A fragments a(j) (a functor giving
// the four registers of MMA j) and the staged x at xl (this lane's ldmatrix
// row of the step at j = 0, n-tile 0).
template <int NT, int JW, typename F>
__device__ __forceinline__ void mma_step(float (&acc)[NT][4], const uint32_t* xl, F a) {
#pragma unroll
  for (int j = 0; j < 16; j++) {
    uint32_t a0, a1, a2, a3;
    a(j, a0, a1, a2, a3);
    uint32_t b[NT][4]; // matrices of each x4: (hi, k 0-1), (hi, k 2-3), (lo, k 0-1), (lo, k 2-3)
#pragma unroll
    for (int n = 0; n < NT; n++) ldmatrix_x4(b[n], xl + j * JW + 32 * n);
#pragma unroll
    for (int n = 0; n < NT; n++) mma16816(acc[n], a0, a1, a2, a3, b[n][0], b[n][1]);
#pragma unroll
    for (int n = 0; n < NT; n++) mma16816(acc[n], a0, a1, a2, a3, b[n][2], b[n][3]);
  }
}

// A warp's tile: this thread's pair and its two rows, and the
// flat index of the rows' first column of this block's step.
struct Tile {
  MatRegs qa, qb;
  unsigned ea, eb;
  int pair;
  bool valid;
};

__device__ __forceinline__ Tile tile_of(const struct GemvOp* op, int tile, int tiles, int g, int K, int kbeg) {
  Tile w;
  w.valid = tile < tiles;
  w.pair = w.valid ? tile * 8 + g : 0;
  const PairRows pr = pair_rows(op, w.pair);
  const int rb = pr.B ? pr.rb : pr.ra;
  w.qa = mat_regs(pr.A);
  w.qb = mat_regs(pr.B ? pr.B : pr.A);
  w.ea = (unsigned)pr.ra * K + kbeg;
  w.eb = (unsigned)rb * K + kbeg;
  return w;
}

// Codes is one thread's loads for a tile: the 32 code bytes of its block in
// each row (first and second 16 bytes of lutNF4's layout) and their scales.
struct Codes {
  uint4 a0, a1, b0, b1;
  RawScale sa, sb;
};

__device__ __forceinline__ Codes fetch_codes(const Tile& w, unsigned off, int t, int nb) {
  Codes c = {};
  if (w.valid && t < nb) {
    const uint8_t* pa = w.qa.packed + (w.ea + off) / 2 + 16 * t;
    const uint8_t* pb = w.qb.packed + (w.eb + off) / 2 + 16 * t;
    c.a0 = __ldg((const uint4*)pa);
    c.a1 = __ldg((const uint4*)(pa + 16 * nb));
    c.b0 = __ldg((const uint4*)pb);
    c.b1 = __ldg((const uint4*)(pb + 16 * nb));
    c.sa = raw_scale(w.qa, w.ea + off + 64 * t);
    c.sb = raw_scale(w.qb, w.eb + off + 64 * t);
  }
  return c;
}

template <int NT>
__device__ void mmas_body(const struct GemvOp* __restrict__ op, int M, int m0, float* __restrict__ ws, int S) {
  constexpr int WARPS = 8, T = WARPS * 32, MP = 8 * NT, JW = sk_jw(MP);
  extern __shared__ uint32_t sx[]; // [S·16 (step, j)][JW]: x's parts in each step's k order
  __shared__ float code[256];
  const struct Mat* A0 = &op->mat[0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int K = A0->K, kbeg = blockIdx.y * S * SK_COLS, steps = min(S, (K - kbeg + SK_COLS - 1) / SK_COLS);
  const int P = pairs_of(op), tiles = P / 8, stride = gridDim.x * WARPS;
  auto nb_of = [&](int s) { return min(4, (K - kbeg - s * SK_COLS) / 64); }; // 64-blocks in step s
  int tile = blockIdx.x * WARPS + warp;
  Codes nxt = fetch_codes(tile_of(op, tile, tiles, g, K, kbeg), 0, t, nb_of(0)); // the weights: in flight before the wait
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += T) code[i] = A0->code[i];
  pdl_wait(); // x, the partials' workspace and the outputs come after earlier kernels
  // The finish after this launch let in now, not at its exit, as
  // wgmma_split_64 does (the other matrix kernels never trigger; these
  // blocks fill the register file, so the finish's cannot sit beside them),
  // and only after the wait: every launch before this one has finished, so
  // the finish may read their outputs — the LoRA shrinks' t — before its own.
  pdl_trigger();
  stage_x<MP>(sx, op->x, M, m0, K, kbeg, steps);
  __syncthreads();
  const uint32_t* xl = sx + ((lane >> 3) * MP + (lane & 7)) * 4; // this lane's ldmatrix row at (s, j) = 0, n-tile 0
  for (; tile < tiles; tile += stride) {
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int s = 0; s < steps; s++) {
      const Tile cur = tile_of(op, tile, tiles, g, K, kbeg); // from the kernel's parameters each step: fewer live registers
      const Codes c = nxt;
      const bool live = t < nb_of(s);
      if (s + 1 < steps) nxt = fetch_codes(cur, SK_COLS * (s + 1), t, nb_of(s + 1)); // in flight during this step's MMAs
      else nxt = fetch_codes(tile_of(op, tile + stride, tiles, g, K, kbeg), 0, t, nb_of(0));
      const Lut la = make_lut(live ? scale_of(cur.qa, code, c.sa) : 0.0f);
      const Lut lb = make_lut(live ? scale_of(cur.qb, code, c.sb) : 0.0f);
      // mma_step's loop, with each 32-bit word's selectors built once for its
      // two MMAs (through mma_step's per-MMA functor: 5 % more instructions).
#pragma unroll
      for (int w = 0; w < 8; w++) { // a 32-bit word of each row: the codes of MMAs j = 2w, 2w + 1
        const uint32_t wa = word(w < 4 ? c.a0 : c.a1, w & 3), wb = word(w < 4 ? c.b0 : c.b1, w & 3);
        const uint32_t sa = wa & 0x77777777u, ha = ((wa >> 1) & 0x44444444u) | 0x32103210u;
        const uint32_t sb = wb & 0x77777777u, hb = ((wb >> 1) & 0x44444444u) | 0x32103210u;
#pragma unroll
        for (int h = 0; h < 2; h++) {
          uint32_t a0, a1, a2, a3;
          lookup4(la, sa >> (16 * h), ha >> (16 * h), a0, a2);
          lookup4(lb, sb >> (16 * h), hb >> (16 * h), a1, a3);
          const uint32_t* xj = xl + (16 * s + 2 * w + h) * JW;
          uint32_t b[NT][4]; // matrices of each x4: (hi, k 0-1), (hi, k 2-3), (lo, k 0-1), (lo, k 2-3)
#pragma unroll
          for (int n = 0; n < NT; n++) ldmatrix_x4(b[n], xj + 32 * n);
#pragma unroll
          for (int n = 0; n < NT; n++) mma16816(acc[n], a0, a1, a2, a3, b[n][0], b[n][1]);
#pragma unroll
          for (int n = 0; n < NT; n++) mma16816(acc[n], a0, a1, a2, a3, b[n][2], b[n][3]);
        }
      }
    }
    // acc[n][j] is row ra (the A-row) of batch row m0 + 8n + 2t + j, acc[n][2 + j] row rb.
    float* wsp = ws + (long long)blockIdx.y * MP * 2 * P + 2 * (tile * 8 + g);
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const int mm = 8 * n + 2 * t + j;
        if (m0 + mm < M) *(float2*)(wsp + (long long)mm * 2 * P) = make_float2(acc[n][j], acc[n][2 + j]);
      }
  }
}

// mmas_finish: for batch row m0 + mm and pair p (a thread each), the sum of
// mmas_nf4's partials in split order (deterministic), the LoRA terms and the
// epilogue. mp is the launch's 8·NT. A block takes 256/rpb pairs × rpb batch
// rows (rpb 1, 2, 4 or 8; a warp one row): with rpb 8 the rows of a block
// read each pair's LoRA B rows once from L2 and from L1 after (gate/up at
// batch 20: 1.4 MB of B rows read 20 times at rpb 1).
extern "C" __global__ void __launch_bounds__(256) mmas_finish(const __grid_constant__ struct GemvOp op, long long M, long long m0,
                                                              const float* __restrict__ ws, long long splits, long long mp, long long rpb) {
  const int per = 256 / (int)rpb, P = pairs_of(&op);
  const int pair = blockIdx.x * per + threadIdx.x % per, mm = blockIdx.y * (int)rpb + threadIdx.x / per, m = (int)m0 + mm;
  if (m >= M || mm >= mp) return;
  const PreLora pre = pre_lora(op, m, pair); // while the product runs (PreLora's note)
  pdl_wait();
  if (!pre.live) return;
  const float2 s = split_sums<8>(ws, P, mm, pair, splits, mp);
  epilogue(op, m, *pre.pr.A, pre.pr.ra, s.x + pre.la, pre.pr.B, pre.pr.rb, s.y + pre.lb, pair);
}

// MINB blocks a multiprocessor: 2 (≤ 128 registers) up to NT = 3; 1 for NT =
// 4 and 8.
#define MMAS(NT, MINB)                                                                                             \
  extern "C" __global__ void __launch_bounds__(256, MINB) mmas_nf4_##NT(const __grid_constant__ struct GemvOp op, long long M, \
                                                                        long long m0, float* ws, long long S) {   \
    mmas_body<NT>(&op, (int)M, (int)m0, ws, (int)S);                                                               \
  }
MMAS(1, 2)
MMAS(2, 2)
MMAS(3, 2)
MMAS(4, 1)
MMAS(8, 1)

// ---------------------------------------------------------------------------
// mmas_bf16_<NT> (v11): dense bf16 matrices (the lm_head; every matrix of a
// bf16 checkpoint) for up to 8·NT batch rows m0, m0 + 1, …, x as two bf16
// parts like mmas_nf4 (TestActivationSplit's bound covers every base
// product, the lm_head included). No split of K — the lm_head has 9,496
// tiles, enough for every warp, and split partials would be M·151,936 floats
// each: a block's 8 warps take 8 tiles and walk K together in steps of 256
// columns; the block stages each step of x (double-buffered, one barrier a
// step) in mmas_nf4's k order, and thread t loads columns 64t … 64t + 63 of
// the step in its two rows (8 16-byte loads each), which are the A fragments
// of that order as they lie in memory. The epilogue (and any LoRA term) runs
// in the kernel. It replaces mma_bf16 (x loaded and split into three parts
// per warp and 64 columns: 0.9 TB/s for the lm_head at batch 20, H200).
template <int NT>
__device__ void mmasb_body(const struct GemvOp* __restrict__ op, int M, int m0) {
  constexpr int WARPS = 8, MP = 8 * NT, JW = sk_jw(MP);
  extern __shared__ uint32_t sx[]; // [2 buffers][16 j][JW]
  const struct Mat* A0 = &op->mat[0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int K = A0->K, steps = (K + SK_COLS - 1) / SK_COLS, tiles = pairs_of(op) / 8;
  const uint32_t* xl = sx + ((lane >> 3) * MP + (lane & 7)) * 4; // this lane's ldmatrix row at j = 0, n-tile 0
  pdl_wait(); // x, the LoRA shrink and the outputs the epilogue adds to come from earlier kernels
  for (int tg = blockIdx.x * WARPS; tg < tiles; tg += gridDim.x * WARPS) { // block-uniform: the steps have barriers
    const int tile = tg + warp, pair = tile < tiles ? tile * 8 + g : 0;
    const PairRows pr = pair_rows(op, pair);
    const struct Mat* B = pr.B ? pr.B : pr.A;
    const uint4* wa = (const uint4*)(pr.A->bf16 + (long long)pr.ra * K + 64 * t);
    const uint4* wb = (const uint4*)(B->bf16 + (long long)(pr.B ? pr.rb : pr.ra) * K + 64 * t);
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int s = 0; s < steps; s++) {
      const int kbeg = s * SK_COLS;
      const bool live = tile < tiles && kbeg + 64 * t < K;
      uint4 ua[8], ub[8]; // this step's 64 columns of each row, in flight while x is staged
#pragma unroll
      for (int q = 0; q < 8; q++) {
        ua[q] = live ? __ldg(wa + kbeg / 8 + q) : make_uint4(0, 0, 0, 0);
        ub[q] = live ? __ldg(wb + kbeg / 8 + q) : make_uint4(0, 0, 0, 0);
      }
      stage_x<MP>(sx + (s & 1) * 16 * JW, op->x, M, m0, K, kbeg, 1);
      __syncthreads();
      // MMA j: columns 64t + 4j … 4j + 3 of each row, words 2(j & 1) and 2(j & 1) + 1 of load j/2.
      mma_step<NT, JW>(acc, xl + (s & 1) * 16 * JW, [&](int j, uint32_t& a0, uint32_t& a1, uint32_t& a2, uint32_t& a3) {
        a0 = j & 1 ? ua[j / 2].z : ua[j / 2].x;
        a2 = j & 1 ? ua[j / 2].w : ua[j / 2].y;
        a1 = j & 1 ? ub[j / 2].z : ub[j / 2].x;
        a3 = j & 1 ? ub[j / 2].w : ub[j / 2].y;
      });
    }
    // acc[n][j] is row ra (the A-row) of batch row m0 + 8n + 2t + j, acc[n][2 + j] row rb.
    if (tile < tiles && pr.valid)
#pragma unroll
      for (int n = 0; n < NT; n++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
          const int m = m0 + 8 * n + 2 * t + j;
          if (m < M) {
            const float va = acc[n][j] + lora_serial(*pr.A, *op, m, pr.ra);
            const float vb = acc[n][2 + j] + (pr.B ? lora_serial(*pr.B, *op, m, pr.rb) : 0.0f);
            epilogue(*op, m, *pr.A, pr.ra, va, pr.B, pr.rb, vb, pair);
          }
        }
    __syncthreads(); // the next group's first step rewrites a buffer the last may still be read from
  }
}

#define MMASB(NT, MINB)                                                                                            \
  extern "C" __global__ void __launch_bounds__(256, MINB) mmas_bf16_##NT(const __grid_constant__ struct GemvOp op, long long M, \
                                                                         long long m0) {                         \
    mmasb_body<NT>(&op, (int)M, (int)m0);                                                                          \
  }
MMASB(1, 2)
MMASB(2, 2)
MMASB(3, 2)
MMASB(4, 1)
MMASB(8, 1)
