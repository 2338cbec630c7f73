#include <cstdint>
#include <cmath>
#include <algorithm>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
typedef __half kiln_f16;
typedef __nv_bfloat16 kiln_bf16;
typedef cudaStream_t kiln_stream_t;
#define KILN_LAUNCH_CHECK() (cudaGetLastError() == cudaSuccess ? 0 : 1)
#define KILN_SHFL_DOWN(v, off) __shfl_down_sync(0xffffffffu, v, off, 32)
static __device__ __forceinline__ float kiln_load(const float* p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float kiln_load(const __half* p, int64_t i) { return __half2float(p[i]); }
static __device__ __forceinline__ float kiln_load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
static __device__ __forceinline__ void kiln_store(float* p, int64_t i, float v) { p[i] = v; }
static __device__ __forceinline__ void kiln_store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
static __device__ __forceinline__ void kiln_store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
// Index and mask dtypes widen to float only where an op computes with them (cast).
static __device__ __forceinline__ float kiln_load(const int32_t* p, int64_t i) { return (float)p[i]; }
static __device__ __forceinline__ float kiln_load(const int64_t* p, int64_t i) { return (float)p[i]; }
static __device__ __forceinline__ float kiln_load(const bool* p, int64_t i) { return p[i] ? 1.0f : 0.0f; }
// A device-to-device copy ordered on the stream (graph-capturable); 0 on success.
#define KILN_MEMCPY_D2D(dst, src, nbytes, stream) \
  (cudaMemcpyAsync((dst), (src), (size_t)(nbytes), cudaMemcpyDeviceToDevice, (stream)) == cudaSuccess ? 0 : 1)
