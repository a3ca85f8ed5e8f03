package qwen

import (
	"bytes"
	"testing"

	"github.com/qbench/qbench/tensor"
)

// TestQuantizeMatchesBitsandbytesCheckpoint: quantising tiny-qwen2 with double
// quantisation writes every tensor of the checkpoint transformers+bitsandbytes
// saved, with the same name, dtype, shape and bytes.
func TestQuantizeMatchesBitsandbytesCheckpoint(t *testing.T) {
	out := t.TempDir()
	if err := Quantize(tinyDir, out, true, nil); err != nil {
		t.Fatal(err)
	}
	ours, err := tensor.OpenCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	ref, err := tensor.OpenCheckpoint(bnbDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if a, b := len(ours.Names()), len(ref.Names()); a != b {
		t.Errorf("%d tensors, reference has %d", a, b)
	}
	for _, name := range ref.Names() {
		r, _ := ref.Get(name)
		o, err := ours.Get(name)
		if err != nil {
			t.Errorf("missing %s", name)
			continue
		}
		if o.DType != r.DType || !sameShape(o.Shape, r.Shape) || !bytes.Equal(o.Data, r.Data) {
			t.Errorf("%s: ours %v%v, reference %v%v, bytes equal %v", name, o.DType, o.Shape, r.DType, r.Shape, bytes.Equal(o.Data, r.Data))
			if len(o.Data) < 300 {
				t.Logf("ours %q\nref  %q", o.Data, r.Data)
			}
		}
	}
	// The written checkpoint loads back as NF4 and gives nf4dq's logits.
	checkParity(t, load(t, out, LoadOptions{}), "nf4dq", -1, fp32Tol)
}
