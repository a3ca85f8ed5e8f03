//go:build cuda

package kernels

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"gorgonia.org/cu"
)

// Device is one GPU: a context made current on a locked OS thread, the
// embedded PTX modules loaded once, their functions cached, one stream.
// Every CUDA call runs on that thread through Do.
type Device struct {
	Name   string
	SMs    int
	Debug  bool // synchronise after every launch and name the kernel that failed
	work   chan func()
	ctx    cu.CUContext
	stream cu.Stream
	fns    map[string]cu.Function
	occ    map[string]int // resident 256-thread blocks per SM of each gemv kernel
	graphs map[graphKey]*Graph
}

// ErrNoDevice is returned by Open when no CUDA device is usable.
var ErrNoDevice = errors.New("no CUDA device")

// Open starts the device's thread, creates a context on GPU ordinal and
// loads every embedded module.
func Open(ordinal int) (*Device, error) {
	d := &Device{work: make(chan func()), fns: map[string]cu.Function{}, occ: map[string]int{}, graphs: map[graphKey]*Graph{},
		Debug: os.Getenv("QBENCH_CUDA_DEBUG") == "1"}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // the context stays current on this thread for its whole life
		ready <- d.init(ordinal)
		for f := range d.work {
			f()
		}
	}()
	if err := <-ready; err != nil {
		close(d.work)
		return nil, err
	}
	return d, nil
}

func (d *Device) init(ordinal int) error {
	dev, err := cu.GetDevice(ordinal)
	if err != nil {
		return fmt.Errorf("cuda: device %d: %w (%v)", ordinal, ErrNoDevice, err)
	}
	if d.Name, err = dev.Name(); err != nil {
		return fmt.Errorf("cuda: device name: %v", err)
	}
	if d.SMs, err = dev.Attribute(cu.MultiprocessorCount); err != nil {
		return fmt.Errorf("cuda: device attribute: %v", err)
	}
	if d.ctx, err = dev.MakeContext(cu.SchedAuto); err != nil {
		return fmt.Errorf("cuda: context: %v", err)
	}
	if d.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return fmt.Errorf("cuda: stream: %v", err)
	}
	for _, m := range modules {
		mod, err := cu.LoadData(m.ptx)
		if err != nil {
			return fmt.Errorf("cuda: loading module %s: %v", m.name, err)
		}
		for _, name := range kernelNames[m.name] {
			fn, err := mod.Function(name)
			if err != nil {
				return fmt.Errorf("cuda: kernel %s in %s: %v", name, m.name, err)
			}
			d.fns[name] = fn
			if strings.HasPrefix(name, "gemv_") || strings.HasPrefix(name, "mma_") {
				if d.occ[name], err = fn.MaxActiveBlocksPerMultiProcessor(256, 0); err != nil {
					return fmt.Errorf("cuda: occupancy of %s: %v", name, err)
				}
			}
		}
	}
	return nil
}

// kernelNames lists the entry points of each module.
var kernelNames = map[string][]string{
	"attention":  {"attn_split", "attn_combine"},
	"nf4_matmul": append(gemvNames(), "mma_nf4_1", "mma_nf4_2", "mma_nf4_4", "mma_bf16_1", "mma_bf16_2", "mma_bf16_4", "lora_shrink", "layout"),
	"rmsnorm":    {"rmsnorm", "rmsnorm_lora", "embed"},
	"sample":     {"argmax", "target_logprob"},
}

// gemvMT are the batch-row counts gemv is compiled for (GEMV(MT) in nf4_matmul.cu).
var gemvMT = []int{1, 2, 4, 8, 16}

func gemvNames() []string {
	var n []string
	for _, mt := range gemvMT {
		n = append(n, fmt.Sprintf("gemv_nf4_%d", mt), fmt.Sprintf("gemv_nf4r_%d", mt), fmt.Sprintf("gemv_dense_%d", mt))
	}
	return n
}

// gemvMaxMT caps the batch rows per pass (QBENCH_GEMV_MAXMT overrides it,
// for tuning). 4 won on an H200 (2026-11-26, 3B shape, batch 20: 535 tok/s
// against 311 with 16 rows a pass, whose 255 registers leave one block an SM).
var gemvMaxMT = func() int {
	if v, err := strconv.Atoi(os.Getenv("QBENCH_GEMV_MAXMT")); err == nil && v > 0 {
		return v
	}
	return 4
}()

// gemvName picks the gemv variant for a matrix kind and M batch rows: the
// smallest row count per pass that covers M, up to gemvMaxMT (then several passes).
func gemvName(kind, rows int) string {
	mt := 1
	for _, v := range gemvMT {
		if v <= gemvMaxMT {
			mt = v
		}
	}
	for _, v := range gemvMT {
		if v >= rows && v <= gemvMaxMT {
			mt = v
			break
		}
	}
	switch kind {
	case fmtNF4:
		return fmt.Sprintf("gemv_nf4_%d", mt)
	case fmtNF4Round:
		return fmt.Sprintf("gemv_nf4r_%d", mt)
	}
	return fmt.Sprintf("gemv_dense_%d", mt)
}

// targetWarps is about enough resident warps to keep a Hopper's 132 SMs busy.
const targetWarps = 132 * 32

// gemvWarps picks how many warps share one pair of output rows (split-K): as
// many as it takes to fill the card when the matrix has few rows, no more
// than one warp-step of columns each, and 1, 2, 4 or 8.
func gemvWarps(kind, pairs, K int) int {
	step := 256 // columns per warp-step: 8 a lane for bf16/fp32
	if kind != fmtBF16 {
		step = 1024 // 32 a lane for NF4
	}
	w := min(8, max(1, K/step), (targetWarps+pairs-1)/pairs)
	for w&(w-1) != 0 {
		w &= w - 1
	}
	return max(w, 1)
}

// gemvLaunch is the kernel, grid and warps-per-pair of one gemv launch. The
// kernel is persistent: one wave of blocks (as many as are resident at once),
// each walking several pairs.
func (d *Device) gemvLaunch(kind, rows, pairs, K int) (string, [3]int, int) {
	if kind == kindMMA || kind == kindMMABF16 { // tiles of 8 pairs, NT n-tiles of 8 batch rows a pass
		nt := 4
		switch {
		case rows <= 8:
			nt = 1
		case rows <= 16:
			nt = 2
		}
		tiles := pairs / 8
		w := min(8, max(1, K/64), (targetWarps+tiles-1)/tiles)
		for w&(w-1) != 0 {
			w &= w - 1
		}
		name := fmt.Sprintf("mma_nf4_%d", nt)
		if kind == kindMMABF16 {
			name = fmt.Sprintf("mma_bf16_%d", nt)
		}
		per := 8 / w
		return name, [3]int{min((tiles+per-1)/per, max(1, d.occ[name])*d.SMs)}, w
	}
	w := gemvWarps(kind, pairs, K)
	per := 8 / w
	name := gemvName(kind, rows)
	return name, [3]int{min((pairs+per-1)/per, max(1, d.occ[name])*d.SMs)}, w
}

// Do runs f on the device's thread and waits for it.
func (d *Device) Do(f func() error) error {
	done := make(chan error)
	d.work <- func() { done <- f() }
	return <-done
}

// Close destroys the context and stops the thread.
func (d *Device) Close() error {
	err := d.Do(func() error {
		for _, g := range d.graphs {
			g.destroy()
		}
		return d.ctx.Destroy()
	})
	close(d.work)
	return err
}

// Buf is a device allocation.
type Buf struct {
	Ptr   cu.DevicePtr
	Bytes int64
}

// Alloc allocates bytes on the device (on its thread); what names the buffer
// in the out-of-memory error.
func (d *Device) Alloc(bytes int64, what string) (Buf, error) {
	if bytes <= 0 {
		bytes = 8
	}
	p, err := cu.MemAlloc(bytes)
	if err != nil {
		free, total, _ := cu.MemInfo()
		return Buf{}, fmt.Errorf("cuda: out of memory allocating %s: needed %d bytes, %d of %d free (%v)", what, bytes, free, total, err)
	}
	return Buf{p, bytes}, nil
}

// Free releases a buffer (on the device's thread).
func (d *Device) Free(b *Buf) {
	if b.Ptr != 0 {
		cu.MemFree(b.Ptr)
		b.Ptr = 0
	}
}

// Upload allocates and fills a buffer from host data (a slice of plain values).
func Upload[T any](d *Device, v []T, what string) (Buf, error) {
	var zero T
	n := int64(len(v)) * int64(unsafe.Sizeof(zero))
	b, err := d.Alloc(n, what)
	if err != nil || n == 0 {
		return b, err
	}
	if err := cu.MemcpyHtoD(b.Ptr, unsafe.Pointer(&v[0]), n); err != nil {
		return b, fmt.Errorf("cuda: upload %s: %v", what, err)
	}
	return b, nil
}

// Write copies host data into an existing buffer.
func Write[T any](b Buf, v []T) error {
	var zero T
	n := int64(len(v)) * int64(unsafe.Sizeof(zero))
	if n > b.Bytes {
		return fmt.Errorf("cuda: write of %d bytes into a buffer of %d", n, b.Bytes)
	}
	if n == 0 {
		return nil
	}
	return cu.MemcpyHtoD(b.Ptr, unsafe.Pointer(&v[0]), n)
}

// Read waits for all work of the context (kernels run on a non-blocking
// stream, which a plain copy does not wait for), then copies len(v) elements
// from a buffer into v.
func Read[T any](v []T, b Buf) error {
	if err := cu.Synchronize(); err != nil {
		return fmt.Errorf("cuda: %v", err)
	}
	var zero T
	n := int64(len(v)) * int64(unsafe.Sizeof(zero))
	if n > b.Bytes {
		return fmt.Errorf("cuda: read of %d bytes from a buffer of %d", n, b.Bytes)
	}
	if n == 0 {
		return nil
	}
	return cu.MemcpyDtoH(unsafe.Pointer(&v[0]), b.Ptr, n)
}

// launch runs kernel name with the given geometry; args are device pointers,
// Bufs, ints or float32s. It must run on the device's thread.
func (d *Device) launch(name string, grid [3]int, block, shmem int, args ...any) error {
	fn, ok := d.fns[name]
	if !ok {
		return fmt.Errorf("cuda: no kernel %q", name)
	}
	vals := make([]uint64, len(args))
	ptrs := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case cu.DevicePtr:
			vals[i] = uint64(v)
		case Buf:
			vals[i] = uint64(v.Ptr)
		case int:
			vals[i] = uint64(int64(v))
		case int64:
			vals[i] = uint64(v)
		case float32:
			vals[i] = uint64(math.Float32bits(v)) // the driver reads the low 4 bytes
		default:
			return fmt.Errorf("cuda: kernel %s: argument %d has unsupported type %T", name, i, a)
		}
		ptrs[i] = unsafe.Pointer(&vals[i])
	}
	if grid[1] == 0 {
		grid[1] = 1
	}
	if grid[2] == 0 {
		grid[2] = 1
	}
	if err := fn.Launch(grid[0], grid[1], grid[2], block, 1, 1, shmem, d.stream, ptrs); err != nil {
		return fmt.Errorf("cuda: launching %s (grid %v, block %d): %v", name, grid, block, err)
	}
	if d.Debug {
		if err := d.stream.Synchronize(); err != nil {
			return fmt.Errorf("cuda: kernel %s failed: %v", name, err)
		}
	}
	return nil
}

// Sync waits for the stream.
func (d *Device) Sync() error {
	if err := d.stream.Synchronize(); err != nil {
		return fmt.Errorf("cuda: %v", err)
	}
	return nil
}

// Poison fills a buffer with NaN (0x7fc00000), so unwritten outputs show.
func (d *Device) Poison(b Buf) error {
	return cu.MemsetD32(b.Ptr, 0x7fc00000, b.Bytes/4)
}
