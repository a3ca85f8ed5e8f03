//go:build cuda

package kernels

import (
	"fmt"
	"sort"
	"time"

	"gorgonia.org/cu"

	"github.com/qbench/qbench/qwen"
)

// profile times every launch of a forward pass with a pair of events.
type profile struct {
	pool  []cu.Event
	used  int
	spans []span
}

type span struct {
	label      string
	bytes      int64
	start, end cu.Event
}

func (p *profile) events() (cu.Event, cu.Event, error) {
	for len(p.pool) < p.used+2 {
		ev, err := cu.MakeEvent(cu.DefaultEvent)
		if err != nil {
			return ev, ev, fmt.Errorf("cuda: event: %v", err)
		}
		p.pool = append(p.pool, ev)
	}
	a, b := p.pool[p.used], p.pool[p.used+1]
	p.used += 2
	return a, b, nil
}

// KernelTime is one row of the per-kernel breakdown of a decode step.
type KernelTime struct {
	Label   string  `json:"kernel"`
	Calls   int     `json:"calls_per_step"`
	Micros  float64 `json:"us_per_step"` // summed over its calls
	Bytes   int64   `json:"bytes_per_step"`
	GBs     float64 `json:"gb_per_s"`
	PctCopy float64 `json:"pct_of_copy_bandwidth"`
}

// ProfileStep runs one decode step of seqs (one token each) with every launch
// timed by events (direct launches, no graph: each kernel's own time) and
// returns the breakdown, slowest first. copyGBs is the card's measured copy
// bandwidth. The sequences advance by one token.
func (e *Engine) ProfileStep(seqs []*qwen.Seq, tokens [][]int, copyGBs float64) ([]KernelTime, error) {
	rows, nHead, splits, err := e.prepare(seqs, tokens, false)
	if err != nil {
		return nil, err
	}
	var out []KernelTime
	err = e.Dev.Do(func() error {
		if err := e.ensurePart(rows, splits); err != nil {
			return err
		}
		if err := Write(e.meta, e.hostMeta); err != nil {
			return err
		}
		if err := Write(e.headIdx, e.hostIdx); err != nil {
			return err
		}
		p := &profile{}
		e.prof = p
		err := e.record(rows, nHead, splits, true)
		e.prof = nil
		if err != nil {
			return err
		}
		if err := e.Dev.Sync(); err != nil {
			return err
		}
		agg := map[string]*KernelTime{}
		var order []string
		for _, s := range p.spans {
			ms, err := s.start.Elapsed(s.end)
			if err != nil {
				return fmt.Errorf("cuda: event timing: %v", err)
			}
			kt := agg[s.label]
			if kt == nil {
				kt = &KernelTime{Label: s.label}
				agg[s.label] = kt
				order = append(order, s.label)
			}
			kt.Calls++
			kt.Micros += ms * 1000
			kt.Bytes += s.bytes
		}
		for _, ev := range p.pool {
			cu.DestroyEvent(&ev)
		}
		for _, l := range order {
			kt := agg[l]
			kt.GBs = float64(kt.Bytes) / (kt.Micros * 1e-6) / 1e9
			kt.PctCopy = 100 * kt.GBs / copyGBs
			out = append(out, *kt)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, s := range seqs {
		s.Len += len(tokens[i])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Micros > out[j].Micros })
	return out, nil
}

// CopyBandwidth measures device-to-device copy bandwidth in GB/s (bytes read
// plus bytes written), the median of reps copies of n bytes after a warm-up.
func (d *Device) CopyBandwidth(n int64, reps int) (float64, error) {
	var gbs float64
	err := d.Do(func() error {
		a, err := d.Alloc(n, "copy source")
		if err != nil {
			return err
		}
		defer d.Free(&a)
		b, err := d.Alloc(n, "copy destination")
		if err != nil {
			return err
		}
		defer d.Free(&b)
		if err := cu.MemsetD32(a.Ptr, 0x3f800001, n/4); err != nil { // not zeros
			return err
		}
		start, _ := cu.MakeEvent(cu.DefaultEvent)
		end, _ := cu.MakeEvent(cu.DefaultEvent)
		defer cu.DestroyEvent(&start)
		defer cu.DestroyEvent(&end)
		var times []float64
		for i := 0; i < reps+2; i++ {
			start.Record(d.stream)
			if err := cu.MemcpyDtoDAsync(b.Ptr, a.Ptr, n, d.stream); err != nil {
				return err
			}
			end.Record(d.stream)
			if err := end.Synchronize(); err != nil {
				return err
			}
			ms, _ := start.Elapsed(end)
			if i >= 2 {
				times = append(times, ms)
			}
		}
		sort.Float64s(times)
		gbs = 2 * float64(n) / (times[len(times)/2] * 1e-3) / 1e9
		return nil
	})
	return gbs, err
}

// DecodeRate times steps greedy decode steps of the sequences (one token
// each, after prefill) and returns tokens per second over all sequences.
// With graphs off every step launches its kernels directly.
func (e *Engine) DecodeRate(seqs []*qwen.Seq, steps int, graphs bool) (float64, error) {
	toks := make([][]int, len(seqs))
	for i := range toks {
		toks[i] = []int{int(uint(i*7919) % uint(e.cfg.Vocab))}
	}
	step := func() error {
		if graphs {
			ids, err := e.ForwardArgmax(seqs, toks)
			for i := range toks {
				toks[i][0] = ids[i]
			}
			return err
		}
		rows, nHead, splits, err := e.prepare(seqs, toks, false)
		if err != nil {
			return err
		}
		err = e.Dev.Do(func() error {
			if err := e.ensurePart(rows, splits); err != nil {
				return err
			}
			if err := Write(e.meta, e.hostMeta); err != nil {
				return err
			}
			if err := Write(e.headIdx, e.hostIdx); err != nil {
				return err
			}
			if err := e.record(rows, nHead, splits, true); err != nil {
				return err
			}
			ids := make([]int32, rows)
			if err := Read(ids, e.ids); err != nil { // synchronous: waits for the step
				return err
			}
			for i := range toks {
				toks[i][0] = int(ids[i])
			}
			return nil
		})
		for _, s := range seqs {
			s.Len++
		}
		return err
	}
	for i := 0; i < 3; i++ { // warm-up: module JIT, graph capture
		if err := step(); err != nil {
			return 0, err
		}
	}
	t0 := time.Now()
	for i := 0; i < steps; i++ {
		if err := step(); err != nil {
			return 0, err
		}
	}
	return float64(steps*len(seqs)) / time.Since(t0).Seconds(), nil
}
