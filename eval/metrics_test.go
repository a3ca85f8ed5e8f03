package eval

import (
	"math"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-12 }

func TestKeywordOverlap(t *testing.T) {
	// The seed's q3 expected answer against a hand-written answer.
	exp := "This text proposes co-modality-based RAG (CMRAG), which can simultaneously leverage text and images"
	// W(exp) = {this, text, proposes, co, modality, based, rag, cmrag, which, can, simultaneously, leverage, and, images}: 14 words
	ans := "CMRAG is a RAG method that uses text and images together."
	// shared: cmrag, rag, text, and, images = 5
	if got := KeywordOverlap(exp, ans); !near(got, 5.0/14) {
		t.Errorf("KeywordOverlap = %v, want 5/14", got)
	}
	if got := KeywordOverlap(exp, exp); got != 1 {
		t.Errorf("self overlap = %v", got)
	}
	if got := KeywordOverlap("", "x"); got != 0 {
		t.Errorf("empty expected = %v", got)
	}
	if got := KeywordOverlap("Über 中文 ok", "über, ok!"); !near(got, 2.0/3) { // Unicode letters count
		t.Errorf("unicode = %v", got)
	}
}

func TestTokenF1AndExact(t *testing.T) {
	// normalised: "cat sat on mat" vs "cat sat": common 2, P = 1, R = 0.5, F1 = 2/3
	if got := TokenF1("The cat sat on the mat.", "A cat sat"); !near(got, 2.0/3) {
		t.Errorf("TokenF1 = %v, want 2/3", got)
	}
	if got := TokenF1("a", "the"); got != 1 { // both normalise to nothing
		t.Errorf("both empty = %v", got)
	}
	if got := TokenF1("x", ""); got != 0 {
		t.Errorf("one empty = %v", got)
	}
	if got := TokenF1("x x y", "x"); !near(got, 2*1*(1.0/3)/(1+1.0/3)) {
		t.Errorf("multiset = %v", got)
	}
	if ExactMatch("The Answer!", "answer") != 1 || ExactMatch("answer", "answers") != 0 {
		t.Error("ExactMatch")
	}
}

func TestRougeL(t *testing.T) {
	// LCS("police killed the gunman", "police kill the gunman") = police, the, gunman = 3; P = R = 3/4
	if got := RougeL("police killed the gunman", "police kill the gunman"); !near(got, 0.75) {
		t.Errorf("RougeL = %v, want 0.75", got)
	}
	// LCS(a b c d e, a c e x) = a c e = 3; P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3
	if got := RougeL("a b c d e", "a c e x"); !near(got, 2.0/3) {
		t.Errorf("RougeL = %v, want 2/3", got)
	}
	if RougeL("", "x") != 0 {
		t.Error("empty")
	}
}

func TestSignTest(t *testing.T) {
	cases := []struct {
		k, n int
		want float64
	}{
		{0, 0, 1},
		{3, 8, 2 * 93.0 / 256}, // P(X≤3) = (1+8+28+56)/256
		{0, 5, 2.0 / 32},       // 0.0625: five decided pairs cannot reach 0.05
		{1, 10, 2 * 11.0 / 1024},
		{9, 10, 2 * 11.0 / 1024},
		{5, 10, 1},
	}
	for _, c := range cases {
		if got := SignTest(c.k, c.n); math.Abs(got-math.Min(1, c.want)) > 1e-12 {
			t.Errorf("SignTest(%d,%d) = %v, want %v", c.k, c.n, got, c.want)
		}
	}
}

func TestBootstrap(t *testing.T) {
	d := []float64{0.1, 0.2, -0.1, 0.3, 0.0, 0.25, 0.15, -0.05, 0.2, 0.1}
	lo, hi := Bootstrap(d, 10000, 7)
	m := Mean(d)
	if !(lo < m && m < hi) || lo < -0.05 || hi > 0.3 {
		t.Errorf("interval [%v, %v] around mean %v", lo, hi, m)
	}
	lo2, hi2 := Bootstrap(d, 10000, 7)
	if lo != lo2 || hi != hi2 {
		t.Error("same seed, different interval")
	}
	if lo, hi := Bootstrap([]float64{0.5, 0.5}, 100, 1); lo != 0.5 || hi != 0.5 {
		t.Errorf("constant differences: [%v, %v]", lo, hi)
	}
}
