// The one schema block of smoothing_ext, and the Python module stub that loads it.
//
// Label-smoothed cross entropy, row i of logits x (C classes), class weights w (all 1 if absent),
// W = sum_j w_j, smoothing eps in [0, 1]:
//   lse_i  = log sum_j exp(x_j)
//   index target t:        q_j = (1 - eps) [j == t] + eps / C
//     loss_i = (1 - eps) w_t (lse_i - x_t) + (eps / C) (W lse_i - sum_j w_j x_j)
//     d loss_i / d x_j = ((1 - eps) w_t + (eps / C) W) p_j - (1 - eps) w_t [j == t] - (eps / C) w_j
//     rows with t == ignore_index: loss 0, gradient 0, w is never read.
//   probability target y:  q_j = (1 - eps) y_j + eps / C
//     loss_i = sum_j w_j q_j (lse_i - x_j),   d loss_i / d x_j = (sum_k w_k q_k) p_j - w_j q_j
//   p_j = exp(x_j - lse_i); d lse_i / d x_j = p_j.
//
// Shapes: input (C,), (N, C) or (N, C, d1, ..., dk); index target (), (N,) or (N, d1, ..., dk),
// int64/int32/uint8; probability target: the input's shape. `loss` and `lse` have the target's
// (index) or the input-without-dim-1 (probability) shape and the accumulation dtype: float32 for
// float32/bfloat16/float16 input, float64 for float64. Reductions happen in Python on these.
// The backward ops take the upstream gradients of both outputs (grad_lse may be None) and return
// the gradient w.r.t. the input, in the input's dtype.
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
      "float label_smoothing) -> (Tensor loss, Tensor lse)");
  m.def(
      "_cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor input, Tensor target, "
      "Tensor? weight, Tensor lse, int ignore_index, float label_smoothing) -> Tensor");
  m.def(
      "cross_entropy_prob_forward(Tensor input, Tensor target, Tensor? weight, "
      "float label_smoothing) -> (Tensor loss, Tensor lse)");
  m.def(
      "_cross_entropy_prob_backward(Tensor grad_loss, Tensor? grad_lse, Tensor input, "
      "Tensor target, Tensor? weight, Tensor lse, float label_smoothing) -> Tensor");
  // Instruction set of the CPU kernels in use: default, avx2 or avx512.
  m.def("_cpu_capability() -> str", &smoothing_ext::cpu_capability);
}
