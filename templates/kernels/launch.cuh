// Launching one kernel of a unit (templates/kernels/*.cu.j2): the host's launch, and the
// device side of a programmatic dependent launch (a kernel that may start before the one
// it reads from has finished).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fg {

// Opt in to the kernel's dynamic shared memory, launch it, and return CUDA's status.
template <class Kernel, class... Args>
cudaError_t launch(Kernel kernel, dim3 grid, int threads, int smem, void* stream, Args... args) {
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (status != cudaSuccess) return status;
  kernel<<<grid, threads, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  return cudaGetLastError();
}

// Launch `kernel` as the programmatic dependent of the kernel before it on the stream
// (sm90+): its CTAs may be scheduled once every CTA of that grid has called
// allow_dependent_launch() or exited, so its launch and its CTAs' start overlap that grid's
// tail. It must call wait_for_prerequisite_grid() before it reads what that grid wrote.
// Split-KV's combine kernel (combine.cuh) is one: a decoding step of B = 1 is two short
// kernels, and launched so it took ~1 us off a ~20 us step (H100, 4k keys: PERF.md,
// "next-call-2 measured").
template <class Kernel, class... Args>
cudaError_t launch_dependent(Kernel kernel, dim3 grid, int threads, int smem, void* stream, Args... args) {
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (status != cudaSuccess) return status;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(unsigned(threads));
  config.dynamicSmemBytes = size_t(smem);
  config.stream = static_cast<cudaStream_t>(stream);
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

// Device side. Both are no-ops where the kernel was launched plainly, and before sm90.
// The CTA's part of the trigger above: the first call of any of its threads counts.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Wait until the grid before this one on the stream has finished and its writes are
// visible (a dependent launch's kernel, before it reads them).
__device__ __forceinline__ void wait_for_prerequisite_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The grid of a persistent kernel on the current device: one CTA per SM, at most one per
// unit (the units after a CTA's first are drawn from a counter: forward_sm90_ws.cuh).
inline dim3 persistent_grid(int64_t units) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return dim3(unsigned(units < 1 ? 1 : units < sms ? units : sms));
}

}  // namespace fg
