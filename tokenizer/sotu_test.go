package tokenizer

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/qbench/qbench/tensor"
)

// TestSotuTokenizer checks the trained model's own tokenizer (4,096 ids, its
// merges learnt on the addresses, Qwen's special tokens at the end) against
// the ids Hugging Face's tokenizers gave for the fixture's prompts, and its
// chat template against the prompt transformers rendered.
func TestSotuTokenizer(t *testing.T) {
	tok, err := Load("../testdata/sotu/sotu-qwen2")
	if err != nil {
		t.Fatal(err)
	}
	if n := tok.VocabSize(); n != 4096 {
		t.Errorf("vocabulary %d, want 4096", n)
	}
	f, err := tensor.Open("../testdata/sotu/golden.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var prompts []string
	if err := json.Unmarshal([]byte(f.Metadata["prompts"]), &prompts); err != nil || len(prompts) != 3 {
		t.Fatalf("golden prompts: %v (%d)", err, len(prompts))
	}
	for i, p := range prompts {
		g, err := f.Get(fmt.Sprintf("prompt%d.ids", i))
		if err != nil {
			t.Fatal(err)
		}
		want, err := g.I64()
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode(p); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("prompt %d: ids\n got %v\nwant %v", i, got, want)
		}
	}
	chat, err := tok.ApplyChatTemplate([]Message{{Role: "user", Content: "Who gave the State of the Union address of 1793?"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if chat != prompts[1] {
		t.Errorf("chat template rendered\n%q\nwant\n%q", chat, prompts[1])
	}
}
