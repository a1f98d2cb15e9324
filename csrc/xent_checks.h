// Argument checks and shape logic shared by the CPU and CUDA host functions.
// Every check names the argument and the shapes, so that a mistake surfaces as a Python exception
// (ValueError / TypeError / IndexError / RuntimeError) and never as a crash or a wrong number.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace smoothing_ext {

// input viewed as (N, C, S): S is the product of the trailing spatial dims (1 for (N, C) and (C,)).
struct XentShape {
  int64_t N = 1;
  int64_t C = 1;
  int64_t S = 1;
  std::vector<int64_t> loss_sizes;  // shape of the per-element loss / lse
};

// Checks for the forward ops. `weight` is returned converted to the accumulation dtype (float32,
// or float64 for float64 input) and contiguous; `target` (index) to contiguous int64.
XentShape check_index_forward(const at::Tensor& input, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, double label_smoothing);
XentShape check_prob_forward(const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, double label_smoothing);

// Checks the extra arguments of the backward ops (shapes of grad_loss / grad_lse / lse).
void check_backward_extras(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                           const at::Tensor& lse, const XentShape& shape, const at::Tensor& input);

at::ScalarType acc_dtype(at::ScalarType input_dtype);

// Contiguous int64 copy of an index target (no copy when it already is one).
at::Tensor index_target_as_int64(const at::Tensor& target);

// Weight in the accumulation dtype, contiguous; undefined tensor when absent.
at::Tensor weight_as_acc(const std::optional<at::Tensor>& weight, at::ScalarType acc);

// Upstream gradient in the accumulation dtype, contiguous (expanded scalars are materialised:
// that is N numbers, never N x C).
at::Tensor grad_as_acc(const at::Tensor& grad, at::ScalarType acc);

// softcap: absent, or a finite number > 0, also once rounded to the accumulation dtype (a cap that
// rounds to 0 or inf would divide by zero). Returns the cap, 0 when absent.
double check_softcap(const std::optional<double>& softcap, at::ScalarType acc);

// Extra arguments of the fused ops: z_loss finite and >= 0; grad_scale absent or a one-element
// floating tensor on the input's device; for the in-place form, a contiguous input.
void check_fused_extras(double z_loss, const std::optional<at::Tensor>& grad_scale, const at::Tensor& input,
                        bool inplace);

// _scale_grad_rows_: grad floating and contiguous; scale one element or the loss shape, on grad's
// device. Returns grad's (N, C, S) view.
XentShape check_scale_rows(const at::Tensor& grad, const at::Tensor& scale);

// Raise the same IndexError as the CPU path for a target value outside [0, C).
[[noreturn]] void throw_bad_target(int64_t value, int64_t position, const at::Tensor& input,
                                   const at::Tensor& target, int64_t ignore_index);

}  // namespace smoothing_ext
