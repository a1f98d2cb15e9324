// CUDA host functions of the binary-cross-entropy-with-logits ops (forward, sum, backward): the
// argument checks and operand descriptions are the CPU path's (bce::prepare in csrc/cpu/bce_cpu.cpp, so the exceptions
// are identical), then device guard, the current stream, dtype dispatch and the launch of the
// kernel in bce_kernels.cuh. No host synchronisation: the ops can be captured in CUDA graphs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>

#include "bce_kernels.cuh"
#include "cuda_host_utils.h"
#include "cpu/bce_kernel.h"

namespace smoothing_ext::bce::cuda {

namespace {

using cuda_host::KernelType;
using cuda_host::num_sms;

template <typename kt, typename acc_t>
Params<kt, acc_t> params_of(const Prepared& pr, double eps) {
  Params<kt, acc_t> p{};
  p.x = reinterpret_cast<const kt*>(pr.x.const_data_ptr());
  p.numel = pr.numel;
  p.target = pr.target;
  p.weight = pr.weight;
  p.pos_weight = pr.pos_weight;
  p.grad = pr.grad;
  const auto c = coefs<acc_t>(eps);
  p.on = c.on;
  p.off = c.off;
  return p;
}

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& pos_weight, double label_smoothing) {
  // checks first: a CPU tensor among the arguments is reported, not fed to the guard
  const Prepared pr = prepare(input, target, weight, pos_weight, label_smoothing, nullptr);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor loss = at::empty(input.sizes(), input.options().dtype(acc_dtype(input.scalar_type())));
  if (pr.numel == 0) return loss;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "smoothing_ext::binary_cross_entropy_with_logits_forward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = params_of<kt, acc_t>(pr, label_smoothing);
    p.loss = loss.mutable_data_ptr<acc_t>();
    launch_forward<kt, acc_t>(p, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

// 0-dim sum of the loss: per-block partials in a workspace from the caching allocator (stream-ordered,
// no sync), added in a fixed order by a second one-block kernel.
at::Tensor sum_cuda(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& pos_weight, double label_smoothing) {
  const Prepared pr = prepare(input, target, weight, pos_weight, label_smoothing, nullptr);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto acc = acc_dtype(input.scalar_type());
  if (pr.numel == 0) return at::zeros({}, input.options().dtype(acc));
  at::Tensor out = at::empty({}, input.options().dtype(acc));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "smoothing_ext::binary_cross_entropy_with_logits_sum (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    at::Tensor partials = at::empty({sum_blocks<kt>(pr.numel, sms)}, input.options().dtype(acc));
    auto p = params_of<kt, acc_t>(pr, label_smoothing);
    p.loss = out.mutable_data_ptr<acc_t>();
    p.partials = partials.mutable_data_ptr<acc_t>();
    launch_sum<kt, acc_t>(p, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor backward_cuda(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
                         double label_smoothing) {
  const Prepared pr = prepare(input, target, weight, pos_weight, label_smoothing, &grad_loss);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (pr.numel == 0) return grad;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int sms = num_sms(input.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "smoothing_ext::_binary_cross_entropy_with_logits_backward (CUDA)", [&] {
    using kt = typename KernelType<scalar_t>::type;
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = params_of<kt, acc_t>(pr, label_smoothing);
    p.grad_input = reinterpret_cast<kt*>(grad.mutable_data_ptr());
    launch_backward<kt, acc_t>(p, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

}  // namespace smoothing_ext::bce::cuda

TORCH_LIBRARY_IMPL(smoothing_ext, CUDA, m) {
  m.impl("binary_cross_entropy_with_logits_forward", &smoothing_ext::bce::cuda::forward_cuda);
  m.impl("_binary_cross_entropy_with_logits_backward", &smoothing_ext::bce::cuda::backward_cuda);
  m.impl("binary_cross_entropy_with_logits_sum", &smoothing_ext::bce::cuda::sum_cuda);
}
