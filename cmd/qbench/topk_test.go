package main

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
)

// TestTopK compares the partial selection with a full stable sort, ties and
// all, on random rows with many repeated values.
func TestTopK(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
	for trial := 0; trial < 200; trial++ {
		n := 1 + rng.IntN(300)
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.IntN(20)) // ties
		}
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return v[idx[a]] > v[idx[b]] })
		for _, k := range []int{0, 1, min(3, n), n / 2, n} {
			if got, want := topK(v, k), idx[:k]; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("n=%d k=%d: %v, want %v", n, k, got, want)
			}
		}
	}
}

func BenchmarkTopK(b *testing.B) {
	v := make([]float32, 151936)
	for i := range v {
		v[i] = rand.Float32()
	}
	for b.Loop() {
		topK(v, 8)
	}
}
