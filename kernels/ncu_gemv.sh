#!/usr/bin/env bash
# Profile one decode-step kernel of the synthetic 3B model with Nsight Compute, on the GPU machine:
# KERNEL (a kernel name; default nf4_lut_1, q/k/v of layer 3 at batch 1), SKIP launches of it first, COUNT
# launches profiled, BATCH rows a step, CACHE=none to keep L2 warm between ncu's replays (the
# default, all, flushes it: cold-cache figures for kernels that read what the launch before wrote).
R=$(pwd)
cd /tmp && timeout 300 ncu --kernel-name "regex:^${KERNEL:-nf4_lut_1}\$" --launch-skip ${SKIP:-10} --launch-count ${COUNT:-1} \
  --cache-control ${CACHE:-all} \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  "$R/bin/qbench" bench --shape qwen2.5-3b --batch ${BATCH:-1} --new-tokens 4 --quiet 2>&1 |
  grep -vE "^\s*$|^==PROF==|----|WRN|INF|https" |
  grep -E "\(.*\)x\(|Section|  [A-Z][a-zA-Z .]+ {2,}[a-zA-Z%/]* +[0-9.,]+$|spends|stall" | head -$((40 * ${COUNT:-1}))
