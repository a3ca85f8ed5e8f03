package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/qbench/qbench/qwen"
	"github.com/qbench/qbench/tensor"
)

const logitsDoc = `Runs the model over --tokens in one forward pass and prints, for every
position, the --top largest logits in descending order as one JSON object:
{"positions":[{"ids":[...],"logits":[...]}, ...]}. With --adapter the first
adapter is applied. --out also writes all logits as an F32 tensor "logits" of
shape [T, vocab] in a safetensors file.`

func runLogits(args []string) error {
	fs := newFlags("logits", "--model DIR --tokens 1,2,3 [--top 8] [--out FILE.safetensors] [flags]", logitsDoc)
	var mf modelFlags
	mf.register(fs, false)
	tokens := fs.String("tokens", "", "comma-separated token `IDS`")
	top := fs.Int("top", 8, "how many logits to print per position")
	out := fs.String("out", "", "also write all logits to this safetensors `FILE`")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *top < 0 {
		return fmt.Errorf("--top %d: must not be negative", *top)
	}
	ids, err := parseIDs(*tokens)
	if err != nil {
		return err
	}
	m, err := mf.load(false)
	if err != nil {
		return err
	}
	if len(ids) > m.Config.MaxPositions {
		return fmt.Errorf("--tokens: %d tokens, the model takes at most %d (max_position_embeddings)", len(ids), m.Config.MaxPositions)
	}
	e, err := newEngine(m, mf.device, 1)
	if err != nil {
		return err
	}
	adapter := -1
	if len(m.Adapters) > 0 {
		adapter = 0
	}
	s, err := e.NewSeq(len(ids), adapter)
	if err != nil {
		return err
	}
	logits, err := e.Forward([]*qwen.Seq{s}, [][]int{ids}, true)
	if err != nil {
		return err
	}
	V := m.Config.Vocab
	k := min(*top, V)
	type position struct {
		IDs    []int     `json:"ids"`
		Logits []float32 `json:"logits"`
	}
	res := struct {
		Positions []position `json:"positions"`
	}{}
	for p := range ids {
		row := logits[p*V : (p+1)*V]
		idx := topK(row, k)
		pos := position{IDs: idx, Logits: make([]float32, len(idx))}
		for i, id := range idx {
			pos.Logits[i] = row[id]
		}
		res.Positions = append(res.Positions, pos)
	}
	if *out != "" {
		t := &tensor.Tensor{Name: "logits", DType: tensor.F32, Shape: []int{len(ids), V}, Data: tensor.F32Bytes(logits)}
		if err := tensor.Write(*out, []*tensor.Tensor{t}, map[string]string{"generator": "qbench"}); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(res); err != nil {
		return fmt.Errorf("writing output: %v", err)
	}
	return nil
}

// topK returns the indices of the k largest values, descending (lower index
// first on ties), by partial selection: a min-heap of the best k seen, so
// O(n log k) time and O(k) memory per row rather than a sort of the row.
func topK(v []float32, k int) []int {
	if k <= 0 {
		return []int{}
	}
	// worse reports whether index a ranks below index b.
	worse := func(a, b int) bool { return v[a] < v[b] || (v[a] == v[b] && a > b) }
	h := make([]int, 0, k) // heap ordered so that h[0] is the worst kept
	down := func(i int) {
		for {
			c := 2*i + 1
			if c >= len(h) {
				return
			}
			if c+1 < len(h) && worse(h[c+1], h[c]) {
				c++
			}
			if !worse(h[c], h[i]) {
				return
			}
			h[i], h[c] = h[c], h[i]
			i = c
		}
	}
	for i := range v {
		if len(h) < k {
			h = append(h, i)
			for j := len(h) - 1; j > 0 && worse(h[j], h[(j-1)/2]); j = (j - 1) / 2 {
				h[j], h[(j-1)/2] = h[(j-1)/2], h[j]
			}
		} else if worse(h[0], i) {
			h[0] = i
			down(0)
		}
	}
	sort.Slice(h, func(a, b int) bool { return worse(h[b], h[a]) })
	return h
}
