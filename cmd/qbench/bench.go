package main

const benchDoc = `Profiles the GPU engine on one card: the card's copy bandwidth (measured in
the same run), then for each batch size the prefill rate, a per-kernel
breakdown of one decode step (time, bytes, GB/s, % of copy bandwidth), and
decode tokens/s with the adapter on and off and with CUDA graphs on and off.
--shape uses synthetic random NF4 (double-quant) weights of a Qwen2.5 size, no
download needed; --model uses a real checkpoint. Needs -tags cuda.`
