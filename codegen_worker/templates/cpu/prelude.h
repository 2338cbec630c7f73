#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
typedef _Float16 kiln_f16;
static inline float kiln_load(const float* p, int64_t i) { return p[i]; }
static inline float kiln_load(const kiln_f16* p, int64_t i) { return (float)p[i]; }
static inline float kiln_load(const int32_t* p, int64_t i) { return (float)p[i]; }
static inline float kiln_load(const int64_t* p, int64_t i) { return (float)p[i]; }
static inline float kiln_load(const bool* p, int64_t i) { return p[i] ? 1.0f : 0.0f; }
static inline void kiln_store(float* p, int64_t i, float v) { p[i] = v; }
static inline void kiln_store(kiln_f16* p, int64_t i, float v) { p[i] = (kiln_f16)v; }
