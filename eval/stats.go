package eval

import (
	"math"
	"math/rand/v2"
	"sort"
)

// SignTest is the exact two-sided sign test of k successes among n decided
// pairs under p = 1/2: min(1, 2·min(P(X ≤ k), P(X ≥ k))).
func SignTest(k, n int) float64 {
	if n == 0 {
		return 1
	}
	lo, hi := 0.0, 0.0
	for i := 0; i <= n; i++ {
		p := math.Exp(lchoose(n, i) - float64(n)*math.Ln2)
		if i <= k {
			lo += p
		}
		if i >= k {
			hi += p
		}
	}
	return math.Min(1, 2*math.Min(lo, hi))
}

func lchoose(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}

// MinSignTestP is the smallest two-sided p-value n decided pairs can give.
func MinSignTestP(n int) float64 { return SignTest(0, n) }

// Bootstrap is a percentile 95% interval of the mean of d, from resamples
// paired resamples drawn with a generator seeded by seed.
func Bootstrap(d []float64, resamples int, seed uint64) (lo, hi float64) {
	if len(d) == 0 {
		return math.NaN(), math.NaN()
	}
	rng := rand.New(rand.NewPCG(seed, 0xb5ad4eceda1ce2a9))
	means := make([]float64, resamples)
	for b := range means {
		var s float64
		for range d {
			s += d[rng.IntN(len(d))]
		}
		means[b] = s / float64(len(d))
	}
	sort.Float64s(means)
	return quantile(means, 0.025), quantile(means, 0.975)
}

// quantile of sorted v by linear interpolation (numpy's default).
func quantile(v []float64, q float64) float64 {
	pos := q * float64(len(v)-1)
	i := int(pos)
	if i+1 >= len(v) {
		return v[len(v)-1]
	}
	f := pos - float64(i)
	return v[i]*(1-f) + v[i+1]*f
}

// Mean of v (NaN when empty).
func Mean(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}
