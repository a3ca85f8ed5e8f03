// sample.cu: greedy token choice on the device, so only ids come back.
//
// argmax: ids[m] = the index of row m's largest logit [M, V], the lowest on
// ties (as torch.argmax and the CPU reference), or −1 when the row holds a
// NaN or infinite logit (the engine reports it). Grid (S, M): block (s, m)
// scans slice s of row m (16-byte loads, four in flight a thread) into
// wsv/wsi [M][S]; the row's last block to finish (count[m], which it resets)
// takes the slices' bests in slice order — the lowest index on ties, as one
// scan would. (A block a row took 15 µs of a batch-1 step at V = 151,936,
// H200; S blocks read it at once.) adv, where not null, is the rows' metadata
// of a decode step, advanced for the next one (tok = the id, pos + 1): a next
// step fed exactly these ids needs no copy from the host (Engine.run).
// Bytes: M·V·4.
#include "common.cuh"

// better: (v, i) beats (best, idx) — larger, or equal and lower.
__device__ __forceinline__ bool better(float v, int i, float best, int idx) { return v > best || (v == best && i < idx); }

extern "C" __global__ void __launch_bounds__(256) argmax(int32_t* ids, const float* logits, long long V, float* wsv, int* wsi,
                                                         int* count, struct RowMeta* adv) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  const int S = gridDim.x, sl = blockIdx.x, m = blockIdx.y;
  const float* row = logits + (long long)m * V;
  float best = -INFINITY;
  int idx = 0x7fffffff;
  bool bad = false; // a NaN or infinite logit: the row has no meaningful argmax
  auto see = [&](float v, int i) {
    bad |= !isfinite(v);
    if (better(v, i, best, idx)) {
      best = v;
      idx = i;
    }
  };
  if (V % 4 == 0) { // rows 16-byte aligned
    const float4* r4 = (const float4*)row;
    const int n4 = (int)(V / 4), lo = (int)((long long)n4 * sl / S), hi = (int)((long long)n4 * (sl + 1) / S);
    for (int i0 = lo + threadIdx.x; i0 < hi; i0 += 4 * blockDim.x) {
      float4 u[4];
#pragma unroll
      for (int k = 0; k < 4; k++)
        if (i0 + k * (int)blockDim.x < hi) u[k] = __ldg(r4 + i0 + k * blockDim.x);
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const int i = i0 + k * blockDim.x;
        if (i < hi) {
          see(u[k].x, 4 * i);
          see(u[k].y, 4 * i + 1);
          see(u[k].z, 4 * i + 2);
          see(u[k].w, 4 * i + 3);
        }
      }
    }
  } else {
    const int lo = (int)(V * sl / S), hi = (int)(V * (sl + 1) / S);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) see(row[i], i);
  }
  bad = __syncthreads_or(bad);
  __shared__ float bv[8];
  __shared__ int bi[8];
  __shared__ bool last;
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int j = __shfl_xor_sync(0xffffffffu, idx, o);
    if (better(v, j, best, idx)) {
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
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
      if (better(bv[w], bi[w], best, idx)) {
        best = bv[w];
        idx = bi[w];
      }
    wsv[m * S + sl] = best;
    wsi[m * S + sl] = bad ? -1 : idx;
    __threadfence(); // the slice's best is visible before the count says so
    last = atomicAdd(count + m, 1) == S - 1;
  }
  __syncthreads();
  if (!last || threadIdx.x != 0) return;
  __threadfence();
  best = -INFINITY;
  idx = 0x7fffffff;
  bad = false;
  for (int s = 0; s < S; s++) { // slice order: an earlier slice's equal value has the lower index
    const float v = __ldcg(wsv + m * S + s);
    const int i = __ldcg(wsi + m * S + s);
    bad |= i < 0;
    if (better(v, i, best, idx)) {
      best = v;
      idx = i;
    }
  }
  count[m] = 0; // for the next launch
  const int id = bad ? -1 : idx;
  ids[m] = id;
  if (adv) {
    adv[m].tok = id;
    adv[m].pos += 1;
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

// ---- Sampling candidates (issue 12; qwen.Sampler.Candidates) ----
//
// For each row of logits [M, V] with its top-k size k (1 for greedy) and
// repetition penalty p over the distinct tokens it has seen: the penalty
// applied in place (logit /= p if ≥ 0, *= p if < 0, as transformers), then
// every token whose logit is at least the k-th largest — ties with it
// included — in id order, at most CAND_MAX of them; the host draws from those
// (qwen.Sampler.NextFrom gives the token Next gives on the whole row). More
// than CAND_MAX (ties), or k = 0 (no top-k): count −1 and the host reads the
// whole, penalised row; a NaN or infinite logit: count −2.
//
// Two launches. cand_slice: a block per (4,096-logit slice, row) applies the
// penalty to its slice, holds its keys in registers (16 a thread) and finds
// the slice's k-th largest by radix select (four 8-bit digits, a shared
// histogram each); it lists the keys ≥ that one in id order — or, past
// CAND_MAX of them, only the larger ones, marking the slice truncated.
// cand_merge: a block per row selects the k-th largest of the lists (a
// truncated slice's missing ties counted by weight), and compacts the keys ≥
// it in slice order, which is id order. Every key outside the lists is below
// its slice's k-th, so the k-th of the lists is the row's.
// Bytes: M·V·4 read (once), M·S·CAND_MAX·8 of lists written and read.
#define CAND_MAX 64        // candidates a row hands the host at most (qwen.MaxCandidates)
#define CAND_SLICE 4096    // logits a cand_slice block takes
#define CAND_T 256         // threads of both kernels: 16 logits each in cand_slice
#define CAND_MAX_SLICES 128 // slices a row may have: V ≤ 524,288

// cand_key maps a finite float to a key with the same order (−0 as +0, so
// that equal floats have equal keys); every finite key is > 0, and 0 marks no
// logit. cand_val is its inverse.
__device__ __forceinline__ uint32_t cand_key(float f) {
  const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
  return u & 0x80000000u ? ~u : u | 0x80000000u;
}
__device__ __forceinline__ float cand_val(uint32_t k) { return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// radix_pick (warp 0): in the 256-bin histogram h, the digit of the need-th
// largest key counted from the top bin down, and its rank inside that bin.
__device__ __forceinline__ void radix_pick(const int* h, int need, uint32_t& digit, int& rest) {
  const int lane = threadIdx.x & 31;
  int c[8], sum = 0;
#pragma unroll
  for (int j = 0; j < 8; j++) sum += c[j] = h[255 - 8 * lane - j];
  int incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  const int excl = incl - sum;
  const bool mine = excl < need && need <= incl;
  int d = 0, r = 0;
  if (mine) {
    int acc = excl;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      if (acc + c[j] >= need) {
        d = 255 - 8 * lane - j;
        r = need - acc;
        break;
      }
      acc += c[j];
    }
  }
  const unsigned who = __ballot_sync(0xffffffffu, mine);
  const int src = who ? __ffs(who) - 1 : 0;
  digit = (uint32_t)__shfl_sync(0xffffffffu, d, src);
  rest = __shfl_sync(0xffffffffu, r, src);
}

// cand_scan returns the exclusive prefix sum of v over the CAND_T threads and
// the total.
__device__ __forceinline__ int cand_scan(int v, int& total) {
  __shared__ int warps[CAND_T / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warps[warp] = x;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < CAND_T / 32; w++) {
    const int c = warps[w];
    before += w < warp ? c : 0;
    total += c;
  }
  __syncthreads();
  return before + x - v;
}

// The radix select shared by both kernels: the need-th largest of the keys a
// block holds, where each thread's count(mask, prefix, shift, hist) adds its
// keys matching prefix under mask into hist by their digit at shift.
template <typename F>
__device__ __forceinline__ uint32_t radix_select(int need, int* hist, F count) {
  __shared__ uint32_t prefix_s;
  __shared__ int need_s;
  uint32_t prefix = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    hist[threadIdx.x] = 0; // CAND_T == 256 bins
    __syncthreads();
    count(shift == 24 ? 0u : ~0u << (shift + 8), prefix, shift);
    __syncthreads();
    if (threadIdx.x < 32) {
      uint32_t d;
      int rest;
      radix_pick(hist, need, d, rest);
      if (threadIdx.x == 0) {
        prefix_s = prefix | d << shift;
        need_s = rest;
      }
    }
    __syncthreads();
    prefix = prefix_s;
    need = need_s;
  }
  return prefix;
}

// cand_slice: grid (S, M). seen[seenOff[m] .. seenOff[m+1]) are row m's
// distinct tokens; lists skey/sid [M, S, CAND_MAX]; sinfo [M, S]: (k-th key,
// keys listed, keys ≥ the k-th, flags: 1 truncated, 2 non-finite).
extern "C" __global__ void __launch_bounds__(CAND_T) cand_slice(float* logits, long long V, const int32_t* seen, const int32_t* seenOff,
                                                                const float* penalty, const int32_t* topk, uint32_t* skey, int32_t* sid,
                                                                int4* sinfo) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  __shared__ int hist[256];
  const int s = blockIdx.x, row = blockIdx.y, S = gridDim.x;
  const long long lo = (long long)s * CAND_SLICE, hi = min(V, lo + CAND_SLICE);
  const int k = min(topk[row], (int)(hi - lo)), slot = (row * S + s) * CAND_MAX;
  float* x = logits + (long long)row * V; // written here: plain loads below, never the read-only path
  // 1. The repetition penalty on this slice's tokens, each once (also for a
  // row without top-k, whose host then reads it penalised).
  const float p = penalty[row];
  if (p != 1.0f) {
    for (int i = seenOff[row] + threadIdx.x; i < seenOff[row + 1]; i += CAND_T) {
      const int t = seen[i];
      if (t >= lo && t < hi) {
        const float v = x[t];
        x[t] = v < 0.0f ? v * p : v / p;
      }
    }
    __syncthreads(); // the block's global writes are visible to the block after it
  }
  if (k <= 0) { // no top-k: the host takes the whole row
    if (threadIdx.x == 0) sinfo[row * S + s] = make_int4(0, 0, 0, 0);
    return;
  }
  // 2. Sixteen consecutive keys a thread.
  uint32_t key[16];
  const long long base = lo + threadIdx.x * 16;
  bool bad = false;
  if (base + 16 <= hi && (V & 3) == 0) {
#pragma unroll
    for (int j = 0; j < 16; j += 4) {
      const float4 v = *reinterpret_cast<const float4*>(x + base + j);
      bad |= !isfinite(v.x) || !isfinite(v.y) || !isfinite(v.z) || !isfinite(v.w);
      key[j] = cand_key(v.x), key[j + 1] = cand_key(v.y), key[j + 2] = cand_key(v.z), key[j + 3] = cand_key(v.w);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 16; j++) {
      const float v = base + j < hi ? x[base + j] : 0.0f;
      bad |= !isfinite(v);
      key[j] = base + j < hi ? cand_key(v) : 0u;
    }
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) sinfo[row * S + s] = make_int4(0, 0, 0, 2);
    return;
  }
  // 3. The slice's k-th largest key.
  const uint32_t kth = radix_select(k, hist, [&](uint32_t mask, uint32_t prefix, int shift) {
#pragma unroll
    for (int j = 0; j < 16; j++)
      if (key[j] != 0u && (key[j] & mask) == prefix) atomicAdd(&hist[(key[j] >> shift) & 255], 1);
  });
  // 4. The keys ≥ it in id order; past CAND_MAX, only the larger ones.
  int ge = 0, gt = 0;
#pragma unroll
  for (int j = 0; j < 16; j++) {
    ge += key[j] >= kth;
    gt += key[j] > kth;
  }
  int total;
  const int before = cand_scan(ge << 16 | gt, total); // both counts ≤ 4,096: one scan
  const int nge = total >> 16, ngt = total & 0xffff;
  const bool trunc = nge > CAND_MAX;
  int at = trunc ? before & 0xffff : before >> 16;
#pragma unroll
  for (int j = 0; j < 16; j++)
    if (trunc ? key[j] > kth : key[j] >= kth) {
      skey[slot + at] = key[j];
      sid[slot + at] = (int32_t)(base + j);
      at++;
    }
  if (threadIdx.x == 0) sinfo[row * S + s] = make_int4((int)kth, trunc ? ngt : nge, nge, trunc ? 1 : 0);
}

// cand_merge: grid M. out_id/out_logit [M, CAND_MAX]; count [M].
extern "C" __global__ void __launch_bounds__(CAND_T) cand_merge(const uint32_t* skey, const int32_t* sid, const int4* sinfo, const int32_t* topk,
                                                                int S, long long V, int32_t* out_id, float* out_logit, int32_t* count) {
  pdl_trigger();
  pdl_wait(); // everything below may read what the previous kernel wrote
  __shared__ int hist[256];
  __shared__ int4 info[CAND_MAX_SLICES];
  __shared__ uint32_t keys[CAND_MAX_SLICES * CAND_MAX];
  const int row = blockIdx.x, E = S * CAND_MAX;
  const int k = (int)min((long long)topk[row], V);
  if (k <= 0) {
    if (threadIdx.x == 0) count[row] = -1;
    return;
  }
  bool bad = false;
  for (int s = threadIdx.x; s < S; s += CAND_T) {
    info[s] = sinfo[row * S + s];
    bad |= info[s].w & 2;
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) count[row] = -2;
    return;
  }
  for (int e = threadIdx.x; e < E; e += CAND_T) keys[e] = (e & (CAND_MAX - 1)) < info[e / CAND_MAX].y ? skey[(size_t)row * E + e] : 0u;
  __syncthreads();
  // The row's k-th largest: the lists' keys, and each truncated slice's
  // unlisted ties with its k-th key by weight.
  const uint32_t kth = radix_select(k, hist, [&](uint32_t mask, uint32_t prefix, int shift) {
    for (int e = threadIdx.x; e < E; e += CAND_T)
      if (keys[e] != 0u && (keys[e] & mask) == prefix) atomicAdd(&hist[(keys[e] >> shift) & 255], 1);
    for (int s = threadIdx.x; s < S; s += CAND_T) {
      const uint32_t t = (uint32_t)info[s].x;
      if ((info[s].w & 1) && (t & mask) == prefix) atomicAdd(&hist[(t >> shift) & 255], info[s].z - info[s].y);
    }
  });
  // A truncated slice whose k-th key reaches the row's alone holds more than
  // CAND_MAX candidates.
  bool over = false;
  for (int s = threadIdx.x; s < S; s += CAND_T) over |= (info[s].w & 1) && (uint32_t)info[s].x >= kth;
  over = __syncthreads_or(over);
  // The keys ≥ kth in slice order: a contiguous run of entries a thread.
  const int per = (E + CAND_T - 1) / CAND_T, lo = threadIdx.x * per, hi = min(E, lo + per);
  int mine = 0;
  for (int e = lo; e < hi; e++) mine += keys[e] >= kth && keys[e] != 0u;
  int total;
  int at = cand_scan(mine, total);
  if (over || total > CAND_MAX) {
    if (threadIdx.x == 0) count[row] = -1;
    return;
  }
  for (int e = lo; e < hi && mine; e++)
    if (keys[e] >= kth && keys[e] != 0u) {
      out_id[row * CAND_MAX + at] = sid[(size_t)row * E + e];
      out_logit[row * CAND_MAX + at] = cand_val(keys[e]);
      at++;
      mine--;
    }
  if (threadIdx.x == 0) count[row] = total;
}
