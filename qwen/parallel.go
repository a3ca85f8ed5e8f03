package qwen

import (
	"runtime"
	"sync"
)

// A job is work split over index ranges. Implementations are preallocated
// structs embedding a jobGroup, so that dispatching one allocates nothing.
type job interface {
	run(lo, hi int)
	group() *sync.WaitGroup
}

type jobGroup struct{ wg sync.WaitGroup }

func (g *jobGroup) group() *sync.WaitGroup { return &g.wg }

type span struct {
	j      job
	lo, hi int
}

var (
	poolOnce sync.Once
	poolWork chan span
)

// parallelFor splits [0,n) into one contiguous chunk per CPU, each at least
// minChunk long, and runs j on them on a pool of persistent workers (the
// caller takes the first chunk); a small n runs inline.
func parallelFor(n, minChunk int, j job) {
	p := runtime.GOMAXPROCS(0)
	if p > n/minChunk {
		p = n / minChunk
	}
	if p <= 1 {
		j.run(0, n)
		return
	}
	poolOnce.Do(func() {
		poolWork = make(chan span, 4*runtime.GOMAXPROCS(0))
		for i := 0; i < runtime.GOMAXPROCS(0); i++ {
			go func() {
				for s := range poolWork {
					s.j.run(s.lo, s.hi)
					s.j.group().Done()
				}
			}()
		}
	})
	wg := j.group()
	chunk := (n + p - 1) / p
	for lo := chunk; lo < n; lo += chunk {
		wg.Add(1)
		poolWork <- span{j, lo, min(lo+chunk, n)}
	}
	j.run(0, min(chunk, n))
	wg.Wait()
}
