# torch.mean of fp32 vectors on the GPU, as bitsandbytes' double quantisation
# takes the offset (absmax.mean()); and on the CPU, for comparison. Makes
# testdata/torch-mean.json from the vectors that
#   QBENCH_TORCH_VECTORS=DIR go test -run TorchMeanFixture ./tensor
# writes: python3 kernels/dev/torch_mean.py DIR OUTDIR (on the GPU machine).
import glob, json, os, sys

import numpy as np
import torch

src, dst = sys.argv[1], sys.argv[2]
out = {}
for f in sorted(glob.glob(os.path.join(src, "v*.f32"))):
    v = torch.from_numpy(np.fromfile(f, dtype=np.float32))
    m = v.cuda().mean().item()
    out[str(v.numel())] = {"mean": m, "bits": int(np.float32(m).view(np.uint32)),
                           "cpu_bits": int(np.float32(v.mean().item()).view(np.uint32))}
json.dump(out, open(os.path.join(dst, "torch_mean.json"), "w"), indent=1)
print(json.dumps(out))
