// Package tensor holds the host-side data qbench works on: element types,
// conversions between them, and the safetensors file format (read by memory
// map, validated before anything is trusted; written atomically).
//
// Conventions: every tensor is row-major and dense; shapes list the slowest
// axis first, as in PyTorch. Conversions take the destination first.
// bf16→f32 is exact; f32→bf16 rounds to nearest, ties to even, as PyTorch does.
package tensor
