// Per-element math of label-smoothed binary cross entropy with logits, shared by the CPU kernels
// (the scalar tails; the vector bodies evaluate the same expressions) and the CUDA kernels.
//
// Torch-free on purpose, like xent_math.h: included under nvcc, under g++ with ../shared/simt,
// and by the CPU kernels. The formula is stated once, in csrc/smoothing_ext.cpp; this file only
// evaluates it. Names live in smoothing_ext::bce so that this header and xent_math.h can meet in
// one translation unit.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(SIMT_CPU)
#define SMOOTHING_BCE_HD __host__ __device__ __forceinline__
#else
#define SMOOTHING_BCE_HD inline
#endif

namespace smoothing_ext {
namespace bce {

// One optional operand broadcast to the (contiguous, flattened) input: element i of the input
// reads element (i / inner) % period of `ptr`. That single pattern covers the usual broadcasts
// without materialising N x C copies: full tensor (inner 1, period numel), (C,) over (N, C)
// (inner 1, period C), (N, 1) (inner C, period N), a scalar or an expanded 0-stride grad
// (period 1), (1, C, 1) over (N, C, H) (inner H, period C). Anything else is materialised by the
// host code first.
struct Operand {
  const void* ptr;   // nullptr: absent (weight 1, pos_weight 1, grad 1)
  int64_t inner;     // >= 1
  int64_t period;    // >= 1
  int32_t is_acc;    // element type: 1 the accumulation type, 0 the input's type
  int32_t vec;       // CUDA only: full operand whose vector loads line up with the input's
};

SMOOTHING_BCE_HD float abs_(float v) { return ::fabsf(v); }
SMOOTHING_BCE_HD double abs_(double v) { return ::fabs(v); }
SMOOTHING_BCE_HD float exp_(float v) { return ::expf(v); }
SMOOTHING_BCE_HD double exp_(double v) { return ::exp(v); }
SMOOTHING_BCE_HD float log1p_(float v) { return ::log1pf(v); }
SMOOTHING_BCE_HD double log1p_(double v) { return ::log1p(v); }

// Smoothed target y' = on * y + off with on = 1 - eps, off = eps / 2 (two classes).
template <typename T>
struct Coefs {
  T on;
  T off;
};

template <typename T>
SMOOTHING_BCE_HD Coefs<T> coefs(double eps) {
  Coefs<T> c;
  c.on = static_cast<T>(1.0 - eps);
  c.off = static_cast<T>(0.5 * eps);
  return c;
}

// With A = 1 + (pw - 1) y' and B = pw y' (A - B = 1 - y'), e = exp(-|x|), l = log1p(e):
//   loss = w [(1 - y') x + A softplus(-x)] = w [(x >= 0 ? 1 - y' : B) |x| + A l]
//   dloss/dx = w [A sigmoid(x) - B]        = w [x >= 0 ? (1 - y') - A s : A s - B],  s = e / (1 + e)
// softplus(-x) = max(-x, 0) + l is split so that the two linear terms never cancel (x = -1e4 with
// y' = 0 would otherwise leave 1e4 - 1e4 + l = 0 instead of l), and for x >= 0 the gradient is
// formed from 1 - y' and s = sigmoid(-|x|) rather than sigmoid(x) - y' (exact 0 for y' = 1 and
// no rounding of sigmoid(x) to 1 near it). All terms are >= 0 for w, pw >= 0 and y' in [0, 1].
template <typename T>
SMOOTHING_BCE_HD T loss_elem(T x, T ys, T pw) {
  const T ax = abs_(x);
  const T A = T(1) + (pw - T(1)) * ys;
  return (x >= T(0) ? T(1) - ys : pw * ys) * ax + A * log1p_(exp_(-ax));
}

template <typename T>
SMOOTHING_BCE_HD T grad_elem(T x, T ys, T pw) {
  const T e = exp_(-abs_(x));
  const T s = e / (T(1) + e);
  const T A = T(1) + (pw - T(1)) * ys;
  return x >= T(0) ? (T(1) - ys) - A * s : A * s - pw * ys;
}

}  // namespace bce
}  // namespace smoothing_ext
