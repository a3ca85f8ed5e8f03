// mma.cu: the NF4 (and dense bf16) matrix product on the tensor cores for
// batches: mma.sync m16n8k16, bf16 in, fp32 accumulate, for matrices with
// K % 64 == 0, 64-blocks and rows in 16s. Bytes per call as nf4_matmul.cu;
// the weights are read once per pass of 8·NT batch rows.
//
// A tile is 8 output pairs (pair_rows in gemv.cuh; a warp takes TW tiles), the
// 16 rows of the MMA's A operand: fragment row g is pair g's A-row, row g+8
// its B-row — so RoPE's (j, j+half), gate/up's (gate, up) and the residual's
// (2p, 2p+1) land in one thread's accumulators. The codes are stored permuted
// within each (row, 64-block) by the launcher (mmaNF4): thread t of a quad
// reads its 8 bytes, the codes of columns 16s + 2t, +1, +8, +9 for s = 0…3,
// dequantises them exactly as bitsandbytes (round_bf16(NF4·scale)), which is
// exactly the bf16 A fragment. x (fp32) enters as three bf16 parts, hi + mid
// + lo, so the product keeps fp32 accuracy. NT n-tiles of 8 batch rows per
// pass; warps per tile split K as in gemv.
//
// Versions: v5 fragments dequantised in registers; v5b dense bf16 too; v6
// (reverted) x pre-split by the producers; v7 (reverted) x pre-split once per
// matrix in fragment order; v8 two tiles a warp for dense bf16 (TW below);
// NT = 3 for batches of 17–24 lost (gate/up 3,720 → 4,476 µs a step at batch
// 20, H200). v9 (mmas_nf4 below; kernels/dev/nf4_mma_batch.cu v5) replaces
// mma_nf4 for NF4: x staged once per block, two bf16 parts, K split across
// blocks.
#include "gemv.cuh"

// dq2 dequantises the two codes of one byte to a packed bf16 pair (high nibble first).
__device__ __forceinline__ uint32_t dq2(uint32_t byte, float s, const float* table) {
  return pack_bf16(table[(byte >> 4) & 15u] * s, table[byte & 15u] * s);
}
// A warp computes TW tiles of 8 pairs (16·TW rows of A) that share each B
// fragment, so x is loaded and split once per TW tiles: 2 for dense bf16
// (lm_head: 709 → 559 µs a step at batch 20 on an H200), 1 for NF4, whose
// registers at TW = 2 (≈180) leave one block a multiprocessor and lost
// (gate/up 3,720 → 4,702 µs).
template <int FMT, int NT, int TW>
__device__ void mma_body(const struct GemvOp* __restrict__ op, long long M, int wpp) {
  __shared__ float table[16];
  __shared__ float code[256];
  __shared__ float red[8][TW][NT][4][32]; // split-K partial accumulators, per warp
  const struct Mat* A0 = &op->mat[0];
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code[i] = A0->code[i];
  pdl_wait(); // x, and the outputs the epilogue adds to, come from earlier kernels
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int part = warp % wpp, tpb = 8 / wpp; // warps share a tile group; groups per block
  const int P = pairs_of(op);
  const int K = A0->K;
  const int blocks = K / 64, per = (blocks + wpp - 1) / wpp;
  const int bbeg = part * per, bend = min(blocks, bbeg + per);
  // Persistent, block-uniform loop (the split-K meeting has block barriers):
  // the block's tile groups are bb, bb + 8·TW, …; a warp whose tiles are
  // past the end still takes part in the barriers.
  for (int bb = blockIdx.x * tpb * 8 * TW; bb < P; bb += gridDim.x * tpb * 8 * TW) {
    const int base = bb + (warp / wpp) * 8 * TW;
    // This thread's pair (g) of each tile and its two rows (B is never null: N % 16 == 0).
    bool valid[TW];
    int pair[TW], ra[TW], rb[TW];
    const struct Mat* A[TW];
    const struct Mat* B[TW];
    MatRegs qa[TW], qb[TW];
    unsigned ea[TW], eb[TW];
#pragma unroll
    for (int w = 0; w < TW; w++) {
      valid[w] = base + 8 * w < P;
      pair[w] = valid[w] ? base + 8 * w + g : 0;
      const PairRows pr = pair_rows(op, pair[w]);
      A[w] = pr.A;
      B[w] = pr.B;
      ra[w] = pr.ra;
      rb[w] = pr.rb;
      qa[w] = mat_regs(A[w]);
      qb[w] = mat_regs(B[w]);
      ea[w] = (unsigned)ra[w] * K;
      eb[w] = (unsigned)rb[w] * K;
    }
    const bool any = valid[0]; // tiles are taken in order: the first is valid if any is
    for (long long m0 = 0; m0 < M; m0 += 8 * NT) {
      float acc[TW][NT][4];
#pragma unroll
      for (int w = 0; w < TW; w++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[w][n][0] = acc[w][n][1] = acc[w][n][2] = acc[w][n][3] = 0.0f;
      for (int b = bbeg; any && b < bend; b++) {
        const unsigned c0 = 64u * b;
        uint2 ca[TW], cb[TW];
        float sa[TW], sb[TW];
#pragma unroll
        for (int w = 0; w < TW; w++) {
          ca[w] = cb[w] = make_uint2(0, 0);
          sa[w] = sb[w] = 0.0f;
          if (FMT == FMT_NF4 && valid[w]) {
            ca[w] = __ldg((const uint2*)(qa[w].packed + (ea[w] + c0) / 2 + 8 * t));
            cb[w] = __ldg((const uint2*)(qb[w].packed + (eb[w] + c0) / 2 + 8 * t));
            sa[w] = nf4_scale(qa[w], code, ea[w] + c0);
            sb[w] = nf4_scale(qb[w], code, eb[w] + c0);
          }
        }
#pragma unroll
        for (int st = 0; st < 4; st++) {
          const int col = c0 + 16 * st + 2 * t;
          uint32_t a[TW][4];
#pragma unroll
          for (int w = 0; w < TW; w++) {
            if (FMT == FMT_NF4) {
              const uint32_t wa = st < 2 ? ca[w].x : ca[w].y, wb = st < 2 ? cb[w].x : cb[w].y;
              const int sh = 16 * (st & 1);
              a[w][0] = dq2(wa >> sh, sa[w], table);
              a[w][2] = dq2(wa >> (sh + 8), sa[w], table);
              a[w][1] = dq2(wb >> sh, sb[w], table);
              a[w][3] = dq2(wb >> (sh + 8), sb[w], table);
            } else if (valid[w]) { // dense bf16: the fragments are the weights
              const uint16_t* ha = A[w]->bf16 + ea[w];
              const uint16_t* hb = B[w]->bf16 + eb[w];
              a[w][0] = __ldg((const uint32_t*)(ha + col));
              a[w][2] = __ldg((const uint32_t*)(ha + col + 8));
              a[w][1] = __ldg((const uint32_t*)(hb + col));
              a[w][3] = __ldg((const uint32_t*)(hb + col + 8));
            } else {
              a[w][0] = a[w][1] = a[w][2] = a[w][3] = 0;
            }
          }
#pragma unroll
          for (int n = 0; n < NT; n++) {
            const long long m = m0 + 8 * n + g;
            float2 x0 = make_float2(0, 0), x1 = x0;
            if (m < M) {
              x0 = __ldg((const float2*)(op->x + m * K + col));
              x1 = __ldg((const float2*)(op->x + m * K + col + 8));
            }
            uint32_t h0, m0r, l0, h1, m1r, l1;
            split3(x0.x, x0.y, h0, m0r, l0);
            split3(x1.x, x1.y, h1, m1r, l1);
#pragma unroll
            for (int w = 0; w < TW; w++) {
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], h0, h1);
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], m0r, m1r);
              mma16816(acc[w][n], a[w][0], a[w][1], a[w][2], a[w][3], l0, l1);
            }
          }
        }
      }
      if (wpp > 1) { // the group's warps meet in shared memory; its first warp finishes
#pragma unroll
        for (int w = 0; w < TW; w++)
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) red[warp][w][n][i][lane] = acc[w][n][i];
        __syncthreads();
        if (part == 0) {
#pragma unroll
          for (int w = 0; w < TW; w++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
              for (int i = 0; i < 4; i++) {
                float s = 0.0f;
                for (int v = 0; v < wpp; v++) s += red[warp + v][w][n][i][lane];
                acc[w][n][i] = s;
              }
        }
        __syncthreads();
      }
      if (part == 0) {
        // acc[w][n][j] is tile w's row g (the A-row), batch row m0 + 8n + 2t + j; acc[w][n][2+j] the B-row.
#pragma unroll
        for (int w = 0; w < TW; w++) {
          if (!valid[w]) continue;
#pragma unroll
          for (int n = 0; n < NT; n++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
              const long long m = m0 + 8 * n + 2 * t + j;
              if (m < M) {
                float va = acc[w][n][j], vb = acc[w][n][2 + j];
                va += lora_serial(*A[w], *op, (int)m, ra[w]);
                vb += lora_serial(*B[w], *op, (int)m, rb[w]);
                epilogue(*op, (int)m, *A[w], ra[w], va, B[w], rb[w], vb, pair[w]);
              }
            }
        }
      }
    }
  }
}

// mma_bf16_<NT> (dense bf16 weights, e.g. lm_head): grid = one wave of
// 256-thread blocks (persistent), NT n-tiles of 8 batch rows per pass, wpp
// warps per tile of 8 pairs (1, 2, 4 or 8). (NF4 runs through mmas_nf4.)
#define MMA(NT)                                                                                                    \
  extern "C" __global__ void __launch_bounds__(256) mma_bf16_##NT(const __grid_constant__ struct GemvOp op, long long M, long long wpp) { \
    mma_body<FMT_BF16, NT, 2>(&op, M, (int)wpp);                                                                       \
  }
MMA(1)
MMA(2)
MMA(4)

// ---------------------------------------------------------------------------
// mmas_nf4_<NT> (v9): NF4 on the tensor cores for up to 8·NT batch rows
// m0, m0 + 1, … (one pass; the launcher issues one launch a pass). The grid is
// (groups, splits): block (b, s) takes the columns [256s, 256s + 256) of K.
// It stages x[rows, those columns] once in shared memory as two bf16 parts
// (hi + lo = bf16(x − hi): 16 significant bits, qwen's TestActivationSplit
// bounds what that moves), then each of its 8 warps walks tiles (8 pairs, the
// 16 A-rows of the MMA, as mma_body) tile, tile + 8·groups, …, with the next
// tile's codes and scales loaded into registers while this tile's MMAs run:
// no barrier after the staging. Each warp writes its tile's partial sums to
// ws[split][batch row][2·pair + {0, 1}]; mmas_finish (the next launch) sums
// them. (Finishing in the warp that arrives last at a tile's counter was
// tried first: its serial L2 round trips — splits × outputs, then the LoRA
// terms — put 30–150 µs on each tile's critical path, H200, 2026-11-28.)
constexpr int SK_COLS = 256; // columns of K a block takes
constexpr int SK_ROWW = SK_COLS / 2 + 4; // words a staged x row: ≡ 4 mod 32, so ldmatrix's 8 rows hit distinct banks

// raw_scale is what a block scale is built from: the double-quantised code
// byte, or the fp32 absmax's bits; scale_of finishes it (nf4_scale's arithmetic).
__device__ __forceinline__ uint32_t raw_scale(const MatRegs& r, unsigned e) {
  const unsigned b = e >> r.blockShift;
  return r.qabsmax ? (uint32_t)__ldg(r.qabsmax + b) : __float_as_uint(__ldg(r.absmax + b));
}
__device__ __forceinline__ float scale_of(const MatRegs& r, const float* code, unsigned e, uint32_t raw) {
  if (r.qabsmax) return __fadd_rn(__fmul_rn(code[raw], __ldg(r.nested + ((e >> r.blockShift) >> r.nestedShift))), r.offset);
  return __uint_as_float(raw);
}

// ldmatrix_x4: four 8×8 b16 matrices from shared memory; lane L gives row
// L % 8 of matrix L / 8, and thread (g, t) receives row g, columns 2t, 2t + 1
// of each — with rows = batch rows and columns = 8 consecutive k, a B fragment.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint32_t* p) {
  const unsigned a = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// A warp's tile: this thread's pair and its two rows (as mma_body).
struct Tile {
  const struct Mat* A;
  const struct Mat* B;
  MatRegs qa, qb;
  unsigned ea, eb; // flat index of the rows' first column of this block's split
  int ra, rb, pair;
  bool valid;
};

__device__ __forceinline__ Tile tile_of(const struct GemvOp* op, int tile, int tiles, int g, int K, int kbeg) {
  Tile w;
  w.valid = tile < tiles;
  w.pair = w.valid ? tile * 8 + g : 0;
  const PairRows pr = pair_rows(op, w.pair);
  w.A = pr.A;
  w.B = pr.B ? pr.B : pr.A;
  w.ra = pr.ra;
  w.rb = pr.B ? pr.rb : pr.ra;
  w.qa = mat_regs(w.A);
  w.qb = mat_regs(w.B);
  w.ea = (unsigned)w.ra * K + kbeg;
  w.eb = (unsigned)w.rb * K + kbeg;
  return w;
}

// Next: what fetching a tile's codes and scales needs (this thread's 8
// bytes of the rows' first 64 columns of the split; the scale sources).
struct Next {
  const uint8_t* ca;
  const uint8_t* cb;
  MatRegs qa, qb; // only the scale pointers and shift are read
  unsigned ea, eb;
  bool valid;
};

__device__ __forceinline__ Next next_of(const struct GemvOp* op, int tile, int tiles, int g, int t, int K, int kbeg) {
  const Tile w = tile_of(op, tile, tiles, g, K, kbeg);
  return Next{w.qa.packed + w.ea / 2 + 8 * t, w.qb.packed + w.eb / 2 + 8 * t, w.qa, w.qb, w.ea, w.eb, w.valid};
}

template <int NT>
__device__ void mmas_body(const struct GemvOp* __restrict__ op, int M, int m0, float* __restrict__ ws) {
  constexpr int WARPS = 8, T = WARPS * 32, MP = 8 * NT, S = SK_COLS / 64, HALF = SK_COLS / 2;
  extern __shared__ uint32_t sx[]; // [2][MP][SK_ROWW]: x's hi and lo parts
  __shared__ float table[16];
  __shared__ float code[256];
  const struct Mat* A0 = &op->mat[0];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3, mat = lane >> 3;
  const int K = A0->K, kbeg = blockIdx.y * SK_COLS, steps = min(S, (K - kbeg) / 64);
  const int P = pairs_of(op), tiles = P / 8, stride = gridDim.x * WARPS;
  // The ring: slot s holds step s (64 columns) of the tile fetched next.
  uint2 ca[S], cb[S];
  uint32_t qa[S], qb[S];
  auto fetch = [&](const Next& w, int s) {
    ca[s] = cb[s] = make_uint2(0, 0);
    qa[s] = qb[s] = 0;
    if (w.valid && s < steps) {
      ca[s] = __ldg((const uint2*)(w.ca + 32 * s));
      cb[s] = __ldg((const uint2*)(w.cb + 32 * s));
      qa[s] = raw_scale(w.qa, w.ea + 64 * s);
      qb[s] = raw_scale(w.qb, w.eb + 64 * s);
    }
  };
  int tile = blockIdx.x * WARPS + warp;
#pragma unroll
  for (int s = 0; s < S; s++) fetch(next_of(op, tile, tiles, g, t, K, kbeg), s); // the weights: in flight before the wait
  if (threadIdx.x < 16) table[threadIdx.x] = NF4_TABLE[threadIdx.x];
  if (A0->code)
    for (int i = threadIdx.x; i < 256; i += T) code[i] = A0->code[i];
  pdl_wait(); // x, the partials' workspace and the outputs come after earlier kernels
  // x[m0 …, kbeg …] → hi and lo planes (zeros past M and past K).
  for (int p0 = threadIdx.x; p0 < MP * HALF; p0 += 4 * T) {
    float2 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int p = p0 + u * T, m = p / HALF, cp = p % HALF;
      v[u] = make_float2(0, 0);
      if (p < MP * HALF && m0 + m < M && 2 * cp < 64 * steps) v[u] = __ldg((const float2*)(op->x + (long long)(m0 + m) * K + kbeg + 2 * cp));
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int p = p0 + u * T, m = p / HALF, cp = p % HALF;
      if (p < MP * HALF) {
        const uint32_t hi = pack_bf16(v[u].x, v[u].y);
        sx[m * SK_ROWW + cp] = hi;
        sx[(MP + m) * SK_ROWW + cp] = pack_bf16(v[u].x - __uint_as_float(hi << 16), v[u].y - __uint_as_float(hi & 0xffff0000u));
      }
    }
  }
  __syncthreads();
  for (; tile < tiles; tile += stride) {
    const Tile cur = tile_of(op, tile, tiles, g, K, kbeg);
    const Next nxt = next_of(op, tile + stride, tiles, g, t, K, kbeg);
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < S; s++) {
      if (s >= steps) break;
      const uint2 cas = ca[s], cbs = cb[s];
      const float sa = scale_of(cur.qa, code, cur.ea + 64 * s, qa[s]), sb = scale_of(cur.qb, code, cur.eb + 64 * s, qb[s]);
      fetch(nxt, s); // the next tile's step s, in flight during this tile's MMAs
#pragma unroll
      for (int st = 0; st < 4; st++) {
        const uint32_t wa = st < 2 ? cas.x : cas.y, wb = st < 2 ? cbs.x : cbs.y;
        const int sh = 16 * (st & 1);
        const uint32_t a0 = dq2(wa >> sh, sa, table), a2 = dq2(wa >> (sh + 8), sa, table);
        const uint32_t a1 = dq2(wb >> sh, sb, table), a3 = dq2(wb >> (sh + 8), sb, table);
#pragma unroll
        for (int n = 0; n < NT; n++) {
          // Matrices of the x4: (hi, k 0-7), (hi, k 8-15), (lo, k 0-7), (lo, k 8-15).
          uint32_t b[4];
          ldmatrix_x4(b, sx + ((mat >> 1) * MP + 8 * n + (lane & 7)) * SK_ROWW + 32 * s + 8 * st + 4 * (mat & 1));
          mma16816(acc[n], a0, a1, a2, a3, b[0], b[1]);
          mma16816(acc[n], a0, a1, a2, a3, b[2], b[3]);
        }
      }
    }
    // acc[n][j] is row ra (the A-row) of batch row m0 + 8n + 2t + j, acc[n][2 + j] row rb.
    float* w = ws + (long long)blockIdx.y * MP * 2 * P + 2 * cur.pair;
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const int mm = 8 * n + 2 * t + j;
        if (m0 + mm < M) *(float2*)(w + (long long)mm * 2 * P) = make_float2(acc[n][j], acc[n][2 + j]);
      }
  }
}

// lora_vec is lora_serial with 16-byte loads, 16 of the rank's terms in
// flight at once (summed in a fixed order); lora_serial where B or t are
// not 16-byte aligned.
__device__ __forceinline__ float lora_vec(const struct Mat& a, const struct GemvOp& op, int m, long long n) {
  const int ad = op.rows[m].adapter;
  if (ad < 0 || a.loraSlot < 0 || a.loraB[ad] == nullptr) return 0.0f;
  const int r = a.loraRank[ad];
  const float* B = a.loraB[ad] + n * r;
  const float* t = op.t + (long long)m * op.tStride + a.loraSlot * op.rmax;
  if (r % 4 || ((uintptr_t)B | (uintptr_t)t) & 15) return lora_serial(a, op, m, n);
  float s = 0.0f;
  for (int j0 = 0; j0 < r; j0 += 16) {
    float4 b[4], x[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
      b[i] = x[i] = make_float4(0, 0, 0, 0);
      if (j0 + 4 * i < r) {
        b[i] = *(const float4*)(B + j0 + 4 * i);
        x[i] = *(const float4*)(t + j0 + 4 * i);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) s += b[i].x * x[i].x + b[i].y * x[i].y + b[i].z * x[i].z + b[i].w * x[i].w;
  }
  return a.loraScale[ad] * s;
}

// mmas_finish: for batch row m0 + blockIdx.y and pair p (a thread each), the
// sum of mmas_nf4's partials in split order (deterministic), the LoRA terms
// and the epilogue. mp is the launch's 8·NT.
extern "C" __global__ void __launch_bounds__(256) mmas_finish(const __grid_constant__ struct GemvOp op, long long M, long long m0,
                                                              const float* __restrict__ ws, long long splits, long long mp) {
  pdl_wait();
  const int P = pairs_of(&op), pair = blockIdx.x * blockDim.x + threadIdx.x, mm = blockIdx.y, m = (int)m0 + mm;
  if (pair >= P || m >= M) return;
  const float* w = ws + (long long)mm * 2 * P + 2 * pair;
  const long long stride = mp * 2 * P;
  float va = 0.0f, vb = 0.0f;
  int sp = 0;
  for (; sp + 4 <= splits; sp += 4) { // four loads in flight, summed in order
    float2 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) v[u] = __ldcg((const float2*)(w + (sp + u) * stride));
#pragma unroll
    for (int u = 0; u < 4; u++) {
      va += v[u].x;
      vb += v[u].y;
    }
  }
  for (; sp < splits; sp++) {
    const float2 v = __ldcg((const float2*)(w + sp * stride));
    va += v.x;
    vb += v.y;
  }
  const PairRows pr = pair_rows(&op, pair);
  if (!pr.valid) return;
  va += lora_vec(*pr.A, op, m, pr.ra);
  if (pr.B) vb += lora_vec(*pr.B, op, m, pr.rb);
  epilogue(op, m, *pr.A, pr.ra, va, pr.B, pr.rb, vb, pair);
}

// MINB blocks a multiprocessor: 2 (≤ 128 registers, a few bytes spilled)
// up to NT = 3; NT = 4 and 8 need 169 and 231 registers.
#define MMAS(NT, MINB)                                                                                             \
  extern "C" __global__ void __launch_bounds__(256, MINB) mmas_nf4_##NT(const __grid_constant__ struct GemvOp op, long long M, \
                                                                        long long m0, float* ws) {                \
    mmas_body<NT>(&op, (int)M, (int)m0, ws);                                                                       \
  }
MMAS(1, 2)
MMAS(2, 2)
MMAS(3, 2)
MMAS(4, 1)
MMAS(8, 1)
