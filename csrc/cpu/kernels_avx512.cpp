// Kernels for AVX-512 (F, BW, VL, DQ) processors (x86-64-v4).
// GCC 12 reports -Wmaybe-uninitialized ~1500 times inside its own avx512fintrin.h (the
// _mm512_undefined_* idiom of the intrinsics at::vec uses): 3.5 MB of build log, none of it ours.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernel_prelude.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "kernel_avx2_macros.h"
// ... and the AVX-512 ones.
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

SMOOTHING_EXT_KERNEL_TABLES(avx512, AVX512)
#else
SMOOTHING_EXT_EMPTY_KERNEL_TABLES(avx512)
#endif
