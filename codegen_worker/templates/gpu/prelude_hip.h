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
// Index and mask dtypes widen to float only where an op computes with them (cast).
static __device__ __forceinline__ float kiln_load(const int32_t* p, int64_t i) { return (float)p[i]; }
static __device__ __forceinline__ float kiln_load(const int64_t* p, int64_t i) { return (float)p[i]; }
static __device__ __forceinline__ float kiln_load(const bool* p, int64_t i) { return p[i] ? 1.0f : 0.0f; }
// A device-to-device copy ordered on the stream (graph-capturable); 0 on success.
#define KILN_MEMCPY_D2D(dst, src, nbytes, stream) \
  (hipMemcpyAsync((dst), (src), (size_t)(nbytes), hipMemcpyDeviceToDevice, (stream)) == hipSuccess ? 0 : 1)
// CUDA's programmatic dependent launch has no HIP counterpart: plain launches.
static __device__ __forceinline__ void kiln_pdl_enter() {}
template <typename... P, typename... A>
static inline hipError_t kiln_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, hipStream_t stream,
                                     A&&... args) {
  kernel<<<grid, block, smem, stream>>>(static_cast<P>(args)...);
  return hipPeekAtLastError();  // leaves the error for KILN_LAUNCH_CHECK
}
