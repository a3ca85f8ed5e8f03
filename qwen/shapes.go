package qwen

// Shapes are the Qwen2.5 architectures by name, for benchmarks on synthetic
// weights (no download needed).
var Shapes = map[string]*Config{
	"qwen2.5-0.5b": {ModelType: "qwen2", Hidden: 896, Intermediate: 4864, Layers: 24, Heads: 14, KVHeads: 2, HeadDim: 64, Vocab: 151936, RMSEps: 1e-6, RopeTheta: 1e6, MaxPositions: 32768, TieEmbeddings: true},
	"qwen2.5-1.5b": {ModelType: "qwen2", Hidden: 1536, Intermediate: 8960, Layers: 28, Heads: 12, KVHeads: 2, HeadDim: 128, Vocab: 151936, RMSEps: 1e-6, RopeTheta: 1e6, MaxPositions: 32768, TieEmbeddings: true},
	"qwen2.5-3b":   {ModelType: "qwen2", Hidden: 2048, Intermediate: 11008, Layers: 36, Heads: 16, KVHeads: 2, HeadDim: 128, Vocab: 151936, RMSEps: 1e-6, RopeTheta: 1e6, MaxPositions: 32768, TieEmbeddings: true},
	"qwen2.5-7b":   {ModelType: "qwen2", Hidden: 3584, Intermediate: 18944, Layers: 28, Heads: 28, KVHeads: 4, HeadDim: 128, Vocab: 152064, RMSEps: 1e-6, RopeTheta: 1e6, MaxPositions: 32768, TieEmbeddings: false},
}
