// Definitions of the xent_launch.h functions on top of the launchers of cross_entropy_kernels.cuh.
// Included only by the cross_entropy_<dtype>.cu files, which instantiate the groups for one dtype with
// the macros at the bottom (nvcc; no ATen here, so each file compiles in seconds per architecture).
#pragma once

#include <type_traits>

#include <smoothing_ext/xent_math.h>

#include "cross_entropy_kernels.cuh"
#include "xent_launch.h"

namespace smoothing_ext {
namespace cuda {
namespace launch_detail {

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The XentParams the host functions used to build themselves: smoothing constants in acc_t, the
// cap, z_loss converted to acc_t; every pointer the request does not set stays nullptr.
template <typename scalar_t>
XentParams<scalar_t, acc_of<scalar_t>> params_of(const XentRequest& r) {
  using acc_t = acc_of<scalar_t>;
  XentParams<scalar_t, acc_t> p{};
  p.x = static_cast<const scalar_t*>(r.x);
  p.target = r.target;
  p.y = static_cast<const scalar_t*>(r.y);
  p.weight = static_cast<const acc_t*>(r.weight);
  p.weight_sum = r.weight_sum;
  p.N = r.N;
  p.C = r.C;
  p.S = r.S;
  p.ignore_index = r.ignore_index;
  const auto coefs = smooth_coefs<acc_t>(r.label_smoothing, r.C, r.off_target);
  p.on = coefs.on;
  p.off = coefs.off;
  p.cap = static_cast<acc_t>(r.cap);
  p.loss = static_cast<acc_t*>(r.loss);
  p.lse = static_cast<acc_t*>(r.lse);
  p.grad_loss = static_cast<const acc_t*>(r.grad_loss);
  p.grad_lse = static_cast<const acc_t*>(r.grad_lse);
  p.lse_in = static_cast<const acc_t*>(r.lse_in);
  p.grad_input = static_cast<scalar_t*>(r.grad_input);
  p.z_loss = static_cast<acc_t>(r.z_loss);
  p.grad_scale = static_cast<const acc_t*>(r.grad_scale);
  return p;
}

}  // namespace launch_detail

template <typename scalar_t>
size_t xent_workspace_bytes(XentOp op, int64_t N, int64_t C, int64_t S, int num_sms) {
  using acc_t = launch_detail::acc_of<scalar_t>;
  switch (op) {
    case XentOp::kIndexForward:
    case XentOp::kProbForward:
      return forward_workspace_bytes<scalar_t, acc_t>(N, C, S, num_sms);
    case XentOp::kProbBackward:
      return prob_backward_workspace_bytes<scalar_t, acc_t>(N, C, S, num_sms);
    case XentOp::kFused:
      return fused_workspace_bytes<scalar_t, acc_t>(N, C, S, num_sms);
    default:
      return 0;
  }
}

template <typename scalar_t>
void xent_launch_index(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream) {
  using acc_t = launch_detail::acc_of<scalar_t>;
  const auto p = launch_detail::params_of<scalar_t>(r);
  if (op == XentOp::kIndexForward) {
    launch_index_forward<scalar_t, acc_t>(p, num_sms, workspace, stream);
  } else if (op == XentOp::kFused) {
    launch_index_fused<scalar_t, acc_t>(p, num_sms, workspace, stream);
  }
}

template <typename scalar_t>
void xent_launch_prob(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream) {
  using acc_t = launch_detail::acc_of<scalar_t>;
  const auto p = launch_detail::params_of<scalar_t>(r);
  if (op == XentOp::kProbForward) {
    launch_prob_forward<scalar_t, acc_t>(p, num_sms, workspace, stream);
  } else if (op == XentOp::kProbBackward) {
    launch_prob_backward<scalar_t, acc_t>(p, num_sms, workspace, stream);
  }
}

template <typename scalar_t>
void xent_launch_bwd(XentOp op, const XentRequest& r, int num_sms, void* workspace, cudaStream_t stream) {
  using acc_t = launch_detail::acc_of<scalar_t>;
  (void)workspace;
  if (op == XentOp::kIndexBackward) {
    launch_index_backward<scalar_t, acc_t>(launch_detail::params_of<scalar_t>(r), num_sms, stream);
  } else if (op == XentOp::kScaleRows) {
    ScaleParams<scalar_t, acc_t> q{};
    q.g = static_cast<scalar_t*>(r.g);
    q.scale = static_cast<const acc_t*>(r.scale);
    q.scale_numel = r.scale_numel;
    q.N = r.N;
    q.C = r.C;
    q.S = r.S;
    launch_scale_rows<scalar_t, acc_t>(q, num_sms, stream);
  }
}

}  // namespace cuda
}  // namespace smoothing_ext

// One group for one kernel type (float, double, __half, __nv_bfloat16), at namespace scope.
#define SMOOTHING_XENT_INSTANTIATE_INDEX(T)                                                                   \
  template size_t smoothing_ext::cuda::xent_workspace_bytes<T>(smoothing_ext::cuda::XentOp, int64_t, int64_t, \
                                                              int64_t, int);                                   \
  template void smoothing_ext::cuda::xent_launch_index<T>(smoothing_ext::cuda::XentOp,                        \
                                                          const smoothing_ext::cuda::XentRequest&, int, void*, \
                                                          cudaStream_t);
#define SMOOTHING_XENT_INSTANTIATE_PROB(T)                                                                   \
  template void smoothing_ext::cuda::xent_launch_prob<T>(smoothing_ext::cuda::XentOp,                        \
                                                         const smoothing_ext::cuda::XentRequest&, int, void*, \
                                                         cudaStream_t);
#define SMOOTHING_XENT_INSTANTIATE_BWD(T)                                                                   \
  template void smoothing_ext::cuda::xent_launch_bwd<T>(smoothing_ext::cuda::XentOp,                        \
                                                        const smoothing_ext::cuda::XentRequest&, int, void*, \
                                                        cudaStream_t);
