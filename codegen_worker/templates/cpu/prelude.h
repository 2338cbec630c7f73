#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
typedef _Float16 kiln_f16;
static inline float kiln_load(const float* p, int64_t i) { return p[i]; }
static inline float kiln_load(const kiln_f16* p, int64_t i) { return (float)p[i]; }
static inline void kiln_store(float* p, int64_t i, float v) { p[i] = v; }
static inline void kiln_store(kiln_f16* p, int64_t i, float v) { p[i] = (kiln_f16)v; }
