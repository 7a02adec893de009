// Host side: launching one kernel of a unit (templates/kernels/*.cu.j2).
#pragma once
#include <cuda_runtime.h>

namespace fg {

// Opt in to the kernel's dynamic shared memory, launch it, and return CUDA's status.
template <class Kernel, class... Args>
cudaError_t launch(Kernel kernel, dim3 grid, int threads, int smem, void* stream, Args... args) {
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (status != cudaSuccess) return status;
  kernel<<<grid, threads, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  return cudaGetLastError();
}

}  // namespace fg
