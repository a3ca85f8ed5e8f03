//go:build !cuda

package kernels

import "testing"

// TestGPU stands for the GPU tests, which need -tags cuda and a device.
func TestGPU(t *testing.T) {
	t.Skip("GPU tests need a CUDA device and -tags cuda: build with go test -tags cuda -c ./kernels and run on the GPU machine (kernels/gpu_check.sh)")
}
