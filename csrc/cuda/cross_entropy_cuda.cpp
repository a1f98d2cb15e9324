// CUDA host functions of the smoothing_ext ops: argument checks (shared with the CPU path through
// xent_checks.h, so the exceptions are identical), device guard, the current stream, dtype dispatch and the launches of the kernels in
// cross_entropy_kernels.cuh. Compiled by the host compiler only: the kernels are instantiated in the
// cross_entropy_<dtype>.cu files and reached through xent_launch.h (see there why).
//
// Out-of-range class indices (a target neither in [0, C) nor equal to ignore_index)
// ---------------------------------------------------------------------------------
// The CPU path raises IndexError. On CUDA that would need the host to read a device flag after
// every forward, i.e. a stream synchronisation in the middle of every training step (and a special
// case under CUDA-graph capture). We chose instead: NO synchronisation and NO device-side assert
// (an assert poisons the CUDA context for the rest of the process). Such a row gets loss = NaN (its
// lse is still the row's log-sum-exp), and the backward writes NaN over that row's gradient. Any
// reduction (mean/sum) of the loss is then NaN, which GradScaler / anomaly checks / loss logging
// surface immediately; `torch.isnan(loss_per_row)` (reduction="none") locates the offending rows.
//
// Everything else follows the CPU path: index targets are converted to contiguous int64 and the
// weight to the accumulation dtype; sum_j w_j is computed on the device in float64 (as the CPU path
// does) and read by the kernels from device memory, so there is no .item(). Nothing here
// synchronises with the host, so the ops can be captured in CUDA graphs.
// Per-operator headers, not <ATen/ATen.h>: that one costs several seconds of compile time per file.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <type_traits>

#include <smoothing_ext/xent_math.h>

#include "cuda_host_utils.h"
#include "xent_checks.h"
#include "xent_launch.h"

namespace smoothing_ext::cuda {

namespace {

using cuda_host::KernelType;
using cuda_host::num_sms;

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  // From the caching allocator on the current stream; at least 1 byte so the pointer is valid.
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

struct Common {
  at::Tensor x, w, wsum;
};

Common common(const at::Tensor& input, const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  Common c;
  c.x = input.contiguous();
  c.w = weight_as_acc(weight, acc);
  if (c.w.defined()) c.wsum = c.w.sum(at::kDouble);  // stays on the device
  return c;
}

XentRequest make_request(const Common& c, const XentShape& sh, double eps, bool off_target, double cap) {
  XentRequest r;
  r.x = c.x.const_data_ptr();
  r.weight = c.w.defined() ? c.w.const_data_ptr() : nullptr;  // acc dtype (weight_as_acc)
  r.weight_sum = c.w.defined() ? c.wsum.const_data_ptr<double>() : nullptr;
  r.N = sh.N;
  r.C = sh.C;
  r.S = sh.S;
  r.label_smoothing = eps;  // the constants are formed in acc_t by the launch code (xent_launch_impl.cuh)
  r.off_target = off_target;
  r.cap = cap;  // 0: the uncapped kernels
  return r;
}

#define SMOOTHING_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

}  // namespace

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cuda(const at::Tensor& input, const at::Tensor& target,
                                                              const std::optional<at::Tensor>& weight,
                                                              int64_t ignore_index, double label_smoothing,
                                                              bool off_target, std::optional<double> softcap) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  const auto acc = acc_dtype(input.scalar_type());
  const double cap = check_softcap(softcap, acc);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (loss.numel() == 0) return {loss, lse};
  const Common c = common(input, weight, acc);
  const at::Tensor t = index_target_as_int64(target);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  SMOOTHING_DISPATCH(input.scalar_type(), "smoothing_ext::cross_entropy_forward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest p = make_request(c, sh, label_smoothing, off_target, cap);
    p.target = t.const_data_ptr<int64_t>();
    p.ignore_index = ignore_index;
    p.loss = loss.mutable_data_ptr<acc_t>();
    p.lse = lse.mutable_data_ptr<acc_t>();
    const size_t ws_bytes = xent_workspace_bytes<kt>(XentOp::kIndexForward, sh.N, sh.C, sh.S, sms);
    at::Tensor ws = ws_bytes ? workspace(ws_bytes, input) : at::Tensor();
    xent_launch<kt>(XentOp::kIndexForward, p, sms, ws_bytes ? ws.mutable_data_ptr() : nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

at::Tensor cross_entropy_backward_cuda(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                       const at::Tensor& input, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                       int64_t ignore_index, double label_smoothing, bool off_target,
                                       std::optional<double> softcap) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  check_backward_extras(grad_loss, grad_lse, lse, sh, input);
  const auto acc = acc_dtype(input.scalar_type());
  const double cap = check_softcap(softcap, acc);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  const Common c = common(input, weight, acc);
  const at::Tensor t = index_target_as_int64(target);
  const at::Tensor g = grad_as_acc(grad_loss, acc);
  const bool has_gl = grad_lse.has_value() && grad_lse->defined();
  const at::Tensor gl = has_gl ? grad_as_acc(*grad_lse, acc) : at::Tensor();
  const at::Tensor l = grad_as_acc(lse, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  SMOOTHING_DISPATCH(input.scalar_type(), "smoothing_ext::_cross_entropy_backward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest p = make_request(c, sh, label_smoothing, off_target, cap);
    p.target = t.const_data_ptr<int64_t>();
    p.ignore_index = ignore_index;
    p.grad_loss = g.const_data_ptr<acc_t>();
    p.grad_lse = has_gl ? gl.const_data_ptr<acc_t>() : nullptr;
    p.lse_in = l.const_data_ptr<acc_t>();
    p.grad_input = grad.mutable_data_ptr();
    xent_launch<kt>(XentOp::kIndexBackward, p, sms, nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_prob_forward_cuda(const at::Tensor& input, const at::Tensor& target,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   double label_smoothing, bool off_target,
                                                                   std::optional<double> softcap) {
  const XentShape sh = check_prob_forward(input, target, weight, label_smoothing);
  const auto acc = acc_dtype(input.scalar_type());
  const double cap = check_softcap(softcap, acc);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (loss.numel() == 0) return {loss, lse};
  const Common c = common(input, weight, acc);
  const at::Tensor y = target.to(input.scalar_type()).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  SMOOTHING_DISPATCH(input.scalar_type(), "smoothing_ext::cross_entropy_prob_forward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest p = make_request(c, sh, label_smoothing, off_target, cap);
    p.y = y.const_data_ptr();
    p.loss = loss.mutable_data_ptr<acc_t>();
    p.lse = lse.mutable_data_ptr<acc_t>();
    const size_t ws_bytes = xent_workspace_bytes<kt>(XentOp::kProbForward, sh.N, sh.C, sh.S, sms);
    at::Tensor ws = ws_bytes ? workspace(ws_bytes, input) : at::Tensor();
    xent_launch<kt>(XentOp::kProbForward, p, sms, ws_bytes ? ws.mutable_data_ptr() : nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

at::Tensor cross_entropy_prob_backward_cuda(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                            const at::Tensor& input, const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                            double label_smoothing, bool off_target,
                                            std::optional<double> softcap) {
  const XentShape sh = check_prob_forward(input, target, weight, label_smoothing);
  check_backward_extras(grad_loss, grad_lse, lse, sh, input);
  const auto acc = acc_dtype(input.scalar_type());
  const double cap = check_softcap(softcap, acc);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  const Common c = common(input, weight, acc);
  const at::Tensor y = target.to(input.scalar_type()).contiguous();
  const at::Tensor g = grad_as_acc(grad_loss, acc);
  const bool has_gl = grad_lse.has_value() && grad_lse->defined();
  const at::Tensor gl = has_gl ? grad_as_acc(*grad_lse, acc) : at::Tensor();
  const at::Tensor l = grad_as_acc(lse, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  SMOOTHING_DISPATCH(input.scalar_type(), "smoothing_ext::_cross_entropy_prob_backward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest p = make_request(c, sh, label_smoothing, off_target, cap);
    p.y = y.const_data_ptr();
    p.grad_loss = g.const_data_ptr<acc_t>();
    p.grad_lse = has_gl ? gl.const_data_ptr<acc_t>() : nullptr;
    p.lse_in = l.const_data_ptr<acc_t>();
    p.grad_input = grad.mutable_data_ptr();
    const size_t ws_bytes = xent_workspace_bytes<kt>(XentOp::kProbBackward, sh.N, sh.C, sh.S, sms);
    at::Tensor ws = workspace(ws_bytes, input);
    xent_launch<kt>(XentOp::kProbBackward, p, sms, ws.mutable_data_ptr(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

namespace {

// Both fused ops. `grad` is a fresh contiguous tensor, or `input` itself (in place: the caller has
// checked that it is contiguous, and the kernels read every logit of a row before overwriting it).
std::tuple<at::Tensor, at::Tensor> fused_into(const at::Tensor& input, const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                              double label_smoothing, bool off_target, double z_loss,
                                              const std::optional<at::Tensor>& grad_scale, const at::Tensor& grad,
                                              const XentShape& sh, double cap) {
  const auto acc = acc_dtype(input.scalar_type());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (input.numel() == 0) return {loss, lse};
  const Common c = common(input, weight, acc);
  const at::Tensor t = index_target_as_int64(target);
  const bool has_gs = grad_scale.has_value() && grad_scale->defined();
  // Converted on the device and read there by the kernels: no .item(), no sync.
  const at::Tensor gs = has_gs ? grad_scale->to(acc).reshape({}).contiguous() : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  SMOOTHING_DISPATCH(input.scalar_type(), "smoothing_ext::cross_entropy_fused (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest p = make_request(c, sh, label_smoothing, off_target, cap);
    p.target = t.const_data_ptr<int64_t>();
    p.ignore_index = ignore_index;
    p.loss = loss.mutable_data_ptr<acc_t>();
    p.lse = lse.mutable_data_ptr<acc_t>();
    p.grad_input = grad.mutable_data_ptr();
    p.z_loss = z_loss;  // converted to acc_t by the launch code, as before
    p.grad_scale = has_gs ? gs.const_data_ptr<acc_t>() : nullptr;
    const size_t ws_bytes = xent_workspace_bytes<kt>(XentOp::kFused, sh.N, sh.C, sh.S, sms);
    at::Tensor ws = ws_bytes ? workspace(ws_bytes, input) : at::Tensor();
    xent_launch<kt>(XentOp::kFused, p, sms, ws_bytes ? ws.mutable_data_ptr() : nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fused_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, bool off_target, std::optional<double> softcap, double z_loss,
    const std::optional<at::Tensor>& grad_scale) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  const double cap = check_softcap(softcap, acc_dtype(input.scalar_type()));
  check_fused_extras(z_loss, grad_scale, input, /*inplace=*/false);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  auto [loss, lse] = fused_into(input, target, weight, ignore_index, label_smoothing, off_target, z_loss, grad_scale,
                                grad, sh, cap);
  return {loss, lse, grad};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fused_inplace_cuda(
    at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, bool off_target, std::optional<double> softcap, double z_loss,
    const std::optional<at::Tensor>& grad_scale) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  const double cap = check_softcap(softcap, acc_dtype(input.scalar_type()));
  check_fused_extras(z_loss, grad_scale, input, /*inplace=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  return fused_into(input, target, weight, ignore_index, label_smoothing, off_target, z_loss, grad_scale, input, sh,
                    cap);
}

void scale_grad_rows_cuda(at::Tensor& grad, const at::Tensor& scale) {
  const XentShape sh = check_scale_rows(grad, scale);
  const int64_t N = sh.N, C = sh.C, S = sh.S;
  if (grad.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor f = scale.to(acc_dtype(grad.scalar_type())).contiguous();  // on the device: no sync
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(grad.get_device());
  SMOOTHING_DISPATCH(grad.scalar_type(), "smoothing_ext::_scale_grad_rows_ (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    XentRequest q;
    q.g = grad.mutable_data_ptr();
    q.scale = f.const_data_ptr<acc_t>();
    q.scale_numel = f.numel();
    q.N = N;
    q.C = C;
    q.S = S;
    xent_launch<kt>(XentOp::kScaleRows, q, sms, nullptr, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace smoothing_ext::cuda

TORCH_LIBRARY_IMPL(smoothing_ext, CUDA, m) {
  m.impl("cross_entropy_forward", &smoothing_ext::cuda::cross_entropy_forward_cuda);
  m.impl("_cross_entropy_backward", &smoothing_ext::cuda::cross_entropy_backward_cuda);
  m.impl("cross_entropy_prob_forward", &smoothing_ext::cuda::cross_entropy_prob_forward_cuda);
  m.impl("_cross_entropy_prob_backward", &smoothing_ext::cuda::cross_entropy_prob_backward_cuda);
  m.impl("cross_entropy_fused", &smoothing_ext::cuda::cross_entropy_fused_cuda);
  m.impl("cross_entropy_fused_", &smoothing_ext::cuda::cross_entropy_fused_inplace_cuda);
  m.impl("_scale_grad_rows_", &smoothing_ext::cuda::scale_grad_rows_cuda);
}
