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
		tmp[j] = dot4(m.A[j*m.In:(j+1)*m.In], x)
	}
	for o := 0; o < m.Out; o++ {
		y[o] += m.Scale * dot4(m.B[o*m.Rank:(o+1)*m.Rank], tmp)
	}
}

// dot4 is Σ a[i]·b[i] with four partial sums (a shorter dependency chain
// than one running sum: the A·x step is a K-long dot a rank).
func dot4(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}
