// Headers every kernel translation unit includes BEFORE it switches the instruction set: their
// inline functions are then compiled for the baseline ISA in every copy, so the linker may pick
// any copy. Only at::vec (namespaced per CPU_CAPABILITY) and the kernels come after the switch.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "bce_kernel.h"
#include "cross_entropy_kernel.h"

// kernels_<isa>() of both kernel families, from the copy compiled in namespace NS, or empty tables
// where that copy is not compiled (not x86-64 / not GCC-compatible).
#define SMOOTHING_EXT_KERNEL_TABLES(isa, NS)                                          \
  namespace smoothing_ext::cpu {                                                      \
  KernelTable kernels_##isa() { return NS::make_table(#isa); }                        \
  }                                                                                   \
  namespace smoothing_ext::bce {                                                      \
  KernelTable kernels_##isa() { return NS::make_table(#isa); }                        \
  }
#define SMOOTHING_EXT_EMPTY_KERNEL_TABLES(isa)                                        \
  namespace smoothing_ext::cpu {                                                      \
  KernelTable kernels_##isa() { return KernelTable{}; }                               \
  }                                                                                   \
  namespace smoothing_ext::bce {                                                      \
  KernelTable kernels_##isa() { return KernelTable{}; }                               \
  }
