package qwen

import (
	"runtime"
	"sync"
)

// parallelFor splits [0,n) into one contiguous chunk per CPU, each at least
// minChunk long, and runs fn on each; a small n runs inline.
func parallelFor(n, minChunk int, fn func(lo, hi int)) {
	p := runtime.GOMAXPROCS(0)
	if p > n/minChunk {
		p = n / minChunk
	}
	if p <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + p - 1) / p
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
