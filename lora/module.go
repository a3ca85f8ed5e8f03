package lora

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
		a := m.A[j*m.In : (j+1)*m.In]
		var s float32
		for i, v := range a {
			s += v * x[i]
		}
		tmp[j] = s
	}
	for o := 0; o < m.Out; o++ {
		b := m.B[o*m.Rank : (o+1)*m.Rank]
		var s float32
		for j, v := range b {
			s += v * tmp[j]
		}
		y[o] += m.Scale * s
	}
}
