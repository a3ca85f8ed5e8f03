// Package kernels is the GPU engine: CUDA kernels (one .cu file per op
// family, compiled to PTX by `go generate ./kernels` and embedded), their Go
// launchers through gorgonia.org/cu, a small cgo shim for what gorgonia does
// not wrap (driver.go), and Engine, which runs a qwen.Model on the device
// behind the qwen.Engine seam.
//
// Where things live: engine.go (lifecycle and the qwen.Engine API),
// upload.go (weights and descriptors onto the device), pass.go (a pass's
// per-row metadata), forward.go (the forward pass, step for step beside
// qwen/forward.go), launch.go and attn_launch.go (one typed launcher per
// kernel: all launch geometry; the attention's in the second), layout.go (host re-layouts of NF4 codes), candidates.go
// (sampling on the device: the penalty and each row's top-k candidates),
// profile.go (per-kernel timing and byte accounting), reference.go (CPU
// references of the kernels).
//
// Files that touch the GPU build only with -tags cuda; without it the package
// holds the embedded PTX (ptx.go, source.go), the NF4 re-layouts and the
// CPU references, and CI tests those.
//
// Conventions: row-major; fp32 activations, accumulation and KV cache; weights
// [N, K] as PyTorch stores them (y = W·x); NF4 as bitsandbytes stores it
// (blocksize 64, double-quantised scales decoded in-kernel). Launchers own
// grid geometry and errors: every CUDA result is checked and named; with
// QBENCH_CUDA_DEBUG=1 each launch is synchronised and a failure names its
// kernel. Notes on speed, per version and card: PERF.md.
package kernels

//go:generate go run gen.go
