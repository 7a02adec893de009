// Host side: launching one kernel of a unit (templates/kernels/*.cu.j2).
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

// The grid of a persistent kernel on the current device: one CTA per SM, at most one per
// unit (the units after a CTA's first are drawn from a counter: forward_sm90_ws.cuh).
inline dim3 persistent_grid(int64_t units) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return dim3(unsigned(units < 1 ? 1 : units < sms ? units : sms));
}

}  // namespace fg
