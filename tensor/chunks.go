package tensor

import (
	"runtime"
	"sync"
)

// ForChunks runs f over [0, n) in one contiguous chunk per CPU, each at
// least minChunk long (a small n runs inline), and waits: for the load-time
// passes over whole tensors (not the forward pass, whose worker pool avoids
// a goroutine a call).
func ForChunks(n, minChunk int, f func(lo, hi int)) {
	p := min(runtime.GOMAXPROCS(0), n/max(minChunk, 1))
	if p <= 1 {
		f(0, n)
		return
	}
	chunk := (n + p - 1) / p
	var wg sync.WaitGroup
	for lo := chunk; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			f(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	f(0, min(chunk, n))
	wg.Wait()
}
