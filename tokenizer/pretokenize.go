package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Qwen2Pattern is the Split pre-tokenizer regex this package implements.
const Qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

func isL(r rune) bool  { return unicode.IsLetter(r) }
func isN(r rune) bool  { return unicode.IsNumber(r) }
func isS(r rune) bool  { return unicode.IsSpace(r) }
func isNL(r rune) bool { return r == '\r' || r == '\n' }

// splitQwen2 calls emit with each piece of s that Qwen2Pattern matches, in
// order; the pieces cover s exactly (unmatched text cannot occur: the last
// two alternatives and the fourth accept every character class).
func splitQwen2(s string, emit func(string)) {
	for i := 0; i < len(s); {
		n := matchAt(s[i:])
		emit(s[i : i+n])
		i += n
	}
}

// matchAt returns the length of the leftmost-first match of Qwen2Pattern at
// the start of s (s non-empty), trying the alternatives in order.
func matchAt(s string) int {
	r0, w0 := utf8.DecodeRuneInString(s)
	// 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r0 == '\'' && len(s) > 1 {
		for _, suf := range [...]string{"s", "t", "re", "ve", "m", "ll", "d"} {
			if len(s) >= 1+len(suf) && equalFoldASCII(s[1:1+len(suf)], suf) {
				return 1 + len(suf)
			}
		}
	}
	// 2. [^\r\n\p{L}\p{N}]?\p{L}+
	if !isNL(r0) && !isL(r0) && !isN(r0) {
		if n := letters(s[w0:]); n > 0 {
			return w0 + n
		}
	}
	if n := letters(s); n > 0 {
		return n
	}
	// 3. \p{N}
	if isN(r0) {
		return w0
	}
	// 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	{
		i := 0
		if r0 == ' ' {
			i = 1
		}
		j := i
		for j < len(s) {
			r, w := utf8.DecodeRuneInString(s[j:])
			if isS(r) || isL(r) || isN(r) {
				break
			}
			j += w
		}
		if j > i {
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
	}
	// The rest start with whitespace: find the run.
	run, lastNL := 0, -1
	for run < len(s) {
		r, w := utf8.DecodeRuneInString(s[run:])
		if !isS(r) {
			break
		}
		if isNL(r) {
			lastNL = run + w
		}
		run += w
	}
	// 5. \s*[\r\n]+ : the longest whitespace prefix that ends in CR or LF.
	if lastNL > 0 {
		return lastNL
	}
	if run > 0 {
		// 6. \s+(?!\S): the whole run at the end of input, else give back its last character.
		if run == len(s) {
			return run
		}
		_, w := utf8.DecodeLastRuneInString(s[:run])
		if run-w > 0 {
			return run - w
		}
		// 7. \s+
		return run
	}
	// Not reachable for valid input; an invalid byte is taken alone.
	return w0
}

// letters is the byte length of the run of letters at the start of s.
func letters(s string) int {
	n := 0
	for n < len(s) {
		r, w := utf8.DecodeRuneInString(s[n:])
		if !isL(r) {
			break
		}
		n += w
	}
	return n
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		c := a[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != b[i] {
			return false
		}
	}
	return true
}
