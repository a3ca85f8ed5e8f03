#!/usr/bin/env bash
# Profile one decode-step NF4 matrix kernel (nf4_lut: q/k/v of layer 3, batch 1) of the
# synthetic 3B model with Nsight Compute, on the GPU machine.
R=$(pwd)
cd /tmp && timeout 300 ncu --kernel-name "regex:^${KERNEL:-nf4_lut_1}\$" --launch-skip ${SKIP:-10} --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  "$R/bin/qbench" bench --shape qwen2.5-3b --batch 1 --new-tokens 4 --quiet 2>&1 |
  grep -vE "^\s*$|^==PROF==|----|WRN|INF|https" |
  grep -E "Section|  [A-Z][a-zA-Z .]+ {2,}[a-zA-Z%/]* +[0-9.,]+$|spends|stall" | head -40
