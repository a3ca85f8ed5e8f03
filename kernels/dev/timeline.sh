#!/usr/bin/env bash
# timeline.sh runs a command (a qbench build) with timeline.c's CUPTI
# injection on the GPU machine and prints, for the decode steps' graphs, each
# launch's share of the step's critical path (timeline.py). Usage:
#   kernels/dev/timeline.sh ./qbench bench --quiet --shape qwen2.5-3b --batch 1 --new-tokens 48
# The CSV goes to $OUT/timeline.csv.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
dev=$(cd "$(dirname "$0")" && pwd)
inc=$(dirname "$(find / -name cupti.h -path '*include*' 2>/dev/null | head -1)")
lib=$(dirname "$(find / -name 'libcupti.so*' 2>/dev/null | head -1)")
built=""
for k in CUpti_ActivityKernel11 CUpti_ActivityKernel10 CUpti_ActivityKernel9 CUpti_ActivityKernel8 CUpti_ActivityKernel7; do
  if gcc -shared -fPIC -O2 -DKREC=$k -I"$inc" "$dev/timeline.c" -o /tmp/timeline.so -L"$lib" -lcupti -Wl,-rpath,"$lib" 2>/tmp/timeline.err; then
    built=$k
    break
  fi
done
[ -n "$built" ] || { cat /tmp/timeline.err; exit 1; }
TIMELINE_OUT=$OUT/timeline.csv CUDA_INJECTION64_PATH=/tmp/timeline.so "$@"
sleep 1 # the last flush
python3 "$dev/timeline.py" "$OUT/timeline.csv"
