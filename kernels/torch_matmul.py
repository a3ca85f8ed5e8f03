"""Reference point for kernels/PERF.md: PyTorch's bf16 matmul at the decode
shapes of Qwen2.5-3B (x[M, K] @ W[K, N]), timed with CUDA events (median of
200 after 20 warm-ups), on random data. Run on the GPU machine:
    python3 kernels/torch_matmul.py
"""
import torch

shapes = [(2048, 11008), (11008, 2048), (2048, 2560), (2048, 151936)]
for m in (1, 20):
    for k, n in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(20):
            x @ w
        ts = []
        for _ in range(200):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            x @ w
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        ts.sort()
        ms = ts[len(ts) // 2]
        gb = (k * n * 2 + m * k * 2 + m * n * 2) / 1e9
        print(f"torch bf16 matmul M={m:3d} K={k:6d} N={n:6d}: {ms*1000:8.1f} us  {gb/ms*1e3:7.0f} GB/s")
