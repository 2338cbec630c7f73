// Scratch memory of one CUTLASS kernel function (Stream-K's partial sums; the others need
// none). One buffer per stream, so models running on different streams never share one.
// A buffer outgrown is retired, never freed: a CUDA graph captured with it may still be
// replayed (graph replay keys on pointers and symbols, not on this buffer).
#ifndef KILN_WORKSPACE_H
#define KILN_WORKSPACE_H
#include <cstddef>
#include <mutex>
#include <vector>
struct KilnWorkspace {
  struct Slot {
    void* stream;
    void* ptr;
    size_t bytes;
  };
  std::mutex mu;
  std::vector<Slot> slots;
  std::vector<void*> retired;
  // nullptr with *ok false when the allocation fails; nullptr with *ok true when need is 0.
  void* get(void* stream, size_t need, bool* ok) {
    *ok = true;
    if (need == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mu);
    Slot* slot = nullptr;
    for (auto& s : slots) {
      if (s.stream == stream) slot = &s;
    }
    if (slot && slot->bytes >= need) return slot->ptr;
    // Grow at least twofold: the retired buffers then sum to less than the live one.
    const size_t bytes = slot && 2 * slot->bytes > need ? 2 * slot->bytes : need;
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) {
      *ok = false;
      return nullptr;
    }
    if (slot) {
      retired.push_back(slot->ptr);
      slot->ptr = ptr;
      slot->bytes = bytes;
    } else {
      slots.push_back({stream, ptr, bytes});
    }
    return ptr;
  }
};
#endif
