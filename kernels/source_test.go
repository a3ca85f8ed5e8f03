package kernels

import "testing"

// TestPTXUpToDate fails when a .cu (or a .cuh header) changed without
// `go generate ./kernels`; it needs no GPU and runs in CI.
func TestPTXUpToDate(t *testing.T) {
	if len(modules) == 0 {
		t.Fatal("no embedded modules")
	}
	for _, m := range modules {
		h, err := SourceHash(m.name + ".cu")
		if err != nil {
			t.Fatal(err)
		}
		if h != m.source {
			t.Errorf("%s.cu changed since its PTX was generated: run go generate ./kernels", m.name)
		}
		if len(m.ptx) == 0 || len(m.ptx90) == 0 {
			t.Errorf("%s: empty PTX", m.name)
		}
		if c := ptxCompiler(m.ptx90); c == "" {
			t.Errorf("%s: its compute_90 PTX names no nvcc release", m.name)
		}
		if m.ptx90a != "" && ptxCompiler(m.ptx90a) == "" {
			t.Errorf("%s.sm90a.ptx names no nvcc release", m.name)
		}
		if m.ptx90a != "" && (!m.sm90a || ptx90aSource(m.ptx90a) != m.source) {
			t.Errorf("%s.sm90a.ptx was built from other sources: run go generate ./kernels (it drops it) and kernels/ptx90a.sh on a GPU machine", m.name)
		}
	}
}
