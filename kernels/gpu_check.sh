#!/usr/bin/env bash
# One build-check-measure call on the GPU machine (it has no Go): run the
# prebuilt test binary and qbench there. Build them first, here:
#   CGO_ENABLED=1 go test -tags cuda -c -o bin/kernels.test ./kernels
#   CGO_ENABLED=1 go build -tags cuda -o bin/qbench ./cmd/qbench
# then run this with bin carried. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
cd kernels && ../bin/kernels.test -test.v -test.run "${TESTS:-.}" 2>&1 | tee "$OUT/tests.log" | grep -E "^(=== RUN|--- |PASS|FAIL|ok)|Error|error|relative|mismatch|Δ|panic" | head -150; cd ..
if [ -n "${SANITIZE:-}" ]; then
  (cd kernels && compute-sanitizer --tool memcheck ../bin/kernels.test -test.run "Gemv|Attention|Batched" 2>&1 | tail -4 | tee "$OUT/sanitizer-tests.log")
  compute-sanitizer --tool memcheck ./bin/qbench generate --model testdata/tiny-qwen2-bnb-4bit --adapter testdata/tiny-qwen2-lora --tokens 9707,11,1879 --max-new-tokens 8 --json 2>&1 | tail -5 | tee "$OUT/sanitizer.log"
fi
if [ -n "${BENCH:-}" ]; then
  ./bin/qbench bench --quiet $BENCH 2>&1 | tee "$OUT/bench.log"
fi
if [ -n "${TORCH:-}" ]; then
  python3 kernels/torch_matmul.py 2>&1 | tee "$OUT/torch.log"
fi
