// Kernels for any x86-64 / other processor (at::vec's portable DEFAULT implementation).
#include "kernel_prelude.h"

#define CPU_CAPABILITY DEFAULT
#include "cross_entropy_kernel_impl.h"
#include "bce_kernel_impl.h"

namespace smoothing_ext::cpu {
KernelTable kernels_default() { return DEFAULT::make_table("default"); }
}  // namespace smoothing_ext::cpu
namespace smoothing_ext::bce {
KernelTable kernels_default() { return DEFAULT::make_table("default"); }
}  // namespace smoothing_ext::bce
