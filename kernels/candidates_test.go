//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qbench/qbench/qwen"
)

// TestCandidates runs cand_slice + cand_merge on fresh random logits rounded
// to quarters (ties everywhere) and checks every row against qwen's
// Candidates: the penalised logits bit for bit, the same candidates (ids in
// order, logits exactly) or, where ties overflow CAND_MAX or there is no
// top-k, count −1; a row with a NaN, count −2. Vocabularies: the real one,
// one slice and a bit, a last slice not a multiple of 4, one smaller than k.
func TestCandidates(t *testing.T) {
	d := device(t)
	rng := rand.New(rand.NewPCG(rand.Uint64(), 11))
	for _, V := range []int{151936, 4099, 5000, 40} {
		for _, R := range []int{1, 7, 70} {
			S := (V + candSlice - 1) / candSlice
			logits := make([]float32, R*V)
			scale := []float64{2, 8, 0.1}[rng.IntN(3)] // 0.1: huge ties at the top
			for i := range logits {
				logits[i] = float32(math.Round(rng.NormFloat64()*scale*4) / 4)
			}
			ks, pens, off := make([]int32, R), make([]float32, R), make([]int32, R+1)
			var seen []int32
			seenOf := make([][]int, R)
			for r := range R {
				ks[r] = int32([]int{0, 1, 2, 20, 64, 64}[rng.IntN(6)])
				pens[r] = []float32{1, 1.05, 1.3}[rng.IntN(3)]
				if pens[r] != 1 {
					set := map[int]bool{}
					for range rng.IntN(300) {
						tok := rng.IntN(V)
						if !set[tok] {
							set[tok] = true
							seenOf[r] = append(seenOf[r], tok)
							seen = append(seen, int32(tok))
						}
					}
				}
				off[r+1] = int32(len(seen))
			}
			nanRow := -1
			if R > 1 {
				nanRow = rng.IntN(R)
				logits[nanRow*V+rng.IntN(V)] = float32(math.NaN())
			}
			var counts, ids []int32
			var vals, pen []float32
			err := d.Do(func() error {
				bufs := []*Buf{}
				up := func(v any, what string) Buf {
					var b Buf
					switch v := v.(type) {
					case []float32:
						b, _ = Upload(d, v, what)
					case []int32:
						b, _ = Upload(d, append(v, 0), what)
					}
					bufs = append(bufs, &b)
					return b
				}
				alloc := func(bytes int, what string) Buf {
					b, _ := d.Alloc(int64(bytes), what)
					bufs = append(bufs, &b)
					d.Poison(b)
					return b
				}
				defer func() {
					for _, b := range bufs {
						d.Free(b)
					}
				}()
				lb, sb, ob, pb, kb := up(logits, "logits"), up(seen, "seen"), up(off, "offsets"), up(pens, "penalties"), up(ks, "k")
				key, sid, info := alloc(4*R*S*candMax, "keys"), alloc(4*R*S*candMax, "ids"), alloc(16*R*S, "info")
				ib, vb, cb := alloc(4*R*candMax, "ids"), alloc(4*R*candMax, "logits"), alloc(4*R, "counts")
				if err := d.run(candSliceCall(lb, V, sb, ob, pb, kb, key, sid, info, S, R)); err != nil {
					return err
				}
				if err := d.run(candMergeCall(key, sid, info, kb, S, V, ib, vb, cb, R)); err != nil {
					return err
				}
				counts, ids, vals, pen = make([]int32, R), make([]int32, R*candMax), make([]float32, R*candMax), make([]float32, R*V)
				for _, err := range []error{Read(counts, cb), Read(ids, ib), Read(vals, vb), Read(pen, lb)} {
					if err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			overflow := 0
			for r := range R {
				what := fmt.Sprintf("V %d row %d/%d (k %d, penalty %g, %d seen)", V, r, R, ks[r], pens[r], len(seenOf[r]))
				if r == nanRow {
					if want := map[bool]int32{true: -1, false: -2}[ks[r] == 0]; counts[r] != want { // no top-k: the host reads (and checks) the row
						t.Errorf("%s: a NaN logit gave count %d, want %d", what, counts[r], want)
					}
					continue
				}
				row := append([]float32(nil), logits[r*V:(r+1)*V]...)
				qwen.RepetitionPenalty(row, seenOf[r], pens[r])
				for i, v := range pen[r*V : (r+1)*V] {
					if v != row[i] || math.Signbit(float64(v)) != math.Signbit(float64(row[i])) {
						t.Fatalf("%s: penalised logit %d is %g, want %g", what, i, v, row[i])
					}
				}
				s := qwen.NewSampler(qwen.Sampling{Temperature: 1, TopK: int(ks[r])})
				want, ok := s.Candidates(row, nil, candMax)
				if !ok {
					overflow++
					if counts[r] != -1 {
						t.Errorf("%s: count %d, want -1 (%d candidates past %d, or no top-k)", what, counts[r], len(want), candMax)
					}
					continue
				}
				if int(counts[r]) != len(want) {
					t.Errorf("%s: %d candidates, want %d", what, counts[r], len(want))
					continue
				}
				for j, c := range want {
					if got := (qwen.Cand{ID: int(ids[r*candMax+j]), Logit: vals[r*candMax+j]}); got != c {
						t.Errorf("%s: candidate %d is %+v, want %+v", what, j, got, c)
						break
					}
				}
			}
			t.Logf("V %d rows %d scale %g: %d rows handed back whole", V, R, scale, overflow)
		}
	}
}

// wholeLogits hides an engine's device shortcuts: Generate then samples on
// the host from whole rows of logits.
type wholeLogits struct{ qwen.Engine }

// countCands counts an engine's candidate steps.
type countCands struct {
	*Engine
	steps int
}

func (c *countCands) ForwardCandidates(seqs []*qwen.Seq, tokens [][]int, req []qwen.CandRequest) ([]qwen.StepRow, error) {
	c.steps++
	return c.Engine.ForwardCandidates(seqs, tokens, req)
}

// TestSamplingOnDevice: sampled generation with the penalty and top-k on the
// device gives, seed for seed, the tokens of the host sampling whole rows of
// the same engine's logits, and those of the CPU path; in engines for one
// sequence (nf4_lut, graphs with PDL) and for batches (tensor-core kernels).
func TestSamplingOnDevice(t *testing.T) {
	d := device(t)
	m, err := qwen.Load(bnbDir, qwen.LoadOptions{Adapters: []string{loraDir}})
	if err != nil {
		t.Fatal(err)
	}
	prompts := [][]int{{151644, 872, 198, 3838, 374}, {9707, 11, 1879}, {151644, 872, 198, 3838, 374}, {3838, 3838, 374, 11}}
	adapters := []int{-1, 0, 0, -1}
	settings := []qwen.Sampling{
		{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.05}, // Qwen2.5-3B-Instruct's generation_config.json
		{Temperature: 0, RepetitionPenalty: 1.3},
		{Temperature: 1.2, TopK: 64, RepetitionPenalty: 1.1},
		{Temperature: 0.9, TopP: 0.9}, // no top-k: whole rows
	}
	samplers := func(seed uint64, n int) []*qwen.Sampler {
		s := make([]*qwen.Sampler, n)
		for i := range s {
			x := settings[i]
			x.Seed = seed + uint64(i)
			s[i] = qwen.NewSampler(x)
		}
		return s
	}
	opt := qwen.GenerateOptions{MaxNewTokens: 24}
	cpu := qwen.NewRunner(m)
	for _, batch := range []int{1, 4} {
		e, err := NewEngine(d, m, 64, batch)
		if err != nil {
			t.Fatal(err)
		}
		n := map[int]int{1: 1, 4: 4}[batch]
		for seed := uint64(0); seed < 3; seed++ {
			c := &countCands{Engine: e}
			got, err := qwen.Generate(c, prompts[:n], adapters[:n], samplers(seed, n), opt)
			if err != nil {
				t.Fatal(err)
			}
			whole, err := qwen.Generate(wholeLogits{e}, prompts[:n], adapters[:n], samplers(seed, n), opt)
			if err != nil {
				t.Fatal(err)
			}
			host, err := qwen.Generate(cpu, prompts[:n], adapters[:n], samplers(seed, n), opt)
			if err != nil {
				t.Fatal(err)
			}
			if c.steps < opt.MaxNewTokens/2 {
				t.Errorf("batch %d: %d candidate steps", batch, c.steps)
			}
			for i := range n {
				if fmt.Sprint(got[i]) != fmt.Sprint(whole[i]) || fmt.Sprint(got[i]) != fmt.Sprint(host[i]) {
					t.Errorf("engine for %d, seed %d, row %d (%+v):\n device %v\n whole rows %v\n CPU %v", batch, seed, i, settings[i], got[i], whole[i], host[i])
				}
			}
		}
		e.Close()
	}
}
