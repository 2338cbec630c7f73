// Programmatic dependent launch (Hopper): a kernel may be launched while the one
// before it on the stream is still running, so its launch latency hides under the
// predecessor's tail. Every Kiln kernel therefore waits (griddepcontrol.wait) before
// it touches global memory, which also keeps arena reuse safe: a kernel cannot
// finish before its predecessor has, so waiting on the one before waits on all.
// Only builds for sm90 define KILN_GRID_DEPENDENCY (the backend's flags); elsewhere
// both halves compile away and launches are ordinary.
#ifndef KILN_GRID_DEPENDENCY_H  // CUTLASS kernels include it too; tests merge sources
#define KILN_GRID_DEPENDENCY_H
__attribute__((unused)) static __device__ __forceinline__ void kiln_pdl_enter() {
#if defined(KILN_GRID_DEPENDENCY) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  // Let the next kernel be scheduled now; it still waits for this one to complete.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Set by kiln_model_run from the model's switch (kiln_model_set_pdl); 0 elsewhere, so
// profiler executables time each kernel alone. Weak and hidden: one per library.
extern "C" __attribute__((weak, visibility("hidden"))) int kiln_pdl_mode = 0;
template <typename... P, typename... A>
__attribute__((unused)) static inline cudaError_t kiln_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                      A&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
#if defined(KILN_GRID_DEPENDENCY)
  if (kiln_pdl_mode) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
#endif
  (void)attr;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<A&&>(args)...);
}
#endif
