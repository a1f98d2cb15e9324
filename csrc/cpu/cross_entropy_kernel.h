// Interface between the CPU host functions (cross_entropy_cpu.cpp) and the vectorized kernels.
//
// The kernels are compiled once per instruction set (kernels_{default,avx2,avx512}.cpp
// include cross_entropy_kernel_impl.h with a different CPU_CAPABILITY) and one table is picked at
// run time from what the processor supports, the way ATen's own kernels are dispatched. The
// arguments are raw pointers so that no ATen inline function is compiled for a wider instruction
// set than the machine running it may have.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace smoothing_ext::cpu {

struct XentArgs {
  c10::ScalarType dtype;     // input (and probability target) dtype; acc = float or double
  const void* input;         // (N, C, S) contiguous
  const void* target;        // int64 (N, S) indices, or (N, C, S) probabilities of target_dtype
  c10::ScalarType target_dtype;  // probabilities: the input dtype or the accumulation dtype
  const void* weight;        // acc dtype (C,), or nullptr
  double weight_sum;         // sum of weight (C when weight is nullptr)
  int64_t N, C, S;
  int64_t ignore_index;
  double on, off;            // smoothed target q_j = on [j == t] + off (index) / on y_j + off (prob)
  double softcap;            // > 0: logits are capped to softcap * tanh(x / softcap); 0: off
  // fused forward+backward: gradient of loss_i + z_loss lse_i^2 (non-ignored rows), times grad_scale
  double z_loss;
  double grad_scale;
  // forward outputs, acc dtype (N, S)
  void* loss;
  void* lse;
  // backward inputs (acc dtype (N, S); grad_lse may be nullptr) and output (input dtype)
  const void* grad_loss;
  const void* grad_lse;
  const void* lse_in;
  void* grad_input;          // may be `input` itself (fused, in place)
  int64_t scale_numel;       // _scale_grad_rows_: grad_loss holds 1 or N * S factors
};

struct KernelTable {
  const char* name;
  // Returns -1, or the smallest flat (n * S + s) position whose target is neither in [0, C) nor
  // ignore_index (loss and lse of such rows are NaN).
  int64_t (*index_forward)(const XentArgs&);
  void (*index_backward)(const XentArgs&);
  void (*prob_forward)(const XentArgs&);
  void (*prob_backward)(const XentArgs&);
  // forward + gradient in one pass (index targets); targets were checked by the caller
  void (*index_fused)(const XentArgs&);
  // grad_input[n, :, s] *= grad_loss[n * S + s] (or grad_loss[0]); rows with factor 1 untouched
  void (*scale_rows)(const XentArgs&);
};

KernelTable kernels_default();
KernelTable kernels_avx2();
KernelTable kernels_avx512();

// The table for this processor. SMOOTHING_EXT_CPU_CAPABILITY=default|avx2|avx512 (read once)
// forces a lower one, for tests and for comparing instruction sets.
const KernelTable& active_kernels();

}  // namespace smoothing_ext::cpu
