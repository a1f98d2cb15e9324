// Kernels for AVX-512 (F, BW, VL, DQ) processors (x86-64-v4).
#include "kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "cross_entropy_kernel_impl.h"
#include "bce_kernel_impl.h"
static_assert(at::vec::AVX512::Vectorized<float>::size() == 16, "AVX512 build did not pick 512-bit vectors");
#pragma GCC pop_options

namespace smoothing_ext::cpu {
KernelTable kernels_avx512() { return AVX512::make_table("avx512"); }
}  // namespace smoothing_ext::cpu
namespace smoothing_ext::bce {
KernelTable kernels_avx512() { return AVX512::make_table("avx512"); }
}  // namespace smoothing_ext::bce
#else
namespace smoothing_ext::cpu {
KernelTable kernels_avx512() { return KernelTable{}; }
}  // namespace smoothing_ext::cpu
namespace smoothing_ext::bce {
KernelTable kernels_avx512() { return KernelTable{}; }
}  // namespace smoothing_ext::bce
#endif
