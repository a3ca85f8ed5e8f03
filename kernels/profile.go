//go:build cuda

package kernels

import (
	"fmt"
	"sort"
	"time"

	"gorgonia.org/cu"

	"github.com/qbench/qbench/qwen"
)

// profile records a forward pass's launches instead of running them.
type profile struct {
	launches []recorded
}

type recorded struct {
	label string
	layer int // −1 outside the decoder layers
	c     call
}

// KernelTime is one row of the per-kernel breakdown of a decode step.
type KernelTime struct {
	Label   string  `json:"kernel"`
	Calls   int     `json:"calls_per_step"`
	Micros  float64 `json:"us_per_step"` // summed over its calls
	Bytes   int64   `json:"bytes_per_step"`
	GBs     float64 `json:"gb_per_s"`
	PctCopy float64 `json:"pct_of_copy_bandwidth"`
	Flops   int64   `json:"flops_per_step"` // matrix products: 2 × rows × weights (0 for the others)
	TFLOPs  float64 `json:"tflop_per_s"`
}

// ProfileStep measures each launch of one decode step of seqs (one token
// each): the step's launches are recorded, then each is captured ten times
// back to back in a CUDA graph and timed with events around a replay, so the
// time is the kernel's own (graph node overhead, ~1 µs, included; host launch
// gaps not). Labels aggregate the layers; the list comes slowest first.
// byKernel splits each label's row by kernel name ("label · kernel"). An
// op's bytes and flops count once (on its first launch other than
// split_planes), however many launches it takes. copyGBs is the card's
// measured copy bandwidth. The sequences advance by one token (their caches
// get the step's K/V written more than once, harmlessly).
func (e *Engine) ProfileStep(seqs []*qwen.Seq, tokens [][]int, copyGBs float64, byKernel bool) ([]KernelTime, error) {
	ps, err := e.prepare(seqs, tokens, false)
	if err != nil {
		return nil, err
	}
	ps.pdl = true // a decode step, as run makes it
	const reps = 10
	var out []KernelTime
	err = e.Dev.Do(func() error {
		if err := e.stage(ps, true); err != nil {
			return err
		}
		p := &profile{}
		e.prof = p
		err := e.forward(ps, tailArgmax)
		e.prof = nil
		if err != nil {
			return err
		}
		start, _ := cu.MakeEvent(cu.DefaultEvent)
		end, _ := cu.MakeEvent(cu.DefaultEvent)
		defer cu.DestroyEvent(&start)
		defer cu.DestroyEvent(&end)
		agg := map[string]*KernelTime{}
		var order []string
		counted := false // the current op's bytes and flops are in (its launches are consecutive)
		for i, l := range p.launches {
			if i == 0 || l.label != p.launches[i-1].label || l.layer != p.launches[i-1].layer {
				counted = false
			}
			g, err := e.Dev.Capture(func() error {
				for r := 0; r < reps; r++ {
					if err := e.Dev.run(l.c); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			if err := e.Dev.Launch(g); err != nil { // warm-up
				g.destroy()
				return err
			}
			start.Record(e.Dev.stream)
			err = e.Dev.Launch(g)
			end.Record(e.Dev.stream)
			if err == nil {
				err = end.Synchronize()
			}
			g.destroy()
			if err != nil {
				return fmt.Errorf("cuda: profiling %s: %v", l.c.name, err)
			}
			ms, _ := start.Elapsed(end)
			key := l.label
			if byKernel {
				key += " · " + l.c.name
			}
			kt := agg[key]
			if kt == nil {
				kt = &KernelTime{Label: key}
				agg[key] = kt
				order = append(order, key)
			}
			kt.Calls++
			kt.Micros += ms * 1000 / reps
			if !counted && l.c.name != "split_planes" {
				kt.Bytes += e.traffic(l.label, l.layer, ps)
				kt.Flops += e.flops(l.label, l.layer, ps)
				counted = true
			}
		}
		for _, l := range order {
			kt := agg[l]
			kt.GBs = float64(kt.Bytes) / (kt.Micros * 1e-6) / 1e9
			kt.PctCopy = 100 * kt.GBs / copyGBs
			kt.TFLOPs = float64(kt.Flops) / (kt.Micros * 1e-6) / 1e12
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
		p, err := e.prepare(seqs, toks, false)
		if err != nil {
			return err
		}
		p.pdl = true
		err = e.Dev.Do(func() error {
			if err := e.stage(p, true); err != nil {
				return err
			}
			if err := e.forward(p, tailArgmax); err != nil {
				return err
			}
			ids := make([]int32, p.rows)
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

// flops is the multiply-adds ×2 a launch of a matrix product computes
// (every batch row against every weight; an extra bf16 part of x, which the
// tensor-core kernels run, not counted), 0 for the other steps.
func (e *Engine) flops(label string, layer int, p pass) int64 {
	var op matOp
	rows := p.rows
	switch label {
	case stepQKV:
		op = e.layers[layer].qkv
	case stepO:
		op = e.layers[layer].o
	case stepGateUp:
		op = e.layers[layer].gateup
	case stepDown:
		op = e.layers[layer].down
	case stepHead:
		op, rows = e.head, p.nHead
	default:
		return 0
	}
	return 2 * int64(rows) * 2 * int64(op.pairs) * int64(op.k)
}

// traffic is the bytes a step of a pass must move (each input read once,
// each output written once), for the GB/s of the profile: the weights a
// launch reads (counted at upload) plus its activations.
func (e *Engine) traffic(label string, layer int, p pass) int64 {
	c := e.cfg
	R, NH, H, I := int64(p.rows), int64(p.nHead), int64(c.Hidden), int64(c.Intermediate)
	qDim, kvDim, V := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim), int64(c.Vocab)
	var L *layerOps
	if layer >= 0 {
		L = &e.layers[layer]
	}
	norm := func(sh shrinkDesc) int64 { // read x and w, write xn; with the shrink, A and xn again per output
		b := 8*R*H + 4*H
		if len(e.m.Adapters) > 0 {
			b += sh.bytes + int64(sh.slots*e.rmax)*R*H*4
		}
		return b
	}
	switch label {
	case stepEmbed:
		return R*H*6 + R*int64(c.HeadDim)*4
	case stepNormAttn:
		return norm(L.shQKV)
	case stepNormMLP, stepONorm: // (the finish's partial sums, as mmas_finish's, not counted)
		return norm(L.shGU)
	case stepDownNorm: // the next layer's input norm
		return norm(e.layers[layer+1].shQKV)
	case stepQKV:
		return L.qkv.weights + R*H*4 + R*(qDim+2*kvDim)*4
	case stepAttn, stepAttnO: // each row's K and V up to its position, once per KV head (+ the o shrink's A)
		var b int64
		for _, r := range e.hostMeta {
			b += 2 * int64(r.Pos+1) * kvDim * 4
		}
		if label == stepAttnO {
			b += L.shO.bytes
		}
		return b
	case stepCombine:
		return R * (int64(c.Heads*p.splits*(c.HeadDim+2)) + qDim) * 4
	case stepCombineO:
		return R*(int64(c.Heads*p.splits*(c.HeadDim+2))+qDim)*4 + L.shO.bytes
	case stepShrinkO:
		return L.shO.bytes + R*qDim*4
	case stepO:
		return L.o.weights + R*qDim*4 + 2*R*H*4
	case stepGateUp:
		return L.gateup.weights + R*H*4 + R*I*4
	case stepShrinkD:
		return L.shD.bytes + R*I*4
	case stepDown:
		return L.down.weights + R*I*4 + 2*R*H*4
	case stepFinalNorm:
		return 8*NH*H + 4*H
	case stepHead:
		return e.head.weights + NH*H*4 + NH*V*4
	case stepArgmax:
		return NH * V * 4
	}
	return 0
}
