//go:build cuda

package kernels

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static CUresult qb_shmem_optin(int* v, int ordinal) {
	return cuDeviceGetAttribute(v, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, (CUdevice)ordinal);
}
static CUresult qb_set_max_shmem(void* fn, int bytes) {
	return cuFuncSetAttribute((CUfunction)fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
}
static CUresult qb_allow_wide_clusters(void* fn) {
	return cuFuncSetAttribute((CUfunction)fn, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1);
}
static CUresult qb_launch_kernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned shmem,
                                 CUstream s, void** params, int pdl, unsigned cx) {
	if (!pdl && cx == 0) return cuLaunchKernel((CUfunction)fn, gx, gy, gz, bx, 1, 1, shmem, s, params, NULL);
	CUlaunchAttribute attr[2];
	unsigned n = 0;
	if (pdl) {
		attr[n].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
		attr[n].value.programmaticStreamSerializationAllowed = 1;
		n++;
	}
	if (cx) { // thread-block clusters of cx blocks along x
		attr[n].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
		attr[n].value.clusterDim.x = cx; attr[n].value.clusterDim.y = 1; attr[n].value.clusterDim.z = 1;
		n++;
	}
	CUlaunchConfig cfg = {0};
	cfg.gridDimX = gx; cfg.gridDimY = gy; cfg.gridDimZ = gz;
	cfg.blockDimX = bx; cfg.blockDimY = 1; cfg.blockDimZ = 1;
	cfg.sharedMemBytes = shmem; cfg.hStream = s;
	cfg.attrs = attr; cfg.numAttrs = n;
	return cuLaunchKernelEx(&cfg, (CUfunction)fn, params, NULL);
}
static CUresult qb_compute_capability(int* major, int* minor, int ordinal) {
	CUresult r = cuDeviceGetAttribute(major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, (CUdevice)ordinal);
	return r != CUDA_SUCCESS ? r : cuDeviceGetAttribute(minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, (CUdevice)ordinal);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// The driver calls gorgonia.org/cu does not wrap: kernel launches with
// arguments of any size (gorgonia's Launch copies 8 bytes an argument; the
// matrix kernels take their descriptor by value) and as programmatic
// dependents, the compute capability, the opt-in shared-memory limit and a
// kernel's dynamic shared-memory attribute. CUDA graphs: graph.go.

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// computeCapability is device ordinal's compute capability (9, 0 for Hopper).
func computeCapability(ordinal int) (major, minor int, err error) {
	var a, b C.int
	if r := C.qb_compute_capability(&a, &b, C.int(ordinal)); r != C.CUDA_SUCCESS {
		return 0, 0, fmt.Errorf("cuda: compute capability: error %d", int(r))
	}
	return int(a), int(b), nil
}

// maxShmemOptin is the shared memory one block may have on device ordinal
// once a kernel opts in (227 KB on Hopper).
func maxShmemOptin(ordinal int) (int, error) {
	var v C.int
	if r := C.qb_shmem_optin(&v, C.int(ordinal)); r != C.CUDA_SUCCESS {
		return 0, fmt.Errorf("cuda: shared memory limit: error %d", int(r))
	}
	return int(v), nil
}

// fnHandle is fn's CUfunction: cu.Function is a struct holding only that
// handle, read through unsafe (gorgonia.org/cu does not export it).
func fnHandle(fn cu.Function) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&fn)) }

// argBuf is C memory for one launch's arguments: the values, each at an
// 8-byte aligned offset, then the array of pointers to them. The driver
// copies them at the launch (and at capture), so one buffer serves all.
type argBuf struct {
	mem  unsafe.Pointer
	size int
}

const argBufSize = 16 << 10

func newArgBuf() argBuf { return argBuf{C.malloc(argBufSize), argBufSize} }

func (a argBuf) free() { C.free(a.mem) }

// launchRaw launches fn on the stream with its arguments given as bytes;
// with pdl, as a programmatic dependent launch (see pdl_wait in
// common.cuh), which stream capture keeps as a programmatic graph edge;
// with clusterX > 0, in thread-block clusters of clusterX blocks along x.
func (d *Device) launchRaw(fn cu.Function, grid [3]int, block, shmem int, pdl bool, clusterX int, args [][]byte) error {
	off := 0
	for _, a := range args {
		off += (len(a) + 7) &^ 7
	}
	ptrs := off
	if ptrs+8*len(args) > d.args.size {
		return fmt.Errorf("%d bytes of arguments, the launch buffer holds %d", ptrs+8*len(args), d.args.size)
	}
	off = 0
	for i, a := range args {
		dst := unsafe.Add(d.args.mem, off)
		copy(unsafe.Slice((*byte)(dst), len(a)), a)
		*(*unsafe.Pointer)(unsafe.Add(d.args.mem, ptrs+8*i)) = dst
		off += (len(a) + 7) &^ 7
	}
	r := C.qb_launch_kernel(fnHandle(fn), C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]), C.uint(block), C.uint(shmem),
		d.rawStream(), (*unsafe.Pointer)(unsafe.Add(d.args.mem, ptrs)), C.int(boolInt(pdl)), C.uint(clusterX))
	if r != C.CUDA_SUCCESS {
		return fmt.Errorf("error %d", int(r))
	}
	return nil
}

// allowWideClusters lets fn's launches take clusters of more than 8 blocks
// (up to 16 on Hopper).
func allowWideClusters(fn cu.Function) error {
	if r := C.qb_allow_wide_clusters(fnHandle(fn)); r != C.CUDA_SUCCESS {
		return fmt.Errorf("cuFuncSetAttribute(non-portable cluster size): error %d", int(r))
	}
	return nil
}

// setMaxShmem lets fn's launches ask for up to bytes of dynamic shared memory.
func setMaxShmem(fn cu.Function, bytes int) error {
	if r := C.qb_set_max_shmem(fnHandle(fn), C.int(bytes)); r != C.CUDA_SUCCESS {
		return fmt.Errorf("cuFuncSetAttribute(max dynamic shared memory %d): error %d", bytes, int(r))
	}
	return nil
}
