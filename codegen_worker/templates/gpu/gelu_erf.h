// GELU(x) = x * Phi(x), Phi(x) = 0.5 * erfc(-x / sqrt(2)), with erfc from
// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7 on erf): one reciprocal, one
// exp2 and a degree-5 polynomial, about 16 instructions against erff's 25.
// It exists for the CUTLASS GEMM epilogues: there the erf runs on the math
// warps between tiles, and at K = 768 (BERT's FFN-up) those instructions are a
// third of the kernel. On the device both MUFU ops are the approximate ones;
// their relative errors (~2^-22) stay far below fp16/bf16 rounding.
#ifndef KILN_GELU_ERF_H
#define KILN_GELU_ERF_H
#if defined(__CUDA_ARCH__)
#define KILN_GELU_RCP(d) __fdividef(1.0f, (d))
// ex2.approx.ftz: exp(-z^2) below 2^-126 only comes with |x| > 13, where q is 0 to float anyway.
static __device__ __forceinline__ float kiln_gelu_exp2(float w) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(w));
  return r;
}
#define KILN_GELU_EXP2(w) kiln_gelu_exp2(w)
#else
#include <cmath>
#define KILN_GELU_RCP(d) (1.0f / (d))
#define KILN_GELU_EXP2(w) std::exp2(w)
#endif
#ifdef __CUDACC__
#define KILN_GELU_FN __host__ __device__ __forceinline__
#else
#define KILN_GELU_FN inline
#endif
KILN_GELU_FN float kiln_gelu_erf(float x) {
  // z = |x| / sqrt(2); t = 1 / (1 + p z); q = 0.5 * erfc(z) = t * poly(t) * exp(-z^2), the 0.5 folded into poly.
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = KILN_GELU_RCP(fmaf(0.3275911f, z, 1.0f));
  float poly = fmaf(t, 0.5307027145f, -0.7265760135f);
  poly = fmaf(t, poly, 0.7107068705f);
  poly = fmaf(t, poly, -0.1422483680f);
  poly = fmaf(t, poly, 0.1274147960f);
  // exp(-z^2) = exp2(-x^2 * log2(e) / 2)
  const float q = poly * t * KILN_GELU_EXP2(x * (x * -0.72134752044448170f));
  return x * (x >= 0.0f ? 1.0f - q : q);
}
#undef KILN_GELU_FN
#undef KILN_GELU_RCP
#undef KILN_GELU_EXP2
#endif
