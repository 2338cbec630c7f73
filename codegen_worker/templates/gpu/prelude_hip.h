#include <cstdint>
#include <cmath>
#include <algorithm>
#include <hip/hip_runtime.h>
typedef _Float16 kiln_f16;
typedef hipStream_t kiln_stream_t;
#define KILN_LAUNCH_CHECK() (hipGetLastError() == hipSuccess ? 0 : 1)
#define KILN_SHFL_DOWN(v, off) __shfl_down(v, off, 32)
static __device__ __forceinline__ float kiln_load(const float* p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float kiln_load(const _Float16* p, int64_t i) { return (float)p[i]; }
static __device__ __forceinline__ void kiln_store(float* p, int64_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void kiln_store(_Float16* p, int64_t i, float v) { p[i] = (_Float16)v; }
