//go:build cuda

package kernels

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static CUresult qb_begin(CUstream s) { return cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL); }
static CUresult qb_end(CUstream s, CUgraph* g) { return cuStreamEndCapture(s, g); }
static CUresult qb_instantiate(CUgraphExec* e, CUgraph g) { return cuGraphInstantiateWithFlags(e, g, 0); }
static CUresult qb_launch(CUgraphExec e, CUstream s) { return cuGraphLaunch(e, s); }
static void qb_destroy(CUgraphExec e, CUgraph g) { cuGraphExecDestroy(e); cuGraphDestroy(g); }
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// CUDA graphs through the driver (gorgonia.org/cu has no stream capture or
// graph launch): one decode step is one graph launch. An engine keeps its
// captured steps, keyed by graphKey, and destroys them on Close.

// Graph is a captured and instantiated CUDA graph.
type Graph struct {
	g    C.CUgraph
	exec C.CUgraphExec
}

// graphKey is what a captured decode step depends on besides the engine's
// buffers: the rows of the pass, the attention splits and what follows the
// logits.
type graphKey struct {
	rows, splits int
	tail         tail
}

func (d *Device) rawStream() C.CUstream { return C.CUstream(unsafe.Pointer(d.stream.C())) }

// Capture records the launches fn makes on the device's stream into a graph.
// It must run on the device's thread.
func (d *Device) Capture(fn func() error) (*Graph, error) {
	s := d.rawStream()
	if r := C.qb_begin(s); r != C.CUDA_SUCCESS {
		return nil, fmt.Errorf("cuda: cuStreamBeginCapture: error %d", int(r))
	}
	debug := d.Debug
	d.Debug = false // no synchronisation inside a capture
	ferr := fn()
	d.Debug = debug
	var g Graph
	if r := C.qb_end(s, &g.g); r != C.CUDA_SUCCESS {
		return nil, fmt.Errorf("cuda: cuStreamEndCapture: error %d", int(r))
	}
	if ferr != nil {
		C.cuGraphDestroy(g.g)
		return nil, ferr
	}
	if r := C.qb_instantiate(&g.exec, g.g); r != C.CUDA_SUCCESS {
		C.cuGraphDestroy(g.g)
		return nil, fmt.Errorf("cuda: cuGraphInstantiateWithFlags: error %d", int(r))
	}
	return &g, nil
}

// Launch replays the graph on the device's stream (on its thread).
func (d *Device) Launch(g *Graph) error {
	if r := C.qb_launch(g.exec, d.rawStream()); r != C.CUDA_SUCCESS {
		return fmt.Errorf("cuda: cuGraphLaunch: error %d", int(r))
	}
	if d.Debug {
		return d.Sync()
	}
	return nil
}

func (g *Graph) destroy() { C.qb_destroy(g.exec, g.g) }
