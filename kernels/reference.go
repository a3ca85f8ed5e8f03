package kernels

import (
	"math"

	"github.com/qbench/qbench/qwen"
)

// CPU references of the kernels, written as plain loops. They are the
// oracles of the GPU tests; the model-level reference is qwen's CPU Runner.

// RefLinear is gemv's math for one matrix: for each batch row m,
// y[m, n] = Σ_k W[n, k]·x[m, k] + b[n] + scale_a·Σ_j B_a[n, j]·(Σ_k A_a[j, k]·x[m, k]),
// with a = adapters[m] (no LoRA term when a < 0 or the adapter skips l).
// W is l.Weights(): the weight widened to fp32 (for NF4, bitsandbytes' dequantisation).
func RefLinear(l *qwen.Linear, x []float32, adapters []int) []float32 {
	M := len(adapters)
	W := l.Weights()
	y := make([]float32, M*l.Out)
	for m := 0; m < M; m++ {
		xm := x[m*l.In : (m+1)*l.In]
		for n := 0; n < l.Out; n++ {
			var s float64
			for k := 0; k < l.In; k++ {
				s += float64(W[n*l.In+k]) * float64(xm[k])
			}
			if l.Bias != nil {
				s += float64(l.Bias[n])
			}
			if a := adapters[m]; a >= 0 && a < len(l.LoRA) && l.LoRA[a] != nil {
				mod := l.LoRA[a]
				var d float64
				for j := 0; j < mod.Rank; j++ {
					var t float64
					for k := 0; k < l.In; k++ {
						t += float64(mod.A[j*l.In+k]) * float64(xm[k])
					}
					d += float64(mod.B[n*mod.Rank+j]) * t
				}
				s += float64(mod.Scale) * d
			}
			y[m*l.Out+n] = float32(s)
		}
	}
	return y
}

// RefRoPE rotates each head of v [M, heads·hd] in place at positions pos[m]:
// (a, b) = (v[j], v[j+hd/2]) → (a·cos − b·sin, b·cos + a·sin), angle pos·θ^(−2j/hd).
func RefRoPE(v []float32, pos []int, hd int, theta float64) {
	half := hd / 2
	width := len(v) / len(pos)
	for m, p := range pos {
		for h := 0; h < width/hd; h++ {
			for j := 0; j < half; j++ {
				ang := float64(p) * math.Pow(theta, -float64(2*j)/float64(hd))
				c, s := math.Cos(ang), math.Sin(ang)
				i := m*width + h*hd + j
				a, b := float64(v[i]), float64(v[i+half])
				v[i], v[i+half] = float32(a*c-b*s), float32(b*c+a*s)
			}
		}
	}
}

// RefAttention is causal grouped-query attention of one row: query q
// [heads·hd] at position pos attends to K, V [0..pos][kvHeads·hd]:
// out[h] = Σ_t softmax_t(q_h·K_t,g/√hd)·V_t,g with g = h/(heads/kvHeads).
func RefAttention(q, K, V []float32, pos, heads, kvHeads, hd int) []float32 {
	out := make([]float32, heads*hd)
	kvDim := kvHeads * hd
	for h := 0; h < heads; h++ {
		g := h / (heads / kvHeads)
		sc := make([]float64, pos+1)
		mx := math.Inf(-1)
		for t := 0; t <= pos; t++ {
			var d float64
			for i := 0; i < hd; i++ {
				d += float64(q[h*hd+i]) * float64(K[t*kvDim+g*hd+i])
			}
			sc[t] = d / math.Sqrt(float64(hd))
			mx = math.Max(mx, sc[t])
		}
		var sum float64
		for t := range sc {
			sc[t] = math.Exp(sc[t] - mx)
			sum += sc[t]
		}
		for i := 0; i < hd; i++ {
			var acc float64
			for t := range sc {
				acc += sc[t] * float64(V[t*kvDim+g*hd+i])
			}
			out[h*hd+i] = float32(acc / sum)
		}
	}
	return out
}

// RefRMSNorm is out[i] = x[i] / √(mean(x²) + eps) · w[i] for one row.
func RefRMSNorm(x, w []float32, eps float32) []float32 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := 1 / math.Sqrt(ss/float64(len(x))+float64(eps))
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(float64(v) * inv * float64(w[i]))
	}
	return out
}
