// The tanh GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as
// x * sigmoid(2u) = x / (1 + exp(-2u)): the same function with one exp2 and one
// reciprocal. CUTLASS's GELU_taylor takes tanh.approx (about 11 bits, 5e-4 absolute),
// which PyTorch's accurate tanh does not; this one is good to about 1e-7.
#ifndef KILN_GELU_TANH_H
#define KILN_GELU_TANH_H
#if defined(__CUDA_ARCH__)
static __device__ __forceinline__ float kiln_gelu_tanh_exp2(float w) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(w));
  return r;
}
#define KILN_GELU_TANH_EXP2(w) kiln_gelu_tanh_exp2(w)
#define KILN_GELU_TANH_DIV(a, b) __fdividef((a), (b))
#else
#include <cmath>
#define KILN_GELU_TANH_EXP2(w) std::exp2(w)
#define KILN_GELU_TANH_DIV(a, b) ((a) / (b))
#endif
#ifdef __CUDACC__
#define KILN_GELU_TANH_FN __host__ __device__ __forceinline__
#else
#define KILN_GELU_TANH_FN inline
#endif
KILN_GELU_TANH_FN float kiln_gelu_tanh(float x) {
  // -2u log2(e) = x * (c0 + c1 x^2), c0 = -2 sqrt(2/pi) log2(e), c1 = c0 * 0.044715
  const float w = x * fmaf(x * x, -0.10294323958f, -2.3022081981f);
  const float e = KILN_GELU_TANH_EXP2(w);
  // x -> -inf: e = inf and the quotient is -0; __fdividef returns 0 for a huge divisor too.
  return KILN_GELU_TANH_DIV(x, 1.0f + e);
}
#undef KILN_GELU_TANH_FN
#undef KILN_GELU_TANH_EXP2
#undef KILN_GELU_TANH_DIV
#endif
