package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
)

// MaxHeaderSize is the safetensors format's own bound on the JSON header (100 MB).
const MaxHeaderSize = 100 << 20

// FormatError reports a malformed or inconsistent file.
type FormatError struct {
	File   string // path of the file
	Tensor string // tensor name, if the problem is one tensor's
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("%s: tensor %q: %s", e.File, e.Tensor, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// ErrNotFound is returned (wrapped) when a tensor name is not in a file or checkpoint.
var ErrNotFound = errors.New("tensor not found")

// Tensor is one stored tensor. Data aliases the file's memory: it is valid
// until the file is closed and must not be written.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
	File  string // path of the file that holds it, for error messages

	mapped []byte // the whole memory-mapped file holding Data, or nil (see Release)
	off    int    // Data's offset in the file
}

// Populate maps Data's pages into the process in one call before they are
// read (Linux 5.14+: MADV_POPULATE_READ), instead of a page fault every 4 KB
// as a copy walks them (copying 1 GB out of a cached file on the dev VM:
// 0.54 s faulting, 0.42 s populated first). Elsewhere, or for a tensor not
// backed by a memory map, it does nothing. Like Data, not after Close.
func (t *Tensor) Populate() {
	if t.mapped == nil {
		return
	}
	page := os.Getpagesize()
	if lo, hi := t.off&^(page-1), t.off+len(t.Data); hi > lo {
		populatePages(t.mapped[lo:hi])
	}
}

// Release drops Data's pages from the process's resident memory once they
// have been copied out: a loader that binds a model tensor by tensor then
// holds its own copies, not also the checkpoint's mapped bytes. Data stays
// valid (touching it again reads the file's pages back); for a tensor not
// backed by a memory map Release does nothing. Never after Close: the
// addresses may belong to other memory by then.
func (t *Tensor) Release() {
	if t.mapped == nil {
		return
	}
	page := os.Getpagesize()
	// Whole pages only, rounded inwards at the end (the mapping ends there);
	// a page shared with a neighbour is simply read back if it is used.
	lo, hi := t.off&^(page-1), (t.off+len(t.Data))&^(page-1)
	if hi > lo {
		releasePages(t.mapped[lo:hi])
	}
}

// Len is the number of elements.
func (t *Tensor) Len() int { return NumElements(t.Shape) }

// F32 returns the elements converted to float32 in a new slice.
func (t *Tensor) F32() []float32 {
	v := make([]float32, t.Len())
	ToF32(v, t.Data, t.DType)
	return v
}

// I64 returns the elements of an I64 tensor.
func (t *Tensor) I64() ([]int64, error) {
	if t.DType != I64 {
		return nil, &FormatError{t.File, t.Name, fmt.Sprintf("dtype %v, want I64", t.DType)}
	}
	v := make([]int64, t.Len())
	for i := range v {
		v[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
	}
	return v, nil
}

// File is an open safetensors file.
type File struct {
	Path     string
	Metadata map[string]string
	Tensors  map[string]*Tensor
	unmap    func() error
}

// Open memory-maps a safetensors file and validates its header.
func Open(path string) (*File, error) {
	b, unmap, err := mapFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Parse(path, b)
	if err != nil {
		unmap()
		return nil, err
	}
	f.unmap = unmap
	for _, t := range f.Tensors {
		t.mapped = b
	}
	return f, nil
}

// Close releases the mapping; the tensors' Data must not be used after.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	u := f.unmap
	f.unmap = nil
	return u()
}

// Names lists the tensor names in sorted order.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Get returns the named tensor or an error wrapping ErrNotFound.
func (f *File) Get(name string) (*Tensor, error) {
	if t, ok := f.Tensors[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("%s: %q: %w", f.Path, name, ErrNotFound)
}

type headerEntry struct {
	DType   string  `json:"dtype"`
	Shape   []int64 `json:"shape"`
	Offsets []int64 `json:"data_offsets"`
}

// Parse validates and indexes a whole safetensors file held in b. The header
// length is bounded, the JSON must be well formed, every tensor's byte range
// must equal dtype size × element count, lie inside the data section and not
// overlap another's. path is used only in errors.
func Parse(path string, b []byte) (*File, error) {
	bad := func(format string, a ...any) error { return &FormatError{File: path, Msg: fmt.Sprintf(format, a...)} }
	if len(b) < 8 {
		return nil, bad("truncated: %d bytes, too short for a safetensors header", len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeaderSize {
		return nil, bad("header length %d exceeds the format's limit of %d bytes", n, MaxHeaderSize)
	}
	if n > uint64(len(b)-8) {
		return nil, bad("truncated: header says %d bytes, file has %d after the length", n, len(b)-8)
	}
	hdr, data := b[8:8+n], b[8+n:]
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(hdr))
	if err := dec.Decode(&raw); err != nil {
		return nil, bad("header is not a JSON object: %v", err)
	}
	if raw == nil {
		return nil, bad("header is not a JSON object")
	}
	f := &File{Path: path, Tensors: make(map[string]*Tensor, len(raw))}
	type span struct {
		lo, hi int64
		name   string
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, bad("__metadata__ is not a string map: %v", err)
			}
			continue
		}
		tbad := func(format string, a ...any) error {
			return &FormatError{File: path, Tensor: name, Msg: fmt.Sprintf(format, a...)}
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, tbad("bad header entry: %v", err)
		}
		dt, err := ParseDType(e.DType)
		if err != nil {
			return nil, tbad("%v", err)
		}
		if len(e.Offsets) != 2 {
			return nil, tbad("data_offsets has %d values, want 2", len(e.Offsets))
		}
		lo, hi := e.Offsets[0], e.Offsets[1]
		if lo < 0 || hi < lo || hi > int64(len(data)) {
			return nil, tbad("data_offsets [%d,%d] outside the data section of %d bytes (truncated file?)", lo, hi, len(data))
		}
		elems := int64(1)
		shape := make([]int, len(e.Shape))
		for i, d := range e.Shape {
			if d < 0 || (d > 0 && elems > math.MaxInt32*int64(1<<20)/d) {
				return nil, tbad("bad shape %v", e.Shape)
			}
			elems *= d
			shape[i] = int(d)
		}
		if want := elems * int64(dt.Size()); want != hi-lo {
			return nil, tbad("%v%v needs %d bytes, data_offsets give %d", dt, e.Shape, want, hi-lo)
		}
		if hi > lo { // a zero-length tensor occupies no bytes, so it overlaps nothing
			spans = append(spans, span{lo, hi, name})
		}
		f.Tensors[name] = &Tensor{Name: name, DType: dt, Shape: shape, Data: data[lo:hi:hi], File: path, off: int(8 + n + uint64(lo))}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	for i := 1; i < len(spans); i++ {
		if spans[i].lo < spans[i-1].hi {
			return nil, bad("tensors %q and %q overlap", spans[i-1].name, spans[i].name)
		}
	}
	return f, nil
}

// Checkpoint is the set of safetensors files of one model directory: a single
// model.safetensors, or shards listed by model.safetensors.index.json.
type Checkpoint struct {
	Dir   string
	Files []*File
	index map[string]*File
}

// OpenCheckpoint opens the weights of a Hugging Face model directory.
func OpenCheckpoint(dir string) (*Checkpoint, error) {
	c := &Checkpoint{Dir: dir, index: map[string]*File{}}
	idxPath := filepath.Join(dir, "model.safetensors.index.json")
	if b, err := os.ReadFile(idxPath); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, &FormatError{File: idxPath, Msg: fmt.Sprintf("bad JSON: %v", err)}
		}
		if len(idx.WeightMap) == 0 {
			return nil, &FormatError{File: idxPath, Msg: "weight_map is empty"}
		}
		shards := map[string]*File{}
		for name, shard := range idx.WeightMap {
			if filepath.Base(shard) != shard {
				return nil, &FormatError{File: idxPath, Msg: fmt.Sprintf("shard name %q is not a plain file name", shard)}
			}
			f := shards[shard]
			if f == nil {
				if f, err = Open(filepath.Join(dir, shard)); err != nil {
					c.Close()
					return nil, err
				}
				shards[shard] = f
				c.Files = append(c.Files, f)
			}
			if _, ok := f.Tensors[name]; !ok {
				c.Close()
				return nil, &FormatError{File: f.Path, Tensor: name, Msg: "listed in the index but not in the shard"}
			}
			c.index[name] = f
		}
		return c, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		return nil, err
	}
	c.Files = []*File{f}
	for name := range f.Tensors {
		c.index[name] = f
	}
	return c, nil
}

// Get returns the named tensor or an error wrapping ErrNotFound.
func (c *Checkpoint) Get(name string) (*Tensor, error) {
	if f, ok := c.index[name]; ok {
		return f.Tensors[name], nil
	}
	return nil, fmt.Errorf("%s: %q: %w", c.Dir, name, ErrNotFound)
}

// Has reports whether the named tensor exists.
func (c *Checkpoint) Has(name string) bool { _, ok := c.index[name]; return ok }

// Names lists every tensor name, sorted.
func (c *Checkpoint) Names() []string {
	names := make([]string, 0, len(c.index))
	for n := range c.index {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close closes every shard.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.Files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Write saves tensors (Name, DType, Shape, Data) as a safetensors file, in the
// order given, with the header padded to 8 bytes as the reference writer does.
// The file is written to a temporary name and renamed into place.
func Write(path string, tensors []*Tensor, metadata map[string]string) error {
	hdr := make(map[string]any, len(tensors)+1)
	if len(metadata) > 0 {
		hdr["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		if want := t.Len() * t.DType.Size(); want != len(t.Data) {
			return fmt.Errorf("%s: tensor %q: %v%v needs %d bytes, have %d", path, t.Name, t.DType, t.Shape, want, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		hdr[t.Name] = map[string]any{"dtype": t.DType.String(), "shape": shape, "data_offsets": [2]int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	js, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	return WriteFileAtomic(path, func(w *os.File) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(js)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(js); err != nil {
			return err
		}
		for _, t := range tensors {
			if _, err := w.Write(t.Data); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteFileAtomic writes a file through fill into a temporary file in the same
// directory, syncs it and renames it to path, so readers never see half a file.
// The file is created 0644 less the umask, as files users write usually are.
func WriteFileAtomic(path string, fill func(*os.File) error) error {
	return writeAtomic(path, fill, true)
}

// ReplaceFile is WriteFileAtomic without the sync: readers and a crash of
// the process still never see half a file, but a crash of the machine may
// lose the newest version (or, on some file systems, leave it empty) — for
// outputs that can be made again (an evaluation's results and reports),
// where a sync would make the writer wait for whatever else the disk is
// flushing (a checkpoint just written: up to a second, measured).
func ReplaceFile(path string, fill func(*os.File) error) error { return writeAtomic(path, fill, false) }

func writeAtomic(path string, fill func(*os.File) error, sync bool) error {
	var tmp *os.File
	var err error
	for range 100 {
		name := fmt.Sprintf("%s/.%s.tmp%d", filepath.Dir(path), filepath.Base(path), rand.Uint32())
		if tmp, err = os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := fill(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
