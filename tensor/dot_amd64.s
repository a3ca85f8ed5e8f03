#include "textflag.h"

// SUM1 leaves the sum of Y0's eight lanes in X0 (halves added pairwise) and
// clears the upper halves; SUM4 does it for Y0 + Y1 + Y2 + Y3, added as
// (Y0 + Y1) + (Y2 + Y3).
#define SUM1 \
	VEXTRACTF128 $1, Y0, X1; \
	VADDPS       X1, X0, X0; \
	VHADDPS      X0, X0, X0; \
	VHADDPS      X0, X0, X0; \
	VZEROUPPER

#define SUM4 \
	VADDPS Y1, Y0, Y0; \
	VADDPS Y3, Y2, Y2; \
	VADDPS Y2, Y0, Y0; \
	SUM1

// func dotFMA(a, b *float32, n int) float32
// Σ a[i]·b[i] for n a positive multiple of 32: four 8-lane accumulators
// (element i goes to accumulator (i/8)%4, lane i%8), fused multiply-adds,
// then the accumulators added pairwise and the lanes by halves.
TEXT ·dotFMA(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3

loop:
	VMOVUPS 0(SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VFMADD231PS 0(DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	SUBQ $32, CX
	JNZ  loop

	SUM4
	MOVSS X0, ret+24(FP)
	RET

// func dotBF16FMA(a *uint16, b *float32, n int) float32
// dotFMA over bf16 weights widened exactly (zero-extend, shift left 16):
// the same accumulators in the same order, so bit for bit dotFMA of the
// widened values.
TEXT ·dotBF16FMA(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3

loopb:
	VPMOVZXWD   0(SI), Y4
	VPMOVZXWD   16(SI), Y5
	VPMOVZXWD   32(SI), Y6
	VPMOVZXWD   48(SI), Y7
	VPSLLD      $16, Y4, Y4
	VPSLLD      $16, Y5, Y5
	VPSLLD      $16, Y6, Y6
	VPSLLD      $16, Y7, Y7
	VFMADD231PS 0(DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ        $64, SI
	ADDQ        $128, DI
	SUBQ        $32, CX
	JNZ         loopb

	SUM4
	MOVSS X0, ret+24(FP)
	RET

DATA nf4fifteen<>+0(SB)/4, $15
GLOBL nf4fifteen<>(SB), RODATA|NOPTR, $4
DATA nf4perm<>+0(SB)/4, $0
DATA nf4perm<>+4(SB)/4, $1
DATA nf4perm<>+8(SB)/4, $4
DATA nf4perm<>+12(SB)/4, $5
DATA nf4perm<>+16(SB)/4, $2
DATA nf4perm<>+20(SB)/4, $3
DATA nf4perm<>+24(SB)/4, $6
DATA nf4perm<>+28(SB)/4, $7
GLOBL nf4perm<>(SB), RODATA|NOPTR, $32

// func dotNF4FMA(t *[16]float32, p *byte, x *float32, n int) float32
// Σ t[code_k]·x[k] over n codes (a positive multiple of 16) packed two a
// byte, element 2i in the high nibble: each step's 8 bytes widened to 8
// dwords, the high nibbles (even elements) and low (odd) looked up in the
// 16-entry table by two vpermps (t[0:8], t[8:16]) blended on the code's
// top bit; x's even and odd elements split by vshufps, whose lane order
// (0, 2, 8, 10 | 4, 6, 12, 14) the codes are permuted to first.
TEXT ·dotNF4FMA(SB), NOSPLIT, $0-36
	MOVQ         t+0(FP), AX
	MOVQ         p+8(FP), SI
	MOVQ         x+16(FP), DI
	MOVQ         n+24(FP), CX
	VMOVUPS      0(AX), Y12
	VMOVUPS      32(AX), Y13
	VPBROADCASTD nf4fifteen<>(SB), Y15
	VMOVDQU      nf4perm<>(SB), Y14
	VXORPS       Y0, Y0, Y0
	VXORPS       Y1, Y1, Y1

loopn:
	VPMOVZXBD   (SI), Y4
	VPSRLD      $4, Y4, Y5
	VPAND       Y15, Y4, Y4
	VPERMD      Y5, Y14, Y5
	VPERMD      Y4, Y14, Y4
	VPERMPS     Y12, Y5, Y6
	VPERMPS     Y13, Y5, Y7
	VPSLLD      $28, Y5, Y5
	VBLENDVPS   Y5, Y7, Y6, Y6
	VPERMPS     Y12, Y4, Y8
	VPERMPS     Y13, Y4, Y9
	VPSLLD      $28, Y4, Y4
	VBLENDVPS   Y4, Y9, Y8, Y8
	VMOVUPS     0(DI), Y10
	VMOVUPS     32(DI), Y11
	VSHUFPS     $0x88, Y11, Y10, Y2
	VSHUFPS     $0xDD, Y11, Y10, Y3
	VFMADD231PS Y2, Y6, Y0
	VFMADD231PS Y3, Y8, Y1
	ADDQ        $8, SI
	ADDQ        $64, DI
	SUBQ        $16, CX
	JNZ         loopn

	VADDPS Y1, Y0, Y0
	SUM1
	MOVSS  X0, ret+32(FP)
	RET
