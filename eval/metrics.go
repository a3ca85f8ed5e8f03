package eval

import (
	"regexp"
	"strings"
	"unicode"
)

// Metric names, in report order.
const (
	MetricKeyword = "keyword_overlap"
	MetricF1      = "token_f1"
	MetricRougeL  = "rouge_l"
	MetricExact   = "exact_match"
	MetricLogLik  = "ref_loglik"
)

// Metrics lists every metric in report order.
var Metrics = []string{MetricKeyword, MetricF1, MetricRougeL, MetricExact, MetricLogLik}

// MetricDoc says what each metric is, for --help and the reports.
var MetricDoc = map[string]string{
	MetricKeyword: "keyword overlap, as the seed report: |W(expected) ∩ W(answer)| / |W(expected)|, W = set of lower-cased words (runs of Unicode letters and digits)",
	MetricF1:      "token F1 with SQuAD normalisation (lower case, no ASCII punctuation, no a/an/the, whitespace tokens)",
	MetricRougeL:  "ROUGE-L F1: longest common subsequence of rouge_score's tokens (lower-cased [a-z0-9]+ runs)",
	MetricExact:   "exact match of the SQuAD-normalised strings (1 or 0)",
	MetricLogLik:  "mean log-probability per token of the expected answer given the prompt (teacher-forced; higher is better)",
}

// Words is the seed's W(s): the set of lower-cased runs of letters and digits.
func Words(s string) map[string]bool {
	w := map[string]bool{}
	for _, f := range strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsNumber(r) }) {
		w[f] = true
	}
	return w
}

// KeywordOverlap is |W(expected) ∩ W(answer)| / |W(expected)| (0 when expected has no words).
func KeywordOverlap(expected, answer string) float64 {
	e, a := Words(expected), Words(answer)
	if len(e) == 0 {
		return 0
	}
	n := 0
	for w := range e {
		if a[w] {
			n++
		}
	}
	return float64(n) / float64(len(e))
}

var articles = regexp.MustCompile(`\b(a|an|the)\b`)

// squadNormalize is SQuAD's normalize_answer: lower case, drop ASCII
// punctuation, drop the articles a/an/the, collapse whitespace.
func squadNormalize(s string) string {
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r < 128 && unicode.IsPunct(r) || strings.ContainsRune("$+<=>^`|~", r) {
			return -1
		}
		return r
	}, s)
	s = articles.ReplaceAllString(s, " ")
	return strings.Join(strings.Fields(s), " ")
}

// TokenF1 is SQuAD's F1 over normalised whitespace tokens (multiset overlap).
// Two empty answers score 1, one empty answer 0.
func TokenF1(expected, answer string) float64 {
	e, a := strings.Fields(squadNormalize(expected)), strings.Fields(squadNormalize(answer))
	if len(e) == 0 || len(a) == 0 {
		if len(e) == len(a) {
			return 1
		}
		return 0
	}
	count := map[string]int{}
	for _, t := range e {
		count[t]++
	}
	common := 0
	for _, t := range a {
		if count[t] > 0 {
			count[t]--
			common++
		}
	}
	if common == 0 {
		return 0
	}
	p, r := float64(common)/float64(len(a)), float64(common)/float64(len(e))
	return 2 * p * r / (p + r)
}

// ExactMatch is 1 when the SQuAD-normalised strings are equal.
func ExactMatch(expected, answer string) float64 {
	if squadNormalize(expected) == squadNormalize(answer) {
		return 1
	}
	return 0
}

var nonAlnum = regexp.MustCompile(`[^a-z0-9]+`)

// rougeTokens is rouge_score's default tokenizer (no stemming).
func rougeTokens(s string) []string {
	return strings.Fields(nonAlnum.ReplaceAllString(strings.ToLower(s), " "))
}

// RougeL is ROUGE-L's F1: LCS length over both token counts.
func RougeL(expected, answer string) float64 {
	e, a := rougeTokens(expected), rougeTokens(answer)
	if len(e) == 0 || len(a) == 0 {
		return 0
	}
	prev, cur := make([]int, len(a)+1), make([]int, len(a)+1)
	for i := 1; i <= len(e); i++ {
		for j := 1; j <= len(a); j++ {
			if e[i-1] == a[j-1] {
				cur[j] = prev[j-1] + 1
			} else {
				cur[j] = max(cur[j-1], prev[j])
			}
		}
		prev, cur = cur, prev
	}
	lcs := prev[len(a)]
	if lcs == 0 {
		return 0
	}
	p, r := float64(lcs)/float64(len(a)), float64(lcs)/float64(len(e))
	return 2 * p * r / (p + r)
}

// TextMetrics computes every metric that depends only on the two strings.
func TextMetrics(expected, answer string) map[string]float64 {
	return map[string]float64{
		MetricKeyword: KeywordOverlap(expected, answer),
		MetricF1:      TokenF1(expected, answer),
		MetricRougeL:  RougeL(expected, answer),
		MetricExact:   ExactMatch(expected, answer),
	}
}
