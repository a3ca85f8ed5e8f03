package qwen

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/qbench/qbench/tensor"
)

// BnbStateSuffix ends the name of the JSON blob bitsandbytes saves beside each
// 4-bit weight ("<module>.weight.quant_state.bitsandbytes__nf4").
const BnbStateSuffix = ".quant_state.bitsandbytes__nf4"

// bnbState is that JSON blob.
type bnbState struct {
	QuantType       string   `json:"quant_type"`
	BlockSize       int      `json:"blocksize"`
	DType           string   `json:"dtype"`
	Shape           []int    `json:"shape"`
	NestedBlockSize int      `json:"nested_blocksize,omitempty"`
	NestedDType     string   `json:"nested_dtype,omitempty"`
	NestedOffset    *float64 `json:"nested_offset,omitempty"`
}

func computeDType(s string) (tensor.DType, bool) {
	switch s {
	case "bfloat16":
		return tensor.BF16, true
	case "float16":
		return tensor.F16, true
	case "float32":
		return tensor.F32, true
	}
	return 0, false
}

func computeName(d tensor.DType) string {
	return map[tensor.DType]string{tensor.BF16: "bfloat16", tensor.F16: "float16", tensor.F32: "float32"}[d]
}

// readBnb reads one module's 4-bit weight as bitsandbytes saved it.
func readBnb(ck *tensor.Checkpoint, module string, out, in int) (*tensor.NF4, error) {
	w := module + ".weight"
	var used []*tensor.Tensor
	defer func() { // copied out below: the mapped pages may go
		for _, t := range used {
			t.Release()
		}
	}()
	get := func(suffix string, dt tensor.DType) (*tensor.Tensor, error) {
		t, err := ck.Get(w + suffix)
		if err != nil {
			return nil, fmt.Errorf("%s: 4-bit weight %s has no %s", ck.Dir, w, w+suffix)
		}
		used = append(used, t)
		t.Populate() // read below: mapped in one call, not a fault a page
		if t.DType != dt {
			return nil, fmt.Errorf("%s: %s has dtype %v, want %v", t.File, t.Name, t.DType, dt)
		}
		return t, nil
	}
	st, err := get(BnbStateSuffix, tensor.U8)
	if err != nil {
		return nil, err
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%s: %s: %s", st.File, st.Name, fmt.Sprintf(format, a...))
	}
	var s bnbState
	if err := json.Unmarshal(st.Data, &s); err != nil {
		return nil, bad("bad JSON: %v", err)
	}
	if s.QuantType != "nf4" {
		return nil, bad("quant_type %q is not supported (want nf4)", s.QuantType)
	}
	if !sameShape(s.Shape, []int{out, in}) {
		return nil, bad("shape %v, config.json implies [%d %d]", s.Shape, out, in)
	}
	n := out * in
	if s.BlockSize <= 0 || s.BlockSize%2 != 0 || n%2 != 0 {
		return nil, bad("blocksize %d unusable for %d elements", s.BlockSize, n)
	}
	compute, ok := computeDType(s.DType)
	if !ok {
		return nil, bad("compute dtype %q is not supported", s.DType)
	}
	packed, err := get("", tensor.U8)
	if err != nil {
		return nil, err
	}
	if len(packed.Data) != n/2 {
		return nil, fmt.Errorf("%s: %s holds %d bytes, %v needs %d", packed.File, w, len(packed.Data), s.Shape, n/2)
	}
	qm, err := get(".quant_map", tensor.F32)
	if err != nil {
		return nil, err
	}
	if vals := qm.F32(); len(vals) != 16 || [16]float32(vals) != tensor.NF4Table {
		return nil, fmt.Errorf("%s: %s is not the NF4 code book", qm.File, qm.Name)
	}
	blocks := (n + s.BlockSize - 1) / s.BlockSize
	q := &tensor.NF4{Shape: []int{out, in}, Packed: packed.Data, BlockSize: s.BlockSize, Compute: compute}
	if s.NestedOffset == nil { // fp32 absmax
		a, err := get(".absmax", tensor.F32)
		if err != nil {
			return nil, err
		}
		if a.Len() != blocks {
			return nil, fmt.Errorf("%s: %s has %d values, want %d", a.File, a.Name, a.Len(), blocks)
		}
		q.Absmax = a.F32()
	} else {
		if b := s.NestedBlockSize; b <= 0 || b&(b-1) != 0 {
			return nil, bad("nested_blocksize %d, want a positive power of two (bitsandbytes uses 256)", b)
		}
		a, err := get(".absmax", tensor.U8)
		if err != nil {
			return nil, err
		}
		if a.Len() != blocks {
			return nil, fmt.Errorf("%s: %s has %d values, want %d (nested blocksize %d)", a.File, a.Name, a.Len(), blocks, s.NestedBlockSize)
		}
		na, err := get(".nested_absmax", tensor.F32)
		if err != nil {
			return nil, err
		}
		if na.Len() != (blocks+s.NestedBlockSize-1)/s.NestedBlockSize {
			return nil, fmt.Errorf("%s: %s has %d values, want %d", na.File, na.Name, na.Len(), (blocks+s.NestedBlockSize-1)/s.NestedBlockSize)
		}
		nq, err := get(".nested_quant_map", tensor.F32)
		if err != nil {
			return nil, err
		}
		if nq.Len() != 256 {
			return nil, fmt.Errorf("%s: %s has %d values, want 256", nq.File, nq.Name, nq.Len())
		}
		q.QAbsmax = append([]byte(nil), a.Data...)
		q.NestedAbsmax, q.NestedCode = na.F32(), nq.F32()
		q.NestedBlockSize = s.NestedBlockSize
		q.Offset = float32(*s.NestedOffset)
		for _, c := range []struct {
			t *tensor.Tensor
			v []float32
		}{{na, q.NestedAbsmax}, {nq, q.NestedCode}} {
			if i := firstNonFinite(c.v); i >= 0 {
				return nil, fmt.Errorf("%s: %s: value %d is %v", c.t.File, c.t.Name, i, c.v[i])
			}
		}
		if firstNonFinite([]float32{q.Offset}) >= 0 {
			return nil, bad("nested_offset is %v", q.Offset)
		}
	}
	if q.Absmax != nil {
		if i := firstNonFinite(q.Absmax); i >= 0 {
			return nil, fmt.Errorf("%s: %s.absmax: value %d is %v", packed.File, w, i, q.Absmax[i])
		}
	}
	q.Packed = append([]byte(nil), packed.Data...) // the checkpoint is closed after load
	return q, nil
}

// BnbTensors returns the tensors bitsandbytes saves for a 4-bit weight, with
// the names, dtypes and shapes transformers writes and reads.
func BnbTensors(module string, q *tensor.NF4) []*tensor.Tensor {
	w := module + ".weight"
	s := bnbState{QuantType: "nf4", BlockSize: q.BlockSize, DType: computeName(q.Compute), Shape: q.Shape}
	ts := []*tensor.Tensor{{Name: w, DType: tensor.U8, Shape: []int{len(q.Packed), 1}, Data: q.Packed}}
	if q.Double() {
		off := float64(q.Offset)
		s.NestedBlockSize, s.NestedDType, s.NestedOffset = q.NestedBlockSize, "float32", &off
		ts = append(ts,
			&tensor.Tensor{Name: w + ".absmax", DType: tensor.U8, Shape: []int{len(q.QAbsmax)}, Data: q.QAbsmax},
			&tensor.Tensor{Name: w + ".nested_absmax", DType: tensor.F32, Shape: []int{len(q.NestedAbsmax)}, Data: tensor.F32Bytes(q.NestedAbsmax)},
			&tensor.Tensor{Name: w + ".nested_quant_map", DType: tensor.F32, Shape: []int{256}, Data: tensor.F32Bytes(q.NestedCode)})
	} else {
		ts = append(ts, &tensor.Tensor{Name: w + ".absmax", DType: tensor.F32, Shape: []int{len(q.Absmax)}, Data: tensor.F32Bytes(q.Absmax)})
	}
	ts = append(ts, &tensor.Tensor{Name: w + ".quant_map", DType: tensor.F32, Shape: []int{16}, Data: tensor.F32Bytes(tensor.NF4Table[:])})
	blob := marshalState(s)
	ts = append(ts, &tensor.Tensor{Name: w + BnbStateSuffix, DType: tensor.U8, Shape: []int{len(blob)}, Data: blob})
	return ts
}

// marshalState writes the blob as Python's json.dumps does (", " and ": "
// separators, floats in repr form) so the bytes match bitsandbytes'.
func marshalState(s bnbState) []byte {
	shape := "["
	for i, d := range s.Shape {
		if i > 0 {
			shape += ", "
		}
		shape += strconv.Itoa(d)
	}
	shape += "]"
	out := fmt.Sprintf(`{"quant_type": %q, "blocksize": %d, "dtype": %q, "shape": %s`, s.QuantType, s.BlockSize, s.DType, shape)
	if s.NestedOffset != nil {
		out += fmt.Sprintf(`, "nested_blocksize": %d, "nested_dtype": %q, "nested_offset": %s`, s.NestedBlockSize, s.NestedDType, pyFloat(*s.NestedOffset))
	}
	return []byte(out + "}")
}

// pyFloat formats f as Python's repr does: shortest round-trip digits, with
// ".0" on integral values and exponents beyond ±16.
func pyFloat(f float64) string {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return map[bool]string{true: "Infinity", false: "NaN"}[math.IsInf(f, 1)]
	}
	exp := 0
	if f != 0 {
		exp = int(math.Floor(math.Log10(math.Abs(f))))
	}
	if exp < -4 || exp >= 16 {
		s := strconv.FormatFloat(f, 'e', -1, 64) // 1e-05 style like Python
		return s
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if math.Trunc(f) == f {
		s += ".0"
	}
	return s
}
