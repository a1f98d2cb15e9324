// BCE-with-logits kernels for any processor (at::vec's portable DEFAULT implementation).
#include "bce_kernel.h"

#define CPU_CAPABILITY DEFAULT
#include "bce_kernel_impl.h"

namespace smoothing_ext::bce {
KernelTable kernels_default() { return DEFAULT::make_table("default"); }
}  // namespace smoothing_ext::bce
