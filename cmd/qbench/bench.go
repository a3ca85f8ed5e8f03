package main

const benchDoc = `Profiles the GPU engine on one card: the card's copy bandwidth (measured in
the same run), then for each batch size the prefill rate (the batch's prompts,
and one prompt of 2,048 tokens), a per-kernel breakdown of one decode step
(time, bytes, GB/s, % of copy bandwidth, TFLOP/s of the matrix products, a
row an op — --by-kernel: a row a kernel of each op; --prefill-kernels: of
the prefill pass too), and decode tokens/s with the
adapter on and off, with CUDA graphs on and off (graphs replay steps of
fewer than 16 rows; more launch directly, so the two columns agree), and
sampled as Qwen2.5-Instruct's generation_config.json asks (temperature 0.7,
top-k 20, top-p 0.8, repetition penalty 1.05: penalty and top-k on the device).
--shape uses synthetic random NF4 (double-quant) weights of a Qwen2.5 size, no
download needed; --model uses a real checkpoint. Needs -tags cuda.

--load --model DIR times loading instead: with the checkpoint's files evicted
from the page cache (cold) and again (warm), the seconds, the checkpoint's
GB/s and the peak resident memory of each; with --device cuda (the default in
the GPU build) the engine's upload is included. It runs on the CPU too
(--device cpu), in either build.`
