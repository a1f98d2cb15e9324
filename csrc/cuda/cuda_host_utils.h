// Host-side helpers shared by the CUDA glue files (cross_entropy_cuda.cpp, bce_cuda.cpp).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>

namespace smoothing_ext::cuda_host {

// ATen's element types -> the CUDA types the kernels are written for (same layout).
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<c10::Half> {
  using type = __half;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

// Streaming multiprocessors of `device`, asked once per device (launch planning needs it on
// every call; the attribute query is not free).
inline int num_sms(int device) {
  static std::atomic<int> cache[64];
  if (device >= 0 && device < 64) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (sms < 1) sms = 1;
  if (device >= 0 && device < 64) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

}  // namespace smoothing_ext::cuda_host
