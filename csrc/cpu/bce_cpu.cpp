// Binary cross entropy with logits (label-smoothed), CPU host functions, and the argument checks
// and operand descriptions that the CUDA host functions (bce_cuda.cpp) share.
//
// Broadcast operands (weight, pos_weight, and the upstream gradient, which autograd hands over as
// a 0-stride expand for "mean"/"sum") are never expanded into N x C copies in the common cases:
// each is described by a bce::Operand (pointer, inner, period) read as (i / inner) % period
// (bce_math.h). Only a broadcast that no single such pattern covers, e.g. (N, 1, H) over
// (N, C, H), or a non-contiguous full-size operand, is materialised.
// Per-operator headers, not <ATen/ATen.h>: that one costs several seconds of compile time per file.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

#include "bce_kernel.h"

namespace smoothing_ext {
std::string cpu_capability();  // csrc/cpu/cross_entropy_cpu.cpp
}

namespace smoothing_ext::bce {

namespace {

constexpr const char* kWho = "smoothing_ext (binary_cross_entropy_with_logits)";

void check_same_device(const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), kWho, ": ", name, " is on ", t.device(), " but input is on ",
              input.device(), "; move both to the same device");
}

void check_floating(const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), kWho, ": ", name,
                   " must be a floating-point tensor (float32, float64, bfloat16 or float16), got ",
                   t.scalar_type(), " with shape ", t.sizes());
}

// weight / pos_weight: broadcastable to the input's shape without growing it (PyTorch applies
// them in place to an input-shaped tensor), trailing dims aligned, as PyTorch broadcasts.
void check_broadcast_operand(const char* name, const at::Tensor& t, const at::Tensor& input) {
  check_same_device(name, t, input);
  check_floating(name, t);
  bool ok = t.dim() <= input.dim();
  for (int64_t k = 1; ok && k <= t.dim(); ++k) {
    const int64_t a = t.size(-k), b = input.size(-k);
    ok = a == 1 || a == b;
  }
  TORCH_CHECK_VALUE(ok, kWho, ": ", name, " of shape ", t.sizes(), " is not broadcastable to the input's shape ",
                    input.sizes(), " (trailing dims are aligned, e.g. (C,) or (N, 1) for an (N, C) input)");
}

// True if the view e (of the input's shape) reads its data as (i / inner) % period from its data
// pointer: trailing broadcast dims (-> inner), then a block of dims laid out contiguously
// (-> period), then leading broadcast dims. Size-1 dims are ignored.
bool as_pattern(const at::Tensor& e, int64_t& inner, int64_t& period) {
  const auto sizes = e.sizes();
  const auto strides = e.strides();
  int64_t d = e.dim() - 1;
  int64_t in = 1, per = 1;
  for (; d >= 0 && (sizes[d] == 1 || strides[d] == 0); --d) in *= sizes[d];
  for (; d >= 0 && (sizes[d] == 1 || strides[d] != 0); --d) {
    if (sizes[d] == 1) continue;
    if (strides[d] != per) return false;
    per *= sizes[d];
  }
  for (; d >= 0; --d) {
    if (sizes[d] != 1 && strides[d] != 0) return false;
  }
  inner = in;
  period = per;
  return true;
}

// Describes t (broadcastable to the input, checked) as an Operand over the flattened input. The
// element type is kept when it is the accumulation type or the input's type (read as it is),
// otherwise converted to the accumulation type (a copy of t's own size).
Operand describe(const at::Tensor& t, const at::Tensor& input, at::Tensor& keep) {
  const auto acc = acc_dtype(input.scalar_type());
  const auto dt = t.scalar_type();
  const at::Tensor src = (dt == acc || dt == input.scalar_type()) ? t : t.to(acc);
  at::Tensor e = src.expand(input.sizes());
  int64_t inner = 1, period = 1;
  if (!as_pattern(e, inner, period)) {
    e = src.contiguous().expand(input.sizes());  // e.g. a strided (C,) slice: C elements copied
    if (!as_pattern(e, inner, period)) {
      e = e.contiguous();  // no single pattern: materialised once
      inner = 1;
      period = e.numel();
    }
  }
  keep = e;
  Operand op{};
  op.ptr = e.const_data_ptr();
  op.inner = inner;
  op.period = period;
  op.is_acc = e.scalar_type() == acc ? 1 : 0;
  op.vec = 0;
  return op;
}

}  // namespace

Prepared prepare(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                 const std::optional<at::Tensor>& pos_weight, double label_smoothing,
                 const at::Tensor* grad_loss) {
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), kWho,
                   ": input must be float32, float64, bfloat16 or float16 logits, got ", input.scalar_type(),
                   " with shape ", input.sizes());
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, kWho,
                    ": label_smoothing must be in [0, 1], got ", label_smoothing);
  check_same_device("target", target, input);
  check_floating("target", target);
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), kWho, ": target must have the input's shape ", input.sizes(),
                    ", got target of shape ", target.sizes());
  const bool has_w = weight.has_value() && weight->defined();
  const bool has_pw = pos_weight.has_value() && pos_weight->defined();
  if (has_w) check_broadcast_operand("weight", *weight, input);
  if (has_pw) check_broadcast_operand("pos_weight", *pos_weight, input);
  if (grad_loss != nullptr) {
    check_same_device("grad_loss", *grad_loss, input);
    check_floating("grad_loss", *grad_loss);
    TORCH_CHECK_VALUE(grad_loss->sizes() == input.sizes(), kWho, ": grad_loss must have the input's shape ",
                      input.sizes(), ", got ", grad_loss->sizes());
  }
  Prepared p;
  p.numel = input.numel();
  if (p.numel == 0) return p;
  p.x = input.contiguous();
  p.target = describe(target, input, p.keep[0]);
  if (has_w) p.weight = describe(*weight, input, p.keep[1]);
  if (has_pw) p.pos_weight = describe(*pos_weight, input, p.keep[2]);
  if (grad_loss != nullptr) p.grad = describe(*grad_loss, input, p.keep[3]);
  return p;
}

const KernelTable& active_kernels() {
  static const KernelTable table = [] {
    // The cross-entropy kernels already chose (processor check + SMOOTHING_EXT_CPU_CAPABILITY).
    const std::string want = smoothing_ext::cpu_capability();
    if (want == "avx512") {
      const KernelTable k = kernels_avx512();
      if (k.forward != nullptr) return k;
    }
    if (want == "avx512" || want == "avx2") {
      const KernelTable k = kernels_avx2();
      if (k.forward != nullptr) return k;
    }
    return kernels_default();
  }();
  return table;
}

namespace {

CpuArgs args_of(const Prepared& p, double eps) {
  CpuArgs a{};
  a.dtype = p.x.scalar_type();
  a.input = p.x.const_data_ptr();
  a.numel = p.numel;
  a.target = p.target;
  a.weight = p.weight;
  a.pos_weight = p.pos_weight;
  a.grad = p.grad;
  a.eps = eps;
  return a;
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& pos_weight, double label_smoothing) {
  const Prepared p = prepare(input, target, weight, pos_weight, label_smoothing, nullptr);
  at::Tensor loss = at::empty(input.sizes(), input.options().dtype(acc_dtype(input.scalar_type())));
  if (p.numel == 0) return loss;
  CpuArgs a = args_of(p, label_smoothing);
  a.loss = loss.mutable_data_ptr();
  active_kernels().forward(a);
  return loss;
}

// 0-dim sum of the element-wise loss (0 for an empty input), the loss never written.
at::Tensor sum_cpu(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                   const std::optional<at::Tensor>& pos_weight, double label_smoothing) {
  const Prepared p = prepare(input, target, weight, pos_weight, label_smoothing, nullptr);
  at::Tensor out = at::zeros({}, input.options().dtype(acc_dtype(input.scalar_type())));
  if (p.numel == 0) return out;
  CpuArgs a = args_of(p, label_smoothing);
  a.loss = out.mutable_data_ptr();
  active_kernels().sum(a);
  return out;
}

at::Tensor backward_cpu(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
                        double label_smoothing) {
  const Prepared p = prepare(input, target, weight, pos_weight, label_smoothing, &grad_loss);
  at::Tensor grad = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (p.numel == 0) return grad;
  CpuArgs a = args_of(p, label_smoothing);
  a.grad_input = grad.mutable_data_ptr();
  active_kernels().backward(a);
  return grad;
}

}  // namespace

}  // namespace smoothing_ext::bce

TORCH_LIBRARY_IMPL(smoothing_ext, CPU, m) {
  m.impl("binary_cross_entropy_with_logits_forward", &smoothing_ext::bce::forward_cpu);
  m.impl("_binary_cross_entropy_with_logits_backward", &smoothing_ext::bce::backward_cpu);
  m.impl("binary_cross_entropy_with_logits_sum", &smoothing_ext::bce::sum_cpu);
}
