package main

import (
	"fmt"

	"github.com/qbench/qbench/qwen"
)

const quantizeDoc = `Quantises the q/k/v/o/gate/up/down weights of a 16-bit Hugging Face Qwen2
model to NF4 exactly as bitsandbytes does (blocksize 64; nf4-dq adds double
quantisation of the scales) and writes a checkpoint in bitsandbytes' own
layout (tensor names, dtypes, shapes, quant_state JSON, quantization_config)
that transformers loads as a 4-bit model and qbench loads without --quant.`

func runQuantize(args []string) error {
	fs := newFlags("quantize", "--model DIR --out DIR [--quant nf4|nf4-dq]", quantizeDoc)
	model := fs.String("model", "", "16-bit Hugging Face model `DIR`")
	out := fs.String("out", "", "output `DIR` (created)")
	quant := fs.String("quant", "nf4-dq", "nf4 (fp32 scales) or nf4-dq (double-quantised scales)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" || *out == "" {
		return fmt.Errorf("--model and --out are required")
	}
	if *quant != qwen.QuantNF4 && *quant != qwen.QuantNF4DQ {
		return fmt.Errorf("--quant %q: want nf4 or nf4-dq", *quant)
	}
	var bar = newBar(1, "quantising", *quiet)
	err := qwen.Quantize(*model, *out, *quant == qwen.QuantNF4DQ, func(done, total int) {
		bar.ChangeMax(total)
		bar.Set(done)
	})
	bar.Finish()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s)\n", *out, *quant)
	return nil
}
