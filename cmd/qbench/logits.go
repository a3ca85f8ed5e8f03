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
	ids, err := parseIDs(*tokens)
	if err != nil {
		return err
	}
	m, err := mf.load()
	if err != nil {
		return err
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
	k := min(max(*top, 0), V)
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

// topK returns the indices of the k largest values, descending (lower index first on ties).
func topK(v []float32, k int) []int {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return v[idx[a]] > v[idx[b]] })
	return idx[:k]
}
