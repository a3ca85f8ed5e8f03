package lora

import "github.com/qbench/qbench/tensor"

// Module is one adapted projection.
type Module struct {
	Rank    int
	In, Out int
	A       []float32 // [Rank, In]
	B       []float32 // [Out, Rank]
	Scale   float32
}

// Apply adds Scale·B(A·x) to y. tmp must hold Rank floats.
func (m *Module) Apply(y, x, tmp []float32) {
	for j := 0; j < m.Rank; j++ {
		tmp[j] = tensor.Dot(m.A[j*m.In:(j+1)*m.In], x)
	}
	for o := 0; o < m.Out; o++ {
		y[o] += m.Scale * tensor.Dot(m.B[o*m.Rank:(o+1)*m.Rank], tmp)
	}
}
