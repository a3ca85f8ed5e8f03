// Package tokenizer is Qwen2.5's byte-level BPE in pure Go, token-exact with
// Hugging Face tokenizers: added tokens matched whole in the raw text, NFC,
// the Qwen2 split pattern (a hand-written scanner: Go's regexp has no
// lookahead), GPT-2's byte→unicode map, rank-ordered merges. Decoding maps
// back to bytes and repairs invalid UTF-8 as Rust's from_utf8_lossy does; the
// Stream decoder never emits half a character. Chat templates are the model's
// own Jinja2 chat_template, rendered with github.com/ardanlabs/jinja.
package tokenizer
