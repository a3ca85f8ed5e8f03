//go:build cuda

package kernels

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"github.com/qbench/qbench/qwen"
	"gorgonia.org/cu"
)

// Device is one GPU: a context made current on a locked OS thread, the
// embedded PTX modules loaded once, their functions cached, one stream.
// Every CUDA call runs on that thread through Do.
type Device struct {
	Name  string
	SMs   int
	Debug bool // synchronise after every launch and name the kernel that failed
	// PDL: the device can launch a kernel as a programmatic dependent of
	// the previous one (Hopper and later; QBENCH_NO_PDL=1 turns it off).
	// Engines do it for decode steps (see pass.pdl).
	PDL bool
	// WGMMA: the device runs the sm_90a modules (Hopper's warpgroup MMAs:
	// compute capability 9.0; QBENCH_NO_WGMMA=1 turns them off).
	WGMMA bool
	// SM90aBuild names the nvcc that built the sm_90a modules loaded (where
	// WGMMA): the embedded newer build, or nvcc 11.8's where the driver
	// refused it or there is none (−7 % prefill, kernels/PERF.md).
	SM90aBuild string
	work       chan func()
	ctx        cu.CUContext
	stream     cu.Stream
	fns        map[string]cu.Function
	args       argBuf         // C memory for launch arguments
	occ        map[occKey]int // resident blocks per multiprocessor, by kernel and launch shape
	// maxShmem is the dynamic shared memory one block may have (the device's
	// opt-in limit less what the kernels declare statically).
	maxShmem int
	// wideBatchPairs: the fewest pairs a matrix needs for its batches of
	// more than wideBatchMin rows to run prefill_wgmma (64 an SM: its blocks
	// fill the card; tests lower it).
	wideBatchPairs int
	// denseWGMin: dense bf16 batches of more rows run dense_wgmma (where
	// WGMMA), fewer mmas_bf16 (tests raise it).
	denseWGMin int
	// wgSplitMin: batches of more rows, up to splitRows, run the NF4
	// matrices prefill_wgmma does not take on wgmma_split_64 (wideBatchMin;
	// QBENCH_WGSPLIT_MIN=n moves it, tests lower it).
	wgSplitMin int
	// residNorm: decode batches finish o and down in the launch of the
	// RMSNorm after them (resid_norm; QBENCH_NO_RESID_NORM=1 off).
	residNorm bool
	// residCluster: where resid_norm would lose (adapters, up to
	// wideBatchMin rows), resid_norm_c with clusters of that many blocks a
	// row (QBENCH_RESID_CLUSTER, default 4 — 3B, H200, batch 20: 3,874 →
	// 4,007 tok/s; 2 and 8 slower —; 0 off; compute capability 9.0 and
	// later); residClusterAll (QBENCH_RESID_CLUSTER_ALL=1; tests) takes it
	// wherever resid_norm would run too (slower without adapters).
	residCluster    int
	residClusterAll bool
	// combineCluster: decode steps' attention combine with the o shrink
	// takes a row's heads as one cluster (attn_combine_lora_c), and short
	// decode steps' attention takes them as one (attn_decode_c, attnDecode);
	// compute capability 9.0, clusters of up to 16 blocks;
	// QBENCH_NO_COMBINE_CLUSTER=1 off.
	combineCluster bool
	// splitWS is mmas_nf4's split-K workspace (the partial sums of a launch,
	// which mmas_finish reads), and shrink_split's (shrink_sum reads them).
	// The device's engines share it: their launches run in order on the one
	// stream, each reader right after its writer.
	splitWS Buf
	// planes: x split into two bf16 planes for prefill_wgmma (reservePlanes).
	planes Buf
	// lutWS, lutCount: where nf4_lut's two blocks of a tile meet (reserveLUT).
	lutWS, lutCount Buf
	// splitSteps, when 1, 2 or 4, forces the steps of K an mmas_nf4 block takes
	// (the launcher's choice otherwise); tests set it, QBENCH_SPLIT_STEPS too.
	splitSteps int
}

// ErrNoDevice is returned by Open when no CUDA device is usable.
var ErrNoDevice = errors.New("no CUDA device")

// Open starts the device's thread, creates a context on GPU ordinal and
// loads every embedded module.
func Open(ordinal int) (*Device, error) {
	d := &Device{work: make(chan func()), fns: map[string]cu.Function{}, occ: map[occKey]int{},
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
	d.args = newArgBuf()
	optin, err := maxShmemOptin(ordinal)
	if err != nil {
		return err
	}
	d.maxShmem = optin - 4096 // the kernels' static shared memory stays under 4 KB
	major, minor, err := computeCapability(ordinal)
	if err != nil {
		return err
	}
	d.PDL = major >= 9 && !envSet("QBENCH_NO_PDL")
	// Modules built for sm_90a (wgmma) run on compute capability 9.0 alone;
	// elsewhere their compute_80 build (empty kernels) loads, never launched.
	d.WGMMA = major == 9 && minor == 0 && !envSet("QBENCH_NO_WGMMA")
	d.wideBatchPairs = 64 * d.SMs
	d.denseWGMin = 16
	d.wgSplitMin = wideBatchMin
	d.residNorm = !envSet("QBENCH_NO_RESID_NORM")
	d.residCluster, d.residClusterAll = 4, envSet("QBENCH_RESID_CLUSTER_ALL")
	if n, err := strconv.Atoi(os.Getenv("QBENCH_RESID_CLUSTER")); err == nil && n >= 0 && n <= 8 {
		d.residCluster = n
	}
	d.combineCluster = major >= 9 && !envSet("QBENCH_NO_COMBINE_CLUSTER")
	if major < 9 {
		d.residCluster = 0
	}
	if n, err := strconv.Atoi(os.Getenv("QBENCH_WGSPLIT_MIN")); err == nil {
		d.wgSplitMin = n
	}
	if n := envInt("QBENCH_SPLIT_STEPS", 0); n == 1 || n == 2 || n == 4 { // experiments: mmas_nf4's S for every matrix
		d.splitSteps = n
	}
	for _, m := range modules {
		// The PTX to load: compute_80's, or compute_90's on Hopper (sm_90a
		// modules: where d.WGMMA) — there a newer nvcc's build first if there
		// is one (a driver too old for its PTX ISA takes the other).
		ptxs, arch := []string{m.ptx}, "80"
		if major >= 9 && (!m.sm90a || d.WGMMA) {
			ptxs, arch = []string{m.ptx90}, "90"
			if m.ptx90a != "" {
				ptxs = []string{m.ptx90a, m.ptx90}
			}
		}
		if dir := os.Getenv("QBENCH_PTX_DIR"); dir != "" { // kernel work: a module's PTX from elsewhere (a newer nvcc)
			f := filepath.Join(dir, m.name+".sm"+arch+".ptx")
			if b, err := os.ReadFile(f); err == nil {
				fmt.Fprintf(os.Stderr, "qbench: module %s from %s (QBENCH_PTX_DIR)\n", m.name, f)
				ptxs = []string{string(b)}
			}
		}
		var mod cu.Module
		for _, ptx := range ptxs {
			if mod, err = cu.LoadData(ptx); err == nil {
				if m.sm90a && arch == "90" {
					d.SM90aBuild = ptxCompiler(ptx)
				}
				break
			}
		}
		if err != nil {
			return fmt.Errorf("cuda: loading module %s: %v", m.name, err)
		}
		for _, name := range kernelNames[m.name] {
			fn, err := mod.Function(name)
			if err != nil {
				return fmt.Errorf("cuda: kernel %s in %s: %v", name, m.name, err)
			}
			d.fns[name] = fn
			if strings.HasSuffix(name, "_c") && strings.HasPrefix(name, "attn_") && d.combineCluster && allowWideClusters(fn) != nil {
				d.combineCluster = false // a driver without wide clusters: attn_combine_lora
			}
			if strings.HasPrefix(name, "nf4_lut_") || strings.HasPrefix(name, "mmas_") || strings.HasPrefix(name, "prefill_") || strings.HasPrefix(name, "dense_") || strings.HasPrefix(name, "wgmma_") || strings.HasPrefix(name, "attn_flash_") || name == "shrink_split" || name == "attn_split_kv" || name == "lora_shrink" { // x in dynamic shared memory, up to the device's limit
				if err := setMaxShmem(fn, d.maxShmem); err != nil {
					return fmt.Errorf("cuda: %s: %v", name, err)
				}
			}
			if strings.HasPrefix(name, "attn_decode") { // K and V slices at head size 128 (its static shared memory besides)
				if err := setMaxShmem(fn, 2*attnDecodeKeys*128*4); err != nil {
					return fmt.Errorf("cuda: %s: %v", name, err)
				}
			}
		}
	}
	return nil
}

// kernelNames lists the entry points of each module.
var kernelNames = map[string][]string{
	"attention":     {"attn_split", "attn_split_kv", "attn_combine", "attn_combine_lora", "attn_combine_lora_c", "attn_decode_c", "attn_decode_lora_c"},
	"attn_flash":    {"attn_flash_64", "attn_flash_128"},
	"mma":           {"mmas_bf16_1", "mmas_bf16_2", "mmas_bf16_3", "mmas_bf16_4", "mmas_bf16_8", "mmas_nf4_1", "mmas_nf4_2", "mmas_nf4_3", "mmas_nf4_4", "mmas_nf4_8", "mmas_finish"},
	"nf4_lut":       {"nf4_lut_1", "nf4_lut_2"},
	"nf4_matmul":    append(gemvNames(), "lora_shrink", "layout"),
	"rmsnorm":       {"rmsnorm", "rmsnorm_lora", "resid_norm", "resid_norm_c", "embed", "shrink_split", "shrink_sum"},
	"quantize":      {"nf4_quantize"},
	"sample":        {"argmax", "target_logprob", "cand_slice", "cand_merge"},
	"prefill":       {"prefill_nf4"},
	"prefill_wgmma": {"prefill_wgmma", "prefill_wgmma_64", "dense_wgmma", "dense_wgmma_64", "wgmma_split_64", "split_planes"},
}

func gemvNames() []string {
	var n []string
	for _, mt := range gemvMT {
		n = append(n, fmt.Sprintf("gemv_nf4_%d", mt), fmt.Sprintf("gemv_nf4r_%d", mt), fmt.Sprintf("gemv_dense_%d", mt))
	}
	return n
}

type occKey struct {
	name         string
	block, shmem int
}

// occupancy is how many blocks of kernel name fit on a multiprocessor at
// once with that block size and dynamic shared memory (cached).
func (d *Device) occupancy(name string, block, shmem int) (int, error) {
	k := occKey{name, block, shmem}
	if n, ok := d.occ[k]; ok {
		return n, nil
	}
	fn, ok := d.fns[name]
	if !ok {
		return 0, fmt.Errorf("cuda: no kernel %q", name)
	}
	n, err := fn.MaxActiveBlocksPerMultiProcessor(block, int64(shmem))
	if err != nil {
		return 0, fmt.Errorf("cuda: occupancy of %s: %v", name, err)
	}
	d.occ[k] = n
	return n, nil
}

// envSet reports whether a switch is set to 1 in the environment.
func envSet(name string) bool { return os.Getenv(name) == "1" }

// envInt reads a positive integer setting from the environment.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
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
		d.args.free()
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
		return Buf{}, fmt.Errorf("cuda: %w allocating %s: needed %d bytes, %d of %d free (%v)", qwen.ErrOutOfMemory, what, bytes, free, total, err)
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

// launch runs kernel name with the given geometry, as a programmatic
// dependent launch when pdl; args are device pointers, Bufs, ints, float32s,
// or descriptors (*gemvOp, *shrinkOp) passed by value. It must run on the
// device's thread.
func (d *Device) launch(name string, grid [3]int, block, shmem int, pdl bool, args ...any) error {
	return d.launchEx(name, grid, block, shmem, pdl, 0, args...)
}

// launchEx is launch in thread-block clusters of clusterX blocks along x
// (none: 0).
func (d *Device) launchEx(name string, grid [3]int, block, shmem int, pdl bool, clusterX int, args ...any) error {
	fn, ok := d.fns[name]
	if !ok {
		return fmt.Errorf("cuda: no kernel %q", name)
	}
	vals := make([][]byte, len(args))
	for i, a := range args {
		var v uint64
		switch a := a.(type) {
		case cu.DevicePtr:
			v = uint64(a)
		case Buf:
			v = uint64(a.Ptr)
		case int:
			v = uint64(int64(a))
		case int64:
			v = uint64(a)
		case float32:
			v = uint64(math.Float32bits(a)) // the kernel reads the low 4 bytes
		case *gemvOp:
			vals[i] = unsafe.Slice((*byte)(unsafe.Pointer(a)), unsafe.Sizeof(*a))
			continue
		case *shrinkOp:
			vals[i] = unsafe.Slice((*byte)(unsafe.Pointer(a)), unsafe.Sizeof(*a))
			continue
		default:
			return fmt.Errorf("cuda: kernel %s: argument %d has unsupported type %T", name, i, a)
		}
		vals[i] = binary.LittleEndian.AppendUint64(nil, v)
	}
	for k := 1; k < 3; k++ {
		if grid[k] == 0 {
			grid[k] = 1
		}
	}
	if err := d.launchRaw(fn, grid, block, shmem, pdl, clusterX, vals); err != nil {
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
