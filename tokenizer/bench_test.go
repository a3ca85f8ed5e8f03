package tokenizer

import (
	"os"
	"strings"
	"testing"
)

// BenchmarkEncode measures encode throughput (MB/s via SetBytes) on mixed
// English text: the seed questions and answers, repeated to ~1 MB.
func BenchmarkEncode(b *testing.B) {
	tok := qwen(b)
	raw, err := os.ReadFile("../testdata/seed-questions.jsonl")
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat(string(raw), 1<<20/len(raw))
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text)
	}
}
