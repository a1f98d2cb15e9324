// Kernels for AVX2 + FMA processors (x86-64-v3).
#include "kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// The pragma does not define the ISA macros that at::vec and sleef.h test; define them here.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cross_entropy_kernel_impl.h"
#include "bce_kernel_impl.h"
static_assert(at::vec::AVX2::Vectorized<float>::size() == 8, "AVX2 build did not pick 256-bit vectors");
#pragma GCC pop_options

namespace smoothing_ext::cpu {
KernelTable kernels_avx2() { return AVX2::make_table("avx2"); }
}  // namespace smoothing_ext::cpu
namespace smoothing_ext::bce {
KernelTable kernels_avx2() { return AVX2::make_table("avx2"); }
}  // namespace smoothing_ext::bce
#else
namespace smoothing_ext::cpu {
KernelTable kernels_avx2() { return KernelTable{}; }
}  // namespace smoothing_ext::cpu
namespace smoothing_ext::bce {
KernelTable kernels_avx2() { return KernelTable{}; }
}  // namespace smoothing_ext::bce
#endif
