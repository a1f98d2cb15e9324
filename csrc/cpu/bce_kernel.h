// Binary cross entropy with logits (label-smoothed): the interface between the host functions
// (bce_cpu.cpp, and bce_cuda.cpp for the shared argument preparation) and the vectorized CPU
// kernels, which are compiled once per instruction set (kernels_{default,avx2,avx512}.cpp
// include bce_kernel_impl.h with a different CPU_CAPABILITY), like the cross-entropy kernels.
//
// Every header below is included BEFORE a kernel translation unit switches the instruction set,
// so their inline functions are compiled for the baseline ISA in every copy and the linker may
// keep any copy. Only at::vec (namespaced per CPU_CAPABILITY) and the kernels come after.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include <smoothing_ext/bce_math.h>

namespace smoothing_ext::bce {

// The flattened, contiguous input and its operands (see bce::Operand for the broadcast pattern).
struct CpuArgs {
  c10::ScalarType dtype;  // input dtype; accumulation in float (double for double)
  const void* input;
  int64_t numel;
  Operand target;      // always present
  Operand weight;      // ptr == nullptr: absent
  Operand pos_weight;  // ptr == nullptr: absent
  Operand grad;        // backward: upstream gradient (always present there)
  double eps;
  void* loss;        // forward output (sum: a single value), accumulation dtype
  void* grad_input;  // backward output, input dtype
};

struct KernelTable {
  const char* name;
  void (*forward)(const CpuArgs&);
  void (*backward)(const CpuArgs&);
  void (*sum)(const CpuArgs&);  // forward summed over all elements into *loss (one acc value)
};

KernelTable kernels_default();
KernelTable kernels_avx2();
KernelTable kernels_avx512();

// The table of the instruction set the cross-entropy kernels use (same processor check, same
// SMOOTHING_EXT_CPU_CAPABILITY override).
const KernelTable& active_kernels();

// ---- host-side argument handling, shared by the CPU and CUDA host functions (bce_cpu.cpp) ------

// Checked arguments with every operand described as a bce::Operand over `x`, the contiguous
// input. The tensors the operands point into are kept alive here.
struct Prepared {
  at::Tensor x;
  at::Tensor keep[4];
  Operand target{}, weight{}, pos_weight{}, grad{};
  int64_t numel = 0;
};

// Checks every argument (naming it and the shapes) and describes the operands. grad_loss is
// nullptr for the forward. Nothing is read or copied when the input is empty.
Prepared prepare(const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                 const std::optional<at::Tensor>& pos_weight, double label_smoothing,
                 const at::Tensor* grad_loss);

inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace smoothing_ext::bce
