// The interface between the ATen glue of the cross-entropy ops (cross_entropy_cuda.cpp: checks,
// guard, stream, dtype dispatch; compiled by the host compiler only) and the translation units that
// instantiate the kernels of cross_entropy_kernels.cuh (cross_entropy_<dtype>.cu: nvcc, no ATen).
//
// Why the split: nvcc runs its front end (cudafe++, cicc) over everything a .cu file includes, once
// per architecture, and the ATen headers cost far more there than the kernels do. Now the ATen code
// is compiled once by g++, and the kernels are spread over one file per dtype, compiled in parallel.
// Each file instantiates the three groups below; they partition the kernel instances, so no kernel
// is compiled twice, and a finer split is a matter of moving a macro to another file:
//   index: index-target forward + fused forward/gradient (they share fwd_rows_kernel<kModeIndex>)
//   prob:  probability-target forward + backward
//   bwd:   index-target backward + _scale_grad_rows_
// Torch-free and kernel-free: raw pointers, sizes and doubles. The launch code in the kernel files
// builds the same XentParams / ScaleParams as before (smoothing constants computed there, in acc_t).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace smoothing_ext {
namespace cuda {

enum class XentOp : int {
  kIndexForward = 0,   // writes loss, lse; workspace: xent_workspace_bytes
  kIndexBackward = 1,  // writes grad_input; no workspace
  kProbForward = 2,    // writes loss, lse; workspace
  kProbBackward = 3,   // writes grad_input; workspace
  kFused = 4,          // writes loss, lse, grad_input (may be x: in place); workspace
  kScaleRows = 5,      // scales g in place; no workspace
};

// Type-erased XentParams / ScaleParams (csrc/cuda/cross_entropy_kernels.cuh documents each field).
// Element pointers are in the input's kernel type (float, double, __half, __nv_bfloat16); per-row
// values in its accumulation type (double for double, float otherwise).
struct XentRequest {
  const void* x = nullptr;
  const int64_t* target = nullptr;
  const void* y = nullptr;
  const void* weight = nullptr;
  const double* weight_sum = nullptr;
  int64_t N = 0, C = 0, S = 1;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  bool off_target = false;
  double cap = 0.0;  // 0: the uncapped kernels
  void* loss = nullptr;
  void* lse = nullptr;
  const void* grad_loss = nullptr;
  const void* grad_lse = nullptr;
  const void* lse_in = nullptr;
  void* grad_input = nullptr;
  double z_loss = 0.0;
  const void* grad_scale = nullptr;
  // kScaleRows
  void* g = nullptr;
  const void* scale = nullptr;
  int64_t scale_numel = 0;
};

// Device workspace `op` needs for an (N, C, S) input on a device with num_sms SMs (0: none).
// Defined with the index group.
template <typename scalar_t>
size_t xent_workspace_bytes(XentOp op, int64_t N, int64_t C, int64_t S, int num_sms);

// The groups (instantiated with the SMOOTHING_XENT_INSTANTIATE_* macros of xent_launch_impl.cuh).
template <typename scalar_t>
void xent_launch_index(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream);
template <typename scalar_t>
void xent_launch_prob(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream);
template <typename scalar_t>
void xent_launch_bwd(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream);

// Launches `op` on `stream` (asynchronous; the caller checks the launch).
template <typename scalar_t>
inline void xent_launch(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream) {
  switch (op) {
    case XentOp::kIndexForward:
    case XentOp::kFused:
      xent_launch_index<scalar_t>(op, r, num_sms, workspace, stream);
      break;
    case XentOp::kProbForward:
    case XentOp::kProbBackward:
      xent_launch_prob<scalar_t>(op, r, num_sms, workspace, stream);
      break;
    case XentOp::kIndexBackward:
    case XentOp::kScaleRows:
      xent_launch_bwd<scalar_t>(op, r, num_sms, workspace, stream);
      break;
  }
}

}  // namespace cuda
}  // namespace smoothing_ext
