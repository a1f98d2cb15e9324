// CUDA host functions of the binary-cross-entropy-with-logits ops (forward, sum, backward): the
// argument checks and operand descriptions are the CPU path's (bce::prepare in csrc/cpu/bce_cpu.cpp, so the exceptions
// are identical), then device guard, the current stream, dtype dispatch and the launch of the
// kernel in bce_kernels.cuh. No host synchronisation: the ops can be captured in CUDA graphs.
// Compiled by the host compiler only: the kernels are instantiated in bce_kernels.cu, reached
// through bce_launch.h.
// Per-operator headers, not <ATen/ATen.h>: that one costs several seconds of compile time per file.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
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

#include "bce_launch.h"
#include "cuda_host_utils.h"
#include "cpu/bce_kernel.h"

namespace smoothing_ext::bce::cuda {

namespace {

using cuda_host::KernelType;
using cuda_host::num_sms;

BceRequest request_of(const Prepared& pr, double eps) {
  BceRequest r;
  r.x = pr.x.const_data_ptr();
  r.numel = pr.numel;
  r.target = pr.target;
  r.weight = pr.weight;
  r.pos_weight = pr.pos_weight;
  r.grad = pr.grad;
  r.label_smoothing = eps;
  return r;
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
    BceRequest p = request_of(pr, label_smoothing);
    p.loss = loss.mutable_data_ptr<acc_t>();
    bce_launch<kt>(BceOp::kForward, p, sms, stream);
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
    at::Tensor partials = at::empty({bce_sum_blocks<kt>(pr.numel, sms)}, input.options().dtype(acc));
    BceRequest p = request_of(pr, label_smoothing);
    p.loss = out.mutable_data_ptr<acc_t>();
    p.partials = partials.mutable_data_ptr<acc_t>();
    bce_launch<kt>(BceOp::kSum, p, sms, stream);
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
    BceRequest p = request_of(pr, label_smoothing);
    p.grad_input = grad.mutable_data_ptr();
    bce_launch<kt>(BceOp::kBackward, p, sms, stream);
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
