// Kernels for any x86-64 / other processor (at::vec's portable DEFAULT implementation).
#include "kernel_prelude.h"

#define CPU_CAPABILITY DEFAULT
#include "cross_entropy_kernel_impl.h"
#include "bce_kernel_impl.h"

SMOOTHING_EXT_KERNEL_TABLES(default, DEFAULT)
