#!/usr/bin/env bash
# ptx90a.sh [DIR]: on a machine with nvcc 12.4 or later (the GPU machine),
# builds each kernels/*.cu whose first line is "// qbench: sm_90a" for sm_90a
# into DIR/<name>.sm90a.ptx (DIR: kernels/ptx), its first line recording the
# hash of the sources it was built from (as source.go's SourceHash: the .cuh
# headers in name order, then the .cu). Copied into kernels/ptx, `go generate
# ./kernels` embeds such a file while that hash is current and drops it once
# the sources change (the nvcc 11.8 build serves until this runs again).
# nvcc 11.8 builds these sources too, by passing their inline PTX through;
# a newer nvcc's build measured faster (kernels/PERF.md).
set -euo pipefail
out=$(realpath "${1:-$(dirname "$0")/ptx}")
cd "$(dirname "$0")"
for src in *.cu; do
  [ "$(head -1 "$src")" = "// qbench: sm_90a" ] || continue
  name=${src%.cu}
  hash=$(cat $(ls *.cuh | LC_ALL=C sort) "$src" | sha256sum | cut -d' ' -f1)
  nvcc -ptx -arch=sm_90a -O3 -o "/tmp/$name.sm90a.ptx" "$src"
  { echo "// qbench: nvcc sm_90a build of sources $hash"; cat "/tmp/$name.sm90a.ptx"; } >"$out/$name.sm90a.ptx"
  echo "$out/$name.sm90a.ptx: $(nvcc --version | tail -1)"
done
