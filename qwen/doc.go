// Package qwen is the Qwen2.5 transformer on the CPU: config parsing, weights
// bound by their Hugging Face names, the forward pass (prefill and one-token
// decode over a KV cache, several sequences per batch), and sampling.
//
// This path is the project's reference: fp32 arithmetic on weights widened
// from bf16/f16/f32 (or dequantised from NF4 exactly as bitsandbytes does),
// computed in the order transformers' Qwen2 computes it. The GPU engine is
// checked against it.
//
// Conventions: activations are row-major [rows, features]; a Linear's weight
// is [out, in] as PyTorch stores it, so y = W·x + b. Each row of a batch
// carries an adapter index (−1 = base model only).
package qwen
