// Synchronisation inside a warp-specialised CTA (sm_90): shared-memory mbarriers between
// a producer warpgroup that fills pipeline stages and the consumer warpgroups that read
// them, named barriers between consumer warpgroups, and the register reallocation
// (setmaxnreg) that gives the consumers the producer's unused registers.
//
// An mbarrier completes a phase when its expected number of arrivals has arrived; a
// waiter names the phase by its parity. A stage used for the r-th time is full in
// phase r of its `full` barrier and free again in phase r of its `empty` barrier; the
// producer's first wait on `empty` names parity 1, which a fresh barrier reports as
// complete, so every stage starts free.
#pragma once
#include <cstdint>
#include <cstdio>

#include "mma.cuh"

namespace fg {

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(smem_address(bar)), "r"(arrivals));
}

// After the initialising thread's mbarrier_init calls, before the barrier that shows
// them to the CTA: makes the initialised barriers visible to the async proxy too, which
// TMA's complete_tx acts through (the PTX ISA does not promise it without the fence;
// CUTLASS fences the same way without clusters).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n"
               :: "r"(smem_address(bar)) : "memory");
}

// One arrival, made when all of this thread's earlier cp.async copies have landed (the
// barrier's expected count includes it: .noinc).
__device__ __forceinline__ void mbarrier_arrive_on_copies(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n"
               :: "r"(smem_address(bar)) : "memory");
}

// One arrival that also expects `bytes` more bytes of asynchronous copies (TMA,
// tma.cuh) before the phase can complete: the producer's arrival on a stage it fills
// with TMA loads, made before it issues them.
__device__ __forceinline__ void mbarrier_arrive_expecting(uint64_t* bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n"
               :: "r"(smem_address(bar)), "r"(bytes) : "memory");
}

// Waits for the phase of `bar` with this parity. kWatchdog: a wait that has not ended
// after 2^20 tries (each blocks for up to a hardware time limit; together seconds, where a
// real wait takes microseconds) is a deadlock, and traps, so that a broken pipeline fails
// the launch (an illegal-instruction error) instead of hanging the GPU; with
// FG_DEBUG_PIPELINE defined it first prints the barrier. The counter costs a register,
// which a consumer at its register limit cannot spare (ptxas then serialised its wgmmas),
// so only the producer's waits keep one: in a deadlock it is waiting too.
template <bool kWatchdog = false>
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int parity) {
  for (uint32_t tries = 0;; ++tries) {
    uint32_t done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done) : "r"(smem_address(bar)), "r"(parity) : "memory");
    if (done) return;
    if (kWatchdog && tries == (1u << 20)) {
#ifdef FG_DEBUG_PIPELINE
      printf("flashgen: mbarrier wait stuck: block %d thread %d barrier at smem %u, parity %d\n",
             blockIdx.x, threadIdx.x, smem_address(bar), parity);
#endif
      __trap();
    }
  }
}

// Named barriers 1..15 (0 is __syncthreads): `threads` threads in all, of which some
// wait (bar_sync) and the others only arrive (bar_arrive).
__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(threads) : "memory");
}

// The warpgroup's registers per thread from here on (a multiple of 8, 24..256); every
// warp of the warpgroup executes it.
template <int N>
__device__ __forceinline__ void set_registers() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes 24..256, multiples of 8");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(N));
}
template <int N>
__device__ __forceinline__ void release_registers() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes 24..256, multiples of 8");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(N));
}

}  // namespace fg
