// Conversions between the element types of the CUDA kernels (float, double, __half,
// __nv_bfloat16) and their accumulation type, shared by cross_entropy_kernels.cuh and
// bce_kernels.cuh. Torch-free, like those headers (also compiled by g++ against ../shared/simt).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstring>
#include <type_traits>

namespace smoothing_ext {
namespace cuda_elem {

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Converts 16 bytes of elements (N of them) to the accumulation type. bf16: from the 32-bit words of
// the pack, the low element is the word shifted left by 16 and the high one the word with its low 16
// bits cleared -- one integer instruction each, where the per-element conversion also extracts the
// upper half first (PRMT). Other types convert element by element.
template <int N, typename T, typename A>
__device__ __forceinline__ void pack_to_acc(const T (&v)[N], A (&out)[N]) {
  if constexpr (sizeof(T) == 2 && sizeof(A) == 4 && N % 2 == 0 && !std::is_same<T, __half>::value) {
    unsigned int w[N / 2];
    memcpy(w, v, sizeof(w));
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const unsigned int lo = w[i] << 16, hi = w[i] & 0xffff0000u;
      memcpy(&out[2 * i], &lo, 4);
      memcpy(&out[2 * i + 1], &hi, 4);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_acc(v[i]);
  }
}

// Larger of the two 16-bit floats of a 32-bit word, per half: a and b hold pairs of T (__half or
// __nv_bfloat16). One HMNMX2 on sm_80+; NaN is never chosen over a number (as fmaxf).
template <typename T>
__device__ __forceinline__ unsigned int pair_max(unsigned int a, unsigned int b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using T2 = typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type;
  T2 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const T2 r = __hmax2(x, y);
  unsigned int out;
  memcpy(&out, &r, 4);
  return out;
#else
  T x[2], y[2];
  memcpy(x, &a, 4);
  memcpy(y, &b, 4);
  float m[2];
  for (int i = 0; i < 2; ++i) {
    const float fx = to_acc(x[i]), fy = to_acc(y[i]);
    m[i] = fx != fx ? fy : (fy != fy ? fx : (fx > fy ? fx : fy));
  }
  // the larger input itself, bit for bit (no rounding: it is one of the two)
  T r[2] = {m[0] == to_acc(x[0]) ? x[0] : y[0], m[1] == to_acc(x[1]) ? x[1] : y[1]};
  unsigned int out;
  memcpy(&out, r, 4);
  return out;
#endif
}

// Rounds an accumulation value to the element type (round to nearest even).
template <typename scalar_t>
struct FromAcc;
template <>
struct FromAcc<float> {
  static __device__ __forceinline__ float cvt(float v) { return v; }
};
template <>
struct FromAcc<double> {
  static __device__ __forceinline__ double cvt(double v) { return v; }
};
template <>
struct FromAcc<__half> {
  static __device__ __forceinline__ __half cvt(float v) { return __float2half_rn(v); }
};
template <>
struct FromAcc<__nv_bfloat16> {
  static __device__ __forceinline__ __nv_bfloat16 cvt(float v) { return __float2bfloat16_rn(v); }
};

// Stores a pack of elements (a multiple of 16 bytes, 16-byte aligned at dst) as 128-bit stores. A
// plain struct copy of __half / __nv_bfloat16 members is split by nvcc into one 16-bit store per
// member; the bit copy into uint4 words is register moves (PRMT), then one STG.E.128 per 16 bytes.
// OPAQUE: the PTX instruction itself (with a compiler barrier), for call sites where the optimizer
// still split the uint4 store into 32-bit pieces (the BCE kernels); elsewhere the plain store leaves
// the scheduler free (fewer registers: the opaque store costs the row kernels up to 24).
template <bool OPAQUE = false, typename T>
__device__ __forceinline__ void store_pack16(void* dst, const T& v) {
  static_assert(sizeof(T) % 16 == 0, "store_pack16 stores whole 16-byte words");
  constexpr int kWords = static_cast<int>(sizeof(T) / 16);
  unsigned int u[4 * kWords];
  memcpy(u, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
#if defined(__CUDA_ARCH__)
    if constexpr (OPAQUE) {
      // st.global takes a global-space address: the generic pointer converted explicitly
      const size_t global = __cvta_generic_to_global(static_cast<uint4*>(dst) + i);
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(global), "r"(u[4 * i]), "r"(u[4 * i + 1]),
                   "r"(u[4 * i + 2]), "r"(u[4 * i + 3])
                   : "memory");
      continue;
    }
#endif
    reinterpret_cast<uint4*>(dst)[i] = make_uint4(u[4 * i], u[4 * i + 1], u[4 * i + 2], u[4 * i + 3]);
  }
}

}  // namespace cuda_elem
}  // namespace smoothing_ext
