// Package eval compares a base model with one or more LoRA fine-tunes,
// question by question: generation of every (question, variant) pair in
// shared batches, answer metrics (keyword overlap as the seed report used it,
// SQuAD token F1 and exact match, ROUGE-L), the teacher-forced log-likelihood
// of the expected answer, verdicts, a sign test and a paired bootstrap, and
// the reports (results.jsonl, report.md, report.html, summary.json).
//
// It is its own package because none of this is model math: it drives any
// qwen.Engine and only needs token ids and logits from it.
package eval
