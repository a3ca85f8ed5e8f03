#!/usr/bin/env python3
"""sass.py FILE.cu|FILE.ptx FUNCTION [WEIGHTS]: the instruction classes of one
kernel's SASS (sm_90), in its main loop (the backward branch that jumps
furthest back) and in all — for an instructions-per-weight budget before
timing anything. WEIGHTS: the weights one thread handles per main-loop trip,
to print instructions per weight. Needs nvcc/ptxas and cuobjdump, no GPU."""
import collections, re, subprocess, sys, tempfile

src, fn = sys.argv[1], sys.argv[2]
weights = int(sys.argv[3]) if len(sys.argv) > 3 else 0
with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
    if src.endswith(".ptx"):
        subprocess.run(["ptxas", "-arch=sm_90", "-o", cubin.name, src], check=True)
    else:
        subprocess.run(["nvcc", "-O3", "-arch=sm_90", "-cubin", "-o", cubin.name, src], check=True)
    sass = subprocess.run(["cuobjdump", "-sass", cubin.name], check=True, capture_output=True, text=True).stdout
body, on = [], False
for line in sass.splitlines():
    if "Function :" in line:
        if on:
            break
        on = line.split("Function :")[1].strip() == fn
        continue
    m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*(/\*.*)?$", line)
    if on and m:
        body.append((int(m.group(1), 16), m.group(2)))
if not body:
    sys.exit(f"no function {fn} in {src}")

def op(ins):
    w = ins.split()
    o = w[1] if w[0].startswith("@") and len(w) > 1 else w[0]
    return o.split(".")[0]

lo = hi = None
for addr, ins in body:
    m = re.search(r"BRA 0x([0-9a-f]+)", ins)
    if m and int(m.group(1), 16) < addr and (lo is None or addr - int(m.group(1), 16) > hi - lo):
        lo, hi = int(m.group(1), 16), addr
for name, part in (("main loop", [i for a, i in body if lo is not None and lo <= a <= hi]), ("whole kernel", [i for _, i in body])):
    per = f", {len(part) / weights:.2f} a weight" if weights and name == "main loop" else ""
    print(f"{name}: {len(part)} instructions{per}")
    for o, n in collections.Counter(map(op, part)).most_common(14):
        print(f"  {n:5d} {o}")
