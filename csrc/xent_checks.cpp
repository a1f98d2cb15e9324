#include "xent_checks.h"

// Per-operator headers, not <ATen/ATen.h>: that one costs several seconds of compile time per file.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace smoothing_ext {

namespace {

void check_input(const at::Tensor& input) {
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "smoothing_ext: input must be float32, float64, bfloat16 or float16 logits, got ",
                   input.scalar_type(), " with shape ", input.sizes());
  TORCH_CHECK_VALUE(input.dim() >= 1,
                    "smoothing_ext: input must have shape (C,), (N, C) or (N, C, d1, ..., dk), got a "
                    "0-dim tensor");
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  TORCH_CHECK_VALUE(C >= 1, "smoothing_ext: input must have at least one class (dim ",
                    input.dim() == 1 ? 0 : 1, " > 0), got shape ", input.sizes());
}

XentShape shape_of(const at::Tensor& input) {
  XentShape s;
  if (input.dim() == 1) {
    s.N = 1;
    s.C = input.size(0);
    s.S = 1;
    return s;  // loss_sizes = {} (0-dim)
  }
  s.N = input.size(0);
  s.C = input.size(1);
  s.S = 1;
  s.loss_sizes.push_back(s.N);
  for (int64_t d = 2; d < input.dim(); ++d) {
    s.S *= input.size(d);
    s.loss_sizes.push_back(input.size(d));
  }
  return s;
}

void check_eps(double label_smoothing) {
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "smoothing_ext: label_smoothing must be in [0, 1], got ", label_smoothing);
}

void check_weight(const std::optional<at::Tensor>& weight, const at::Tensor& input, int64_t C) {
  if (!weight.has_value() || !weight->defined()) return;
  const at::Tensor& w = *weight;
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()),
                   "smoothing_ext: weight must be a floating-point tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == C,
                    "smoothing_ext: weight must have shape (C,) = (", C, ",) for input of shape ",
                    input.sizes(), ", got weight of shape ", w.sizes());
  TORCH_CHECK(w.device() == input.device(), "smoothing_ext: weight is on ", w.device(),
              " but input is on ", input.device(), "; move both to the same device");
}

}  // namespace

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

XentShape check_index_forward(const at::Tensor& input, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, double label_smoothing) {
  check_input(input);
  check_eps(label_smoothing);
  TORCH_CHECK(target.device() == input.device(), "smoothing_ext: target is on ", target.device(),
              " but input is on ", input.device(), "; move both to the same device");
  const auto tt = target.scalar_type();
  TORCH_CHECK_TYPE(tt == at::kLong || tt == at::kInt || tt == at::kByte,
                   "smoothing_ext: class-index target must be int64, int32 or uint8 (or a floating "
                   "tensor of the input's shape for probabilities), got ",
                   tt, " with shape ", target.sizes(), " for input of shape ", input.sizes());
  XentShape s = shape_of(input);
  TORCH_CHECK_VALUE(target.sizes().vec() == s.loss_sizes,
                    "smoothing_ext: target must have shape ", c10::IntArrayRef(s.loss_sizes),
                    " for input of shape ", input.sizes(), " (the input without its class dim ",
                    input.dim() == 1 ? 0 : 1, "), got target of shape ", target.sizes());
  check_weight(weight, input, s.C);
  return s;
}

XentShape check_prob_forward(const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, double label_smoothing) {
  check_input(input);
  check_eps(label_smoothing);
  TORCH_CHECK(target.device() == input.device(), "smoothing_ext: target is on ", target.device(),
              " but input is on ", input.device(), "; move both to the same device");
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()),
                   "smoothing_ext: probability target must be floating point, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(),
                    "smoothing_ext: probability target must have the input's shape ", input.sizes(),
                    ", got ", target.sizes());
  XentShape s = shape_of(input);
  check_weight(weight, input, s.C);
  return s;
}

void check_backward_extras(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                           const at::Tensor& lse, const XentShape& shape, const at::Tensor& input) {
  const c10::IntArrayRef want(shape.loss_sizes);
  TORCH_CHECK_VALUE(grad_loss.sizes() == want, "smoothing_ext: grad_loss must have shape ", want,
                    " for input of shape ", input.sizes(), ", got ", grad_loss.sizes());
  TORCH_CHECK_VALUE(lse.sizes() == want, "smoothing_ext: lse must have shape ", want,
                    " for input of shape ", input.sizes(), ", got ", lse.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_loss.scalar_type()) && at::isFloatingType(lse.scalar_type()),
                   "smoothing_ext: grad_loss and lse must be floating point");
  TORCH_CHECK(grad_loss.device() == input.device() && lse.device() == input.device(),
              "smoothing_ext: grad_loss and lse must be on the input's device ", input.device());
  if (grad_lse.has_value() && grad_lse->defined()) {
    TORCH_CHECK_VALUE(grad_lse->sizes() == want, "smoothing_ext: grad_lse must have shape ", want,
                      " for input of shape ", input.sizes(), ", got ", grad_lse->sizes());
    TORCH_CHECK(grad_lse->device() == input.device(),
                "smoothing_ext: grad_lse must be on the input's device ", input.device());
  }
}

double check_softcap(const std::optional<double>& softcap, at::ScalarType acc) {
  if (!softcap.has_value()) return 0.0;
  const double c = *softcap;
  const bool ok = acc == at::kDouble ? (std::isfinite(c) && c > 0.0)
                                     : (std::isfinite(static_cast<float>(c)) && static_cast<float>(c) > 0.0f);
  TORCH_CHECK_VALUE(ok, "smoothing_ext: softcap must be None or a finite number > 0, got ", c);
  return c;
}

void check_fused_extras(double z_loss, const std::optional<at::Tensor>& grad_scale, const at::Tensor& input,
                        bool inplace) {
  TORCH_CHECK_VALUE(std::isfinite(z_loss) && z_loss >= 0.0, "smoothing_ext: z_loss must be a finite number >= 0, got ",
                    z_loss);
  if (grad_scale.has_value() && grad_scale->defined()) {
    const at::Tensor& g = *grad_scale;
    TORCH_CHECK_VALUE(g.numel() == 1 && at::isFloatingType(g.scalar_type()),
                      "smoothing_ext: grad_scale must be a one-element floating-point tensor, got ", g.scalar_type(),
                      " with shape ", g.sizes());
    TORCH_CHECK(g.device() == input.device(), "smoothing_ext: grad_scale is on ", g.device(), " but input is on ",
                input.device(), "; move both to the same device");
  }
  if (inplace) {
    TORCH_CHECK_VALUE(input.is_contiguous(),
                      "smoothing_ext: the in-place fused gradient is written over input, which must be contiguous; "
                      "got input of shape ", input.sizes(), " with strides ", input.strides(),
                      " (call .contiguous() first, or use the out-of-place form)");
  }
}

XentShape check_scale_rows(const at::Tensor& grad, const at::Tensor& scale) {
  check_input(grad);
  TORCH_CHECK_VALUE(grad.is_contiguous(), "smoothing_ext: grad must be contiguous, got shape ", grad.sizes(),
                    " with strides ", grad.strides());
  XentShape s = shape_of(grad);
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), "smoothing_ext: scale must be floating point, got ",
                   scale.scalar_type());
  TORCH_CHECK_VALUE(scale.numel() == 1 || scale.sizes() == c10::IntArrayRef(s.loss_sizes),
                    "smoothing_ext: scale must have one element or shape ", c10::IntArrayRef(s.loss_sizes),
                    " for grad of shape ", grad.sizes(), ", got ", scale.sizes());
  TORCH_CHECK(scale.device() == grad.device(), "smoothing_ext: scale is on ", scale.device(), " but grad is on ",
              grad.device(), "; move both to the same device");
  return s;
}

at::Tensor index_target_as_int64(const at::Tensor& target) {
  return target.to(at::kLong).contiguous();
}

at::Tensor weight_as_acc(const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  if (!weight.has_value() || !weight->defined()) return at::Tensor();
  return weight->to(acc).contiguous();
}

at::Tensor grad_as_acc(const at::Tensor& grad, at::ScalarType acc) {
  return grad.to(acc).contiguous();
}

void throw_bad_target(int64_t value, int64_t position, const at::Tensor& input,
                      const at::Tensor& target, int64_t ignore_index) {
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  // PyTorch's own wording first (its tests match it), then where and why
  TORCH_CHECK_INDEX(false, "Target ", value, " is out of bounds. smoothing_ext: target value ", value,
                    " at flat position ", position,
                    " is out of bounds: class indices must be in [0, ", C, ") or equal to ignore_index=",
                    ignore_index, " (input shape ", input.sizes(), ", target shape ", target.sizes(), ")");
  TORCH_INTERNAL_ASSERT(false);  // unreachable, keeps [[noreturn]] honest
}

}  // namespace smoothing_ext
