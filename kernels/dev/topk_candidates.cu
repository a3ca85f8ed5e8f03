// topk_candidates.cu — standalone development benchmark of the device half of
// sampling (issue 12; llm.c dev/cuda style): for each batch row, the
// repetition penalty over its history (each distinct token once: logit /= p
// if ≥ 0, *= p if < 0, as transformers and qwen.RepetitionPenalty), then
// every token whose logit is at least the k-th largest — ties with it
// included — in id order, at most MAXC of them (more: the row is flagged and
// the host takes the whole row). This is qwen.Sampler.Candidates; NextFrom
// then draws on the host from ≤ MAXC values instead of 151,936
// (TestNextFromCandidates: the same token as Next on the whole row).
//
// v1: a block of 1,024 threads a row (125 µs a launch on an H200 whatever
// the rows: one block's serial passes over 600 KB). The penalty: history tokens marked in a
// shared bitmap of the vocabulary (atomicOr), and the thread whose atomicAnd
// clears a token's bit applies it — once per distinct token. The k-th
// largest: radix select on the floats' order-preserving 32-bit keys, four
// passes of 8-bit digits with a 256-bin shared histogram each. The
// candidates: each thread counts its contiguous slice's keys ≥ the k-th, a
// block scan of the counts, then each writes its own in order.
//
// v2 (the engine's, included from ../sample.cu): cand_slice, a block per
// 4,096-logit slice and row (penalty, keys in registers, the slice's k-th by
// radix select, its list), then cand_merge, a block per row (the k-th of the
// lists, ordered compaction). The host sends each row's distinct tokens.
//
// Checked against a CPU reference (the same definition: a partial sort for
// the k-th value, then a scan) on fresh random logits rounded to quarters so
// that ties are common, with repeated history tokens; timed with events.
// Build and run on the GPU machine (kernels/dev/run.sh: BENCHES=topk_candidates).
#include "common.cuh"
#include <algorithm>
#include <vector>
#include <math.h>
#include <time.h>

#include "../sample.cu" // v2: cand_slice, cand_merge

constexpr int T = 1024, MAXC = CAND_MAX;

__device__ __forceinline__ uint32_t key_of(float f) { // order-preserving: a < b ⇔ key(a) < key(b) (no NaN)
  const uint32_t u = __float_as_uint(f);
  return u & 0x80000000u ? ~u : u | 0x80000000u;
}

// block_scan_excl returns the exclusive prefix sum of v over the block and
// the total (T threads; sm: T/32 words).
__device__ __forceinline__ int block_scan_excl(int v, int* sm, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sm[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < T / 32 ? sm[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < T / 32) sm[lane] = w;
  }
  __syncthreads();
  total = sm[T / 32 - 1];
  const int before = (warp > 0 ? sm[warp - 1] : 0) + x - v;
  __syncthreads();
  return before;
}

// candidates_v1: logits [R, V] (penalised in place), hist [R, H] (−1 pads),
// out_id/out_logit [R, MAXC], count[R] (−1: more than MAXC, or k > MAXC).
__global__ void __launch_bounds__(T) candidates_v1(float* __restrict__ logits, const int* __restrict__ hist, int V, int H, float penalty,
                                                   int k, int* __restrict__ out_id, float* __restrict__ out_logit, int* __restrict__ count) {
  extern __shared__ uint32_t bitmap[]; // [⌈V/32⌉]
  __shared__ int hist256[256];
  __shared__ int scan[T / 32];
  __shared__ uint32_t prefix_s;
  __shared__ int need_s;
  const int row = blockIdx.x, words = (V + 31) / 32;
  float* x = logits + (size_t)row * V;
  const int* h = hist + (size_t)row * H;
  // 1. The repetition penalty, once per distinct token.
  if (penalty != 1.0f) {
    for (int i = threadIdx.x; i < words; i += T) bitmap[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < H; i += T) {
      const int t = h[i];
      if (t >= 0 && t < V) atomicOr(&bitmap[t >> 5], 1u << (t & 31));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < H; i += T) {
      const int t = h[i];
      if (t < 0 || t >= V) continue;
      const uint32_t m = 1u << (t & 31);
      if (atomicAnd(&bitmap[t >> 5], ~m) & m) { // this thread cleared it: the first to apply
        const float v = x[t];
        x[t] = v < 0.0f ? v * penalty : v / penalty;
      }
    }
    __syncthreads();
  }
  // 2. The k-th largest key: radix select, most significant digit first.
  uint32_t prefix = 0;
  int need = k; // rank still sought among keys with the prefix so far
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += T) hist256[i] = 0;
    __syncthreads();
    const uint32_t mask = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int i = threadIdx.x; i < V; i += T) {
      const uint32_t key = key_of(x[i]);
      if ((key & mask) == prefix) atomicAdd(&hist256[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) { // from the top digit down, until need falls in a bin
      int d = 255;
      for (; d > 0 && hist256[d] < need; d--) need -= hist256[d];
      prefix_s = prefix | (uint32_t)d << shift;
      need_s = need;
    }
    __syncthreads();
    prefix = prefix_s;
    need = need_s;
  }
  const uint32_t kth = prefix; // the k-th largest key, ties counted
  // 3. Every key ≥ kth, in id order.
  const int per = (V + T - 1) / T, lo = threadIdx.x * per, hi = min(V, lo + per);
  int mine = 0;
  for (int i = lo; i < hi; i++) mine += key_of(x[i]) >= kth;
  int total;
  int at = block_scan_excl(mine, scan, total);
  if (total > MAXC) {
    if (threadIdx.x == 0) count[row] = -1;
    return;
  }
  for (int i = lo; i < hi && mine; i++)
    if (key_of(x[i]) >= kth) {
      out_id[row * MAXC + at] = i;
      out_logit[row * MAXC + at] = x[i];
      at++;
      mine--;
    }
  if (threadIdx.x == 0) count[row] = total;
}

// The CPU reference: qwen.Sampler.Candidates.
static int reference(std::vector<float>& x, const int* h, int H, float penalty, int k, std::vector<int>& id, std::vector<float>& val) {
  const int V = (int)x.size();
  if (penalty != 1.0f)
    for (int i = 0; i < H; i++) {
      const int t = h[i];
      if (t < 0 || t >= V || std::find(h, h + i, t) != h + i) continue;
      x[t] = x[t] < 0.0f ? x[t] * penalty : x[t] / penalty;
    }
  std::vector<float> s = x;
  std::nth_element(s.begin(), s.begin() + (k - 1), s.end(), std::greater<float>());
  const float kth = s[k - 1];
  id.clear();
  val.clear();
  for (int i = 0; i < V; i++)
    if (x[i] >= kth) {
      id.push_back(i);
      val.push_back(x[i]);
    }
  return (int)id.size() > MAXC ? -1 : (int)id.size();
}

int main() {
  const int V = 151936, H = 1024;
  srand(4321 + (unsigned)time(nullptr));
  for (int R : {1, 20, 64}) {
    for (int k : {1, 20, 50}) {
      for (float penalty : {1.0f, 1.05f}) {
        std::vector<float> x((size_t)R * V);
        for (auto& v : x) { // Gaussian-ish, rounded to quarters: ties everywhere
          float g = 0;
          for (int j = 0; j < 4; j++) g += (float)rand() / RAND_MAX - 0.5f;
          v = roundf(g * 24.0f) / 4.0f;
        }
        std::vector<int> hist((size_t)R * H);
        for (int r = 0; r < R; r++) {
          const int n = rand() % H;
          for (int i = 0; i < H; i++) hist[(size_t)r * H + i] = i < n ? rand() % 4000 : -1; // repeats
        }
        float *dx, *dval;
        int *dh, *did, *dcount;
        CK(cudaMalloc(&dx, x.size() * 4));
        CK(cudaMalloc(&dh, hist.size() * 4));
        CK(cudaMalloc(&did, (size_t)R * MAXC * 4));
        CK(cudaMalloc(&dval, (size_t)R * MAXC * 4));
        CK(cudaMalloc(&dcount, (size_t)R * 4));
        CK(cudaMemcpy(dh, hist.data(), hist.size() * 4, cudaMemcpyHostToDevice));
        const int smem = (V + 31) / 32 * 4;
        CK(cudaFuncSetAttribute(candidates_v1, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        // Check.
        CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemset(did, 0xff, (size_t)R * MAXC * 4));
        CK(cudaMemset(dcount, 0x7f, (size_t)R * 4));
        candidates_v1<<<R, T, smem>>>(dx, dh, V, H, penalty, k, did, dval, dcount);
        CK(cudaGetLastError());
        std::vector<int> gid((size_t)R * MAXC), gcount(R);
        std::vector<float> gval((size_t)R * MAXC), gx(x.size());
        CK(cudaMemcpy(gid.data(), did, gid.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gval.data(), dval, gval.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gcount.data(), dcount, gcount.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gx.data(), dx, gx.size() * 4, cudaMemcpyDeviceToHost));
        int bad = 0, overflow = 0;
        for (int r = 0; r < R; r++) {
          std::vector<float> xr(x.begin() + (size_t)r * V, x.begin() + (size_t)(r + 1) * V);
          std::vector<int> id;
          std::vector<float> val;
          const int want = reference(xr, &hist[(size_t)r * H], H, penalty, k, id, val);
          overflow += want < 0;
          bool ok = gcount[r] == want && memcmp(xr.data(), &gx[(size_t)r * V], (size_t)V * 4) == 0;
          for (int i = 0; ok && i < want; i++) ok = gid[r * MAXC + i] == id[i] && gval[r * MAXC + i] == val[i];
          bad += !ok;
        }
        // Time (fresh logits each launch would be fairer; the penalty runs in
        // place, so time on copies rotated from a pool).
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        const int reps = 50;
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) candidates_v1<<<R, T, smem>>>(dx, dh, V, H, 1.0f, k, did, dval, dcount);
        cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1));
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        const double us = ms * 1000 / reps, gbs = (double)R * V * 4 * 5 / (us * 1e-6) / 1e9; // ~5 reads of the row
        printf("rows %3d k %2d penalty %.2f v1: %8.1f µs (%.0f GB/s of logits reads), %d overflowing rows%s\n", R, k, penalty, us, gbs, overflow,
               bad ? "  WRONG" : "");
        // v2: distinct tokens a row, then the two launches.
        std::vector<int> seen, off(1, 0);
        for (int r = 0; r < R; r++) {
          std::vector<int> d;
          for (int i = 0; i < H; i++) {
            const int t = hist[(size_t)r * H + i];
            if (t >= 0 && std::find(d.begin(), d.end(), t) == d.end()) d.push_back(t);
          }
          seen.insert(seen.end(), d.begin(), d.end());
          off.push_back((int)seen.size());
        }
        const int S = (V + CAND_SLICE - 1) / CAND_SLICE;
        int *dseen, *doff, *dk, *dsid;
        float* dpen;
        uint32_t* dskey;
        int4* dsinfo;
        CK(cudaMalloc(&dseen, seen.size() * 4 + 4));
        CK(cudaMalloc(&doff, off.size() * 4));
        CK(cudaMalloc(&dk, R * 4));
        CK(cudaMalloc(&dpen, R * 4));
        CK(cudaMalloc(&dskey, (size_t)R * S * CAND_MAX * 4));
        CK(cudaMalloc(&dsid, (size_t)R * S * CAND_MAX * 4));
        CK(cudaMalloc(&dsinfo, (size_t)R * S * 16));
        CK(cudaMemcpy(dseen, seen.data(), seen.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(doff, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
        std::vector<int> ks(R, k);
        std::vector<float> pens(R, penalty);
        CK(cudaMemcpy(dk, ks.data(), R * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dpen, pens.data(), R * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemset(did, 0xff, (size_t)R * MAXC * 4));
        CK(cudaMemset(dval, 0xff, (size_t)R * MAXC * 4));
        CK(cudaMemset(dcount, 0x7f, (size_t)R * 4));
        CK(cudaMemset(dskey, 0xff, (size_t)R * S * CAND_MAX * 4));
        auto v2 = [&]() {
          cand_slice<<<dim3(S, R), CAND_T>>>(dx, V, dseen, doff, dpen, dk, dskey, dsid, dsinfo);
          cand_merge<<<R, CAND_T>>>(dskey, dsid, dsinfo, dk, S, V, did, dval, dcount);
        };
        v2();
        CK(cudaGetLastError());
        CK(cudaMemcpy(gid.data(), did, gid.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gval.data(), dval, gval.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gcount.data(), dcount, gcount.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gx.data(), dx, gx.size() * 4, cudaMemcpyDeviceToHost));
        int bad2 = 0;
        for (int r = 0; r < R; r++) {
          std::vector<float> xr(x.begin() + (size_t)r * V, x.begin() + (size_t)(r + 1) * V);
          std::vector<int> id;
          std::vector<float> val;
          const int want = reference(xr, &hist[(size_t)r * H], H, penalty, k, id, val);
          bool ok = gcount[r] == want && memcmp(xr.data(), &gx[(size_t)r * V], (size_t)V * 4) == 0;
          for (int i = 0; ok && i < want; i++) ok = gid[r * MAXC + i] == id[i] && gval[r * MAXC + i] == val[i];
          bad2 += !ok;
        }
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) v2();
        cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1));
        cudaEventElapsedTime(&ms, e0, e1);
        printf("    v2 (slices %d):            %8.1f µs (%.0f GB/s of logits reads)%s\n", S, ms * 1000 / reps,
               (double)R * V * 4 / (ms * 1e-3 / reps) / 1e9, bad2 ? "  WRONG" : "");
        cudaFree(dseen);
        cudaFree(doff);
        cudaFree(dk);
        cudaFree(dpen);
        cudaFree(dskey);
        cudaFree(dsid);
        cudaFree(dsinfo);
        cudaFree(dx);
        cudaFree(dh);
        cudaFree(did);
        cudaFree(dval);
        cudaFree(dcount);
      }
    }
  }
  return 0;
}
