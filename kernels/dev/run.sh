#!/usr/bin/env bash
# Builds and runs the standalone kernel benchmarks of kernels/dev on the GPU
# machine (nvcc there), with SASS instruction counts of the inner loops:
# BENCHES="nf4_gemv nf4_mma_batch nf4_gemm attn_prefill topk_candidates grid_barrier mlp_step" picks them (default nf4_gemv).
# Logs go to $OUT. sass.py counts one kernel's instructions without a GPU.
# sm_90a: nf4_gemm's v4 uses wgmma (Hopper's architecture-specific features).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd "$(dirname "$0")"
for b in ${BENCHES:-nf4_gemv}; do
  nvcc -O3 -arch=sm_90a -lineinfo -Xptxas -v -o "/tmp/$b" "$b.cu" 2>"$OUT/$b.ptxas.log" || { cat "$OUT/$b.ptxas.log"; exit 1; }
  cuobjdump -sass "/tmp/$b" >"$OUT/$b.sass"
  "/tmp/$b" 2>&1 | tee "$OUT/$b.log"
done
