// The interface between the ATen glue of the BCE ops (bce_cuda.cpp, host compiler only) and the
// translation unit that instantiates the kernels of bce_kernels.cuh (bce_kernels.cu: nvcc, no ATen),
// for the same reason as xent_launch.h. Torch-free: raw pointers, bce::Operand views, doubles.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <smoothing_ext/bce_math.h>

namespace smoothing_ext {
namespace bce {
namespace cuda {

enum class BceOp : int { kForward = 0, kBackward = 1, kSum = 2 };

// Type-erased bce::cuda::Params: x and grad_input in the input's kernel type, loss and partials in
// the accumulation type (double for double, float otherwise).
struct BceRequest {
  const void* x = nullptr;
  int64_t numel = 0;
  Operand target{}, weight{}, pos_weight{}, grad{};
  double label_smoothing = 0.0;  // y' = on y + off, formed in acc_t by the launch code
  void* loss = nullptr;          // kForward: numel values; kSum: one
  void* partials = nullptr;      // kSum: bce_sum_blocks() slots
  void* grad_input = nullptr;    // kBackward
};

// Workspace slots (acc dtype) kSum needs in `partials`.
template <typename scalar_t>
int bce_sum_blocks(int64_t numel, int num_sms);

// Plans and launches `op` on `stream` (asynchronous; the caller checks the launch).
template <typename scalar_t>
void bce_launch(BceOp op, const BceRequest& r, int num_sms, cudaStream_t stream);

}  // namespace cuda
}  // namespace bce
}  // namespace smoothing_ext
