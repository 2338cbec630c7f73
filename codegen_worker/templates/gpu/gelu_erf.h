// GELU(x) = x * Phi(x). With a = |x| and Q(a) = 0.5 * erfc(a / sqrt(2)) (the upper
// tail), Phi(x) is 1 - Q for x >= 0 and Q for x < 0, and Q(a) = exp2(p(a)) with p a
// degree-7 polynomial fitted minimax to log2 Q on [0, 5.6] (Kiln's own fit, see
// tests/codegen/test_gelu_erf.py for the bounds it is held to): relative error of Q
// about 3e-6, so GELU's relative error is under 5e-6 wherever fp16 has normal numbers,
// where Abramowitz & Stegun 7.1.26 (the erfc Kiln used before) reached 6e-4 in the
// tail. Past 5.6, p keeps falling (its lead is negative), so Q goes to 0.
// It exists for the CUTLASS GEMM epilogues: there the GELU runs on the math warps
// between tiles, and at K = 768 (BERT's FFN-up) those instructions are a third of
// the kernel. Seven FMAs and one exp2 (MUFU) an element, where A&S took a
// reciprocal and an exp2 (two MUFU) and seven more FP instructions (SASS: 18 against 11).
#ifndef KILN_GELU_ERF_H
#define KILN_GELU_ERF_H
#if defined(__CUDA_ARCH__)
// ex2.approx.ftz (relative error ~2^-22): exp2 below 2^-126 only comes with |x| > 13,
// where Q is 0 to float anyway.
static __device__ __forceinline__ float kiln_gelu_exp2(float w) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(w));
  return r;
}
#define KILN_GELU_EXP2(w) kiln_gelu_exp2(w)
#else
#include <cmath>
#define KILN_GELU_EXP2(w) std::exp2(w)
#endif
#ifdef __CUDACC__
#define KILN_GELU_FN __host__ __device__ __forceinline__
#else
#define KILN_GELU_FN inline
#endif
KILN_GELU_FN float kiln_gelu_erf(float x) {
  const float a = fabsf(x);
  float p = fmaf(a, -1.81028963e-06f, 6.11847863e-05f);
  p = fmaf(a, p, -0.000927835237f);
  p = fmaf(a, p, 0.00849940348f);
  p = fmaf(a, p, -0.0539466739f);
  p = fmaf(a, p, -0.458474159f);
  p = fmaf(a, p, -1.15124846f);
  p = fmaf(a, p, -0.99999541f);
  const float q = KILN_GELU_EXP2(p);
  // Selecting Phi before the product keeps GELU(+inf) = inf (x - x*q would be inf - inf*0).
  return x * (x >= 0.0f ? 1.0f - q : q);
}
#undef KILN_GELU_FN
#undef KILN_GELU_EXP2
#endif
