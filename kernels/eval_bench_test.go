//go:build cuda

package kernels

import (
	"testing"
	"time"

	"github.com/qbench/qbench/eval"
	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tokenizer"
)

// BenchmarkSeedEval3B is the seed evaluation at the Qwen2.5-3B shape: the ten
// seed questions × (base, LoRA r16 on all projections) × 256 new tokens
// (random weights never emit eos, so every answer runs the full 256), batch
// 20, through the real eval pipeline (chat template, generation, metrics,
// log-likelihoods, reports). It reports the seconds from a model in host
// memory to the written reports, upload to the GPU included.
func BenchmarkSeedEval3B(b *testing.B) {
	d := device(b)
	tok, err := tokenizer.Load("../testdata/qwen2.5-tokenizer")
	if err != nil {
		b.Fatal(err)
	}
	qs, _, err := eval.LoadQuestions("")
	if err != nil {
		b.Fatal(err)
	}
	m := SyntheticModel(qwen.Shapes["qwen2.5-3b"], 1)
	AddSyntheticAdapter(m, 16, 2)
	for i := 0; i < b.N; i++ {
		start := time.Now()
		e, err := NewEngine(d, m, 4096, 20)
		if err != nil {
			b.Fatal(err)
		}
		upload := time.Since(start)
		set := eval.Settings{Model: "synthetic qwen2.5-3b", Quant: m.Quant, MaxNewTokens: 256, StopIDs: []int{151645},
			Adapters: []eval.AdapterInfo{{Name: "synthetic-r16", Rank: 16}}}
		sum, err := eval.Eval(e, tok, qs, set, eval.Options{Out: b.TempDir(), Batch: 20})
		e.Close()
		if err != nil {
			b.Fatal(err)
		}
		total := time.Since(start)
		b.ReportMetric(total.Seconds(), "s/eval")
		b.ReportMetric(upload.Seconds(), "s-upload")
		b.Logf("seed eval at 3B shape: %.2fs total (%.2fs upload), %d questions × %d variants", total.Seconds(), upload.Seconds(), sum.Questions, len(sum.Variants))
	}
}
