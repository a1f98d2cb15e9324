// The one schema block of smoothing_ext, and the Python module stub that loads it.
//
// Label-smoothed cross entropy, row i of logits x (C classes), class weights w (all 1 if absent),
// W = sum_j w_j, smoothing eps in [0, 1]:
//   softcap c > 0 (optional): every logit is first replaced by c tanh(x / c); the formulas below
//     use the capped logits, and the gradient is multiplied by d(capped)/dx = 1 - (capped / c)^2.
//   lse_i  = log sum_j exp(x_j)
//   index target t:        q_j = on [j == t] + off, with
//       uniform (PyTorch, default):   on = 1 - eps,             off = eps / C
//       off_target (fairseq):         on = 1 - eps - eps/(C-1), off = eps / (C - 1)   (C == 1: 1, 0)
//     loss_i = on w_t (lse_i - x_t) + off (W lse_i - sum_j w_j x_j)
//     d loss_i / d x_j = (on w_t + off W) p_j - on w_t [j == t] - off w_j
//     rows with t == ignore_index: loss 0, gradient 0, w is never read.
//   probability target y:  q_j = on y_j + off (the same on, off)
//     loss_i = sum_j w_j q_j (lse_i - x_j),   d loss_i / d x_j = (sum_k w_k q_k) p_j - w_j q_j
//   p_j = exp(x_j - lse_i); d lse_i / d x_j = p_j.
//
// Shapes: input (C,), (N, C) or (N, C, d1, ..., dk); index target (), (N,) or (N, d1, ..., dk),
// int64/int32/uint8; probability target: the input's shape. `loss` and `lse` have the target's
// (index) or the input-without-dim-1 (probability) shape and the accumulation dtype: float32 for
// float32/bfloat16/float16 input, float64 for float64. Reductions happen in Python on these.
// The backward ops take the upstream gradients of both outputs (grad_lse may be None) and return
// the gradient w.r.t. the input, in the input's dtype.
//
// Fused gradient (index targets): cross_entropy_fused returns loss, lse and
//   grad = s * d(loss_i + z lse_i^2 [t_i != ignore_index]) / d x
// computed in the same pass as the loss (s = grad_scale, a 0-dim acc-dtype tensor read on the
// device, 1 if absent; z = z_loss). The z lse^2 term is NOT added to `loss` (Python adds it).
// cross_entropy_fused_ writes that gradient over `input` (contiguous required) instead.
// _scale_grad_rows_ multiplies each row of such a gradient by its upstream gradient (0-dim, or the
// loss shape), leaving rows whose factor is exactly 1 untouched (neither read nor written).
//
// Binary cross entropy with logits, element-wise, y' = y (1 - eps) + eps / 2, weight w and
// pos_weight pw broadcast to the input (pw along the last dim, as in PyTorch):
//   loss = w [(1 - y') x + (1 + (pw - 1) y') softplus(-x)],
//   d loss / d x = w [(1 + (pw - 1) y') sigmoid(x) - pw y'];   loss in the accumulation dtype.
// binary_cross_entropy_with_logits_sum returns the 0-dim sum of that loss (same pass, the loss never
// written; fixed-order reduction, so bit-identical across calls and CPU thread counts).
#ifndef SMOOTHING_EXT_NO_PYTHON  // defined by the CMake/LibTorch build (no Python there)
#include <Python.h>
#endif
#include <torch/library.h>

#include <string>

namespace smoothing_ext {
std::string cpu_capability();  // csrc/cpu/cross_entropy_cpu.cpp
}

#ifndef SMOOTHING_EXT_NO_PYTHON
// `import smoothing_ext._C` only has to load this library so that the static registrations below
// run; the ops are then reached through torch.ops.smoothing_ext.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "smoothing_ext compiled ops (see torch.ops.smoothing_ext)", -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif  // SMOOTHING_EXT_NO_PYTHON

TORCH_LIBRARY(smoothing_ext, m) {
  m.def(
      "cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, bool off_target=False, float? softcap=None) -> (Tensor loss, Tensor lse)");
  m.def(
      "_cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor input, Tensor target, "
      "Tensor? weight, Tensor lse, int ignore_index, float label_smoothing, bool off_target=False, "
      "float? softcap=None) -> Tensor");
  m.def(
      "cross_entropy_prob_forward(Tensor input, Tensor target, Tensor? weight, "
      "float label_smoothing, bool off_target=False, float? softcap=None) -> (Tensor loss, Tensor lse)");
  m.def(
      "_cross_entropy_prob_backward(Tensor grad_loss, Tensor? grad_lse, Tensor input, "
      "Tensor target, Tensor? weight, Tensor lse, float label_smoothing, bool off_target=False, "
      "float? softcap=None) -> Tensor");
  m.def(
      "cross_entropy_fused(Tensor input, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, bool off_target, float? softcap, float z_loss, Tensor? grad_scale) "
      "-> (Tensor loss, Tensor lse, Tensor grad)");
  m.def(
      "cross_entropy_fused_(Tensor(a!) input, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, bool off_target, float? softcap, float z_loss, Tensor? grad_scale) "
      "-> (Tensor loss, Tensor lse)");
  m.def("_scale_grad_rows_(Tensor(a!) grad, Tensor scale) -> ()");
  m.def(
      "binary_cross_entropy_with_logits_forward(Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, float label_smoothing) -> Tensor");
  m.def(
      "binary_cross_entropy_with_logits_sum(Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, float label_smoothing) -> Tensor");
  m.def(
      "_binary_cross_entropy_with_logits_backward(Tensor grad_loss, Tensor input, Tensor target, "
      "Tensor? weight, Tensor? pos_weight, float label_smoothing) -> Tensor");
  // Instruction set of the CPU kernels in use: default, avx2 or avx512.
  m.def("_cpu_capability() -> str", &smoothing_ext::cpu_capability);
}
