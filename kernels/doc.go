// Package kernels is the GPU engine: CUDA kernels (one .cu file per op
// family, compiled to PTX by `go generate ./kernels` and embedded), their Go
// launchers through gorgonia.org/cu, a small cgo shim for CUDA graphs, and
// Engine, which runs a qwen.Model on the device behind the qwen.Engine seam.
//
// Everything that touches the GPU builds only with -tags cuda; without it the
// package holds just the embedded PTX and the check that it is up to date.
//
// Conventions: row-major; fp32 activations, accumulation and KV cache; weights
// [N, K] as PyTorch stores them (y = W·x); NF4 as bitsandbytes stores it
// (blocksize 64, double-quantised scales decoded in-kernel). Launchers own
// grid geometry and errors: every CUDA result is checked and named; with
// QBENCH_CUDA_DEBUG=1 each launch is synchronised and a failure names its
// kernel. Notes on speed, per version and card: PERF.md.
package kernels

//go:generate go run gen.go
