// Kernels for AVX2 + FMA processors (x86-64-v3).
#include "kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "kernel_avx2_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cross_entropy_kernel_impl.h"
#include "bce_kernel_impl.h"
static_assert(at::vec::AVX2::Vectorized<float>::size() == 8, "AVX2 build did not pick 256-bit vectors");
#pragma GCC pop_options

SMOOTHING_EXT_KERNEL_TABLES(avx2, AVX2)
#else
SMOOTHING_EXT_EMPTY_KERNEL_TABLES(avx2)
#endif
