//go:build cuda

package kernels

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/qbench/qbench/tensor"
)

// Quantizer quantises bf16 weights to NF4 on the GPU at load (nf4_quantize):
// the codes and each block's absmax come from the device, the double
// quantisation of the absmax (small, and torch's mean emulated) is done on
// the host by tensor.NewNF4; the result is bit-for-bit tensor.QuantizeNF4's.
// Safe for concurrent use: calls take turns on the device.
type Quantizer struct {
	d                 *Device
	mu                sync.Mutex
	w, packed, absmax Buf // scratch, grown to the largest matrix
	bad               Buf
	Bytes             int64 // 16-bit bytes quantised so far
}

// NewQuantizer returns a quantiser on d; Close frees its scratch buffers.
func NewQuantizer(d *Device) *Quantizer { return &Quantizer{d: d} }

// QuantizeBF16 quantises a row-major bf16 matrix (little-endian bytes, as a
// safetensors file holds it) of the given shape, blocksize 64, with double
// quantisation of the absmax when double.
func (q *Quantizer) QuantizeBF16(w []byte, shape []int, double bool) (*tensor.NF4, error) {
	n := tensor.NumElements(shape)
	if len(w) != 2*n || n%2 != 0 {
		return nil, fmt.Errorf("nf4: %d bytes for bf16 shape %v (need an even count of values)", len(w), shape)
	}
	packed := make([]byte, n/2)
	absmax := make([]float32, (n+tensor.NF4BlockSize-1)/tensor.NF4BlockSize)
	bad := []uint64{uint64(n)}
	q.mu.Lock()
	defer q.mu.Unlock()
	err := q.d.Do(func() error {
		for _, b := range []struct {
			buf   *Buf
			bytes int64
			what  string
		}{{&q.w, int64(len(w)), "bf16 weights to quantise"}, {&q.packed, int64(len(packed)), "NF4 codes"},
			{&q.absmax, 4 * int64(len(absmax)), "NF4 absmax"}, {&q.bad, 8, "quantiser flag"}} {
			if b.buf.Bytes < b.bytes {
				q.d.Free(b.buf)
				var err error
				if *b.buf, err = q.d.Alloc(b.bytes, b.what); err != nil {
					return err
				}
			}
		}
		if err := Write(q.w, w); err != nil {
			return err
		}
		if err := Write(q.bad, bad); err != nil {
			return err
		}
		if err := q.d.run(quantizeCall(q.packed, q.absmax, q.bad, q.w, n)); err != nil {
			return err
		}
		if err := Read(packed, q.packed); err != nil {
			return err
		}
		if err := Read(absmax, q.absmax); err != nil {
			return err
		}
		return Read(bad, q.bad)
	})
	if err != nil {
		return nil, err
	}
	if i := int(bad[0]); i < n {
		v := *(*uint16)(unsafe.Pointer(&w[2*i]))
		return nil, fmt.Errorf("nf4: element %d is %v: a non-finite weight cannot be quantised", i, tensor.BF16ToF32(v))
	}
	q.Bytes += int64(len(w))
	return tensor.NewNF4(shape, tensor.BF16, packed, absmax, double), nil
}

// Close frees the scratch buffers.
func (q *Quantizer) Close() {
	q.d.Do(func() error {
		for _, b := range []*Buf{&q.w, &q.packed, &q.absmax, &q.bad} {
			q.d.Free(b)
		}
		return nil
	})
}
