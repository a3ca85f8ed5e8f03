package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestBF16Rounding(t *testing.T) {
	cases := []struct {
		in   uint32 // f32 bits
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1.0 exact
		{0x3f808000, 0x3f80}, // halfway, even below: stays
		{0x3f818000, 0x3f82}, // halfway, odd below: rounds up to even
		{0x3f808001, 0x3f81}, // just above halfway: up
		{0x3f807fff, 0x3f80}, // just below halfway: down
		{0x7f7fffff, 0x7f80}, // max float rounds to +Inf, as PyTorch does
		{0xff800000, 0xff80}, // -Inf
	}
	for _, c := range cases {
		if got := F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if !math.IsNaN(float64(BF16ToF32(F32ToBF16(float32(math.NaN()))))) {
		t.Error("NaN did not stay NaN")
	}
	for b := 0; b < 1<<16; b++ { // every finite bf16 survives the round trip
		f := BF16ToF32(uint16(b))
		if !math.IsNaN(float64(f)) && F32ToBF16(f) != uint16(b) {
			t.Fatalf("round trip of %#04x gave %#04x", b, F32ToBF16(f))
		}
	}
}

func TestWriteOpenRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	a := []float32{1, -2.5, 3.25, 0, 7, 8}
	in := []*Tensor{
		{Name: "a", DType: F32, Shape: []int{2, 3}, Data: F32Bytes(a)},
		{Name: "b", DType: BF16, Shape: []int{3}, Data: BF16Bytes([]float32{1, 2, 3})},
		{Name: "c", DType: I64, Shape: []int{2}, Data: I64Bytes([]int64{-1, 151936})},
		{Name: "empty", DType: U8, Shape: []int{0}, Data: []byte{}},
	}
	if err := Write(path, in, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata = %v", f.Metadata)
	}
	ta, _ := f.Get("a")
	for i, v := range ta.F32() {
		if v != a[i] {
			t.Errorf("a[%d] = %v, want %v", i, v, a[i])
		}
	}
	tc, _ := f.Get("c")
	if c, _ := tc.I64(); c[0] != -1 || c[1] != 151936 {
		t.Errorf("c = %v", c)
	}
	if _, err := f.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: %v", err)
	}
}

// header builds a file from a raw JSON header and n data bytes.
func header(js string, n int) []byte {
	b := make([]byte, 8+len(js)+n)
	binary.LittleEndian.PutUint64(b, uint64(len(js)))
	copy(b[8:], js)
	return b
}

func TestParseRejects(t *testing.T) {
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, MaxHeaderSize+1)
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", []byte{1, 2}, "truncated"},
		{"header past end", header(`{}`, 0)[:9], "truncated"},
		{"huge header", huge, "exceeds"},
		{"not json", header(`{"a":`, 0), "not a JSON object"},
		{"array", header(`[1]`, 0), "not a JSON object"},
		{"bad dtype", header(`{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}`, 1), "unsupported dtype"},
		{"size mismatch", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), "needs 8 bytes"},
		{"past end", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), "outside the data section"},
		{"negative", header(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, 0), "bad shape"},
		{"overlap", header(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, 4), "overlap"},
		{"offsets", header(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[4]}}`, 4), "data_offsets"},
	}
	for _, c := range cases {
		_, err := Parse("f.safetensors", c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "f.safetensors") {
			t.Errorf("%s: err = %v, want one naming the file and containing %q", c.name, err, c.want)
		}
	}
}

func TestOpenTruncatedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := Write(path, []*Tensor{{Name: "w", DType: F32, Shape: []int{64}, Data: F32Bytes(make([]float32, 64))}}, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-10], 0o644)
	if _, err := OpenCheckpoint(dir); err == nil || !strings.Contains(err.Error(), "outside the data section") {
		t.Errorf("truncated checkpoint: err = %v", err)
	}
}

func TestShardedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	Write(filepath.Join(dir, "a.safetensors"), []*Tensor{{Name: "x", DType: U8, Shape: []int{1}, Data: []byte{7}}}, nil)
	Write(filepath.Join(dir, "b.safetensors"), []*Tensor{{Name: "y", DType: U8, Shape: []int{1}, Data: []byte{9}}}, nil)
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"),
		[]byte(`{"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}`), 0o644)
	c, err := OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	y, err := c.Get("y")
	if err != nil || y.Data[0] != 9 {
		t.Fatalf("y = %v, %v", y, err)
	}
	if len(c.Names()) != 2 {
		t.Errorf("names = %v", c.Names())
	}
}

func FuzzParse(f *testing.F) {
	f.Add(header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add(header(`{"__metadata__":{"k":"v"},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]}}`, 4))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse("fuzz", b)
		if err != nil {
			return
		}
		for _, tn := range file.Tensors { // every accepted tensor must be readable
			if tn.Len()*tn.DType.Size() != len(tn.Data) {
				t.Fatalf("%s: size mismatch accepted", tn.Name)
			}
			_ = tn.F32()
		}
	})
}

// TestZeroLengthTensor: a zero-length tensor sharing an offset with another
// is not an overlap, whatever order the header's map gives (it failed about
// half the runs).
func TestZeroLengthTensor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "z.safetensors")
	hdr := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"empty":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}}`
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(append(b, hdr...), make([]byte, 8)...)
	os.WriteFile(path, b, 0o644)
	for range 50 {
		f, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if f.Tensors["empty"].Len() != 0 || f.Tensors["a"].Len() != 2 {
			t.Fatal("wrong tensors")
		}
		f.Close()
	}
}

// TestRelease checks that releasing a mapped tensor's pages leaves every
// tensor's Data intact (the released one and neighbours sharing its edge
// pages read back from the file), and that Release on a tensor parsed from
// ordinary memory changes nothing (dropping heap pages would zero them).
func TestRelease(t *testing.T) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
	var in []*Tensor
	for i, n := range []int{5001, 3 * 4096, 20011, 7} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		in = append(in, &Tensor{Name: fmt.Sprint("t", i), DType: U8, Shape: []int{n}, Data: b})
	}
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := Write(path, in, nil); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(path, raw)
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer mapped.Close()
	for _, f := range []*File{mapped, parsed} {
		for _, w := range in {
			got, _ := f.Get(w.Name)
			_ = got.Data[len(got.Data)-1] // resident before the release
			got.Release()
		}
		for _, w := range in {
			got, _ := f.Get(w.Name)
			if !bytes.Equal(got.Data, w.Data) {
				t.Fatalf("%s: tensor %s changed after Release", f.Path, w.Name)
			}
		}
	}
}

// TestForChunks: every index is visited exactly once, whatever n and the
// chunk minimum, and small inputs run inline.
func TestForChunks(t *testing.T) {
	for _, c := range []struct{ n, min int }{{0, 1}, {1, 1}, {7, 1}, {1000, 1}, {1000, 300}, {1 << 20, 1 << 10}, {99, 1000}} {
		seen := make([]int32, c.n)
		ForChunks(c.n, c.min, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				atomic.AddInt32(&seen[i], 1)
			}
		})
		for i, v := range seen {
			if v != 1 {
				t.Fatalf("n %d min %d: index %d visited %d times", c.n, c.min, i, v)
			}
		}
	}
}

// TestWriteFileAtomic: both atomic writers replace a file whole, and a fill
// that fails leaves the old file as it was and no temporary file behind.
func TestWriteFileAtomic(t *testing.T) {
	for name, write := range map[string]func(string, func(*os.File) error) error{"WriteFileAtomic": WriteFileAtomic, "ReplaceFile": ReplaceFile} {
		dir := t.TempDir()
		path := filepath.Join(dir, "out.txt")
		for _, text := range []string{"first\n", "second, longer\n"} {
			if err := write(path, func(f *os.File) error { _, err := f.WriteString(text); return err }); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if b, err := os.ReadFile(path); err != nil || string(b) != text {
				t.Fatalf("%s: read %q, %v; want %q", name, b, err, text)
			}
		}
		err := write(path, func(f *os.File) error {
			f.WriteString("half")
			return errors.New("disk full")
		})
		if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: a failed fill returned %v", name, err)
		}
		if b, _ := os.ReadFile(path); string(b) != "second, longer\n" {
			t.Errorf("%s: after a failed fill the file holds %q", name, b)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("%s: %d files left in the directory, want 1", name, len(ents))
		}
	}
}
