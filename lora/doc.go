// Package lora reads PEFT LoRA adapters (adapter_config.json and
// adapter_model.safetensors) and applies their deltas unmerged:
// y = W·x + scale·B(A·x), with A [r, in], B [out, r] as PEFT stores them and
// scale = lora_alpha/r (or lora_alpha/√r with use_rslora), per module after
// rank_pattern and alpha_pattern.
package lora
