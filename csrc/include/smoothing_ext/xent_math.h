// Per-row math of label-smoothed cross entropy, shared by the CPU kernels and the CUDA kernels.
//
// Torch-free on purpose: the CUDA kernel headers include this under nvcc and under the CPU test
// runtime (shared/simt), and the CPU kernels include it under g++. The formulas themselves are
// stated once, in csrc/smoothing_ext.cpp; this file only evaluates them.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(SIMT_CPU)
#define SMOOTHING_HD __host__ __device__ __forceinline__
#else
#define SMOOTHING_HD inline
#endif

namespace smoothing_ext {

// Overloads instead of std:: calls so that the same code picks the float or double device
// function under nvcc and the libm one on the host.
SMOOTHING_HD float se_exp(float x) { return ::expf(x); }
SMOOTHING_HD double se_exp(double x) { return ::exp(x); }
SMOOTHING_HD float se_expm1(float x) { return ::expm1f(x); }
SMOOTHING_HD double se_expm1(double x) { return ::expm1(x); }
SMOOTHING_HD float se_log1p(float x) { return ::log1pf(x); }
SMOOTHING_HD double se_log1p(double x) { return ::log1p(x); }
SMOOTHING_HD float se_tanh(float x) { return ::tanhf(x); }
SMOOTHING_HD double se_tanh(double x) { return ::tanh(x); }

// Smoothed class-index target: q_j = on * [j == t] + off.
//   uniform (PyTorch):    on = 1 - eps, off = eps / C
//   off-target (fairseq): on = 1 - eps - eps / (C - 1), off = eps / (C - 1)
template <typename T>
struct SmoothCoefs {
  T on;
  T off;
};

template <typename T>
SMOOTHING_HD SmoothCoefs<T> uniform_coefs(double eps, int64_t C) {
  SmoothCoefs<T> c;
  c.on = static_cast<T>(1.0 - eps);
  c.off = static_cast<T>(C > 0 ? eps / static_cast<double>(C) : 0.0);
  return c;
}

// off_target: the target keeps 1 - eps exactly and the other C - 1 classes share eps. With C == 1
// there is no other class: no smoothing.
template <typename T>
SMOOTHING_HD SmoothCoefs<T> off_target_coefs(double eps, int64_t C) {
  SmoothCoefs<T> c;
  const double off = C > 1 ? eps / static_cast<double>(C - 1) : 0.0;
  c.on = static_cast<T>(C > 1 ? 1.0 - eps - off : 1.0);
  c.off = static_cast<T>(off);
  return c;
}

template <typename T>
SMOOTHING_HD SmoothCoefs<T> smooth_coefs(double eps, int64_t C, bool off_target) {
  return off_target ? off_target_coefs<T>(eps, C) : uniform_coefs<T>(eps, C);
}

// Logit soft-capping (cap > 0): x -> cap tanh(x / cap), applied as the logits are loaded, and the
// chain-rule factor d(capped)/dx = 1 - (capped / cap)^2 applied to the gradient as it is stored.
template <typename T>
SMOOTHING_HD T softcap_apply(T x, T cap) {
  return cap * se_tanh(x / cap);
}

template <typename T>
SMOOTHING_HD T softcap_slope(T capped, T cap) {
  const T r = capped / cap;
  return T(1) - r * r;
}

// log-sum-exp from the row maximum m, the number of entries equal to m (each contributes exactly
// exp(0) = 1) and the sum of the other exp(x_j - m). Keeping the ones out of `rest` keeps 1 - p_t
// when the prediction is confident: 1 + rest rounds rest away in fp32 once rest < 6e-8.
template <typename T>
SMOOTHING_HD T lse_from_parts(T m, T count_max, T rest) {
  return m + se_log1p((count_max - T(1)) + rest);
}

// Loss of one row with a class-index target t (not ignored).
//   sum_wx = sum_j w_j x_j, w_t = w[t], W = sum_j w_j (unweighted: sum_j x_j, 1, C).
// A term whose coefficient is zero is skipped rather than multiplied: with eps = 0 a -inf logit
// in another class makes sum_wx = -inf, and 0 * inf would turn an exact loss into NaN.
template <typename T>
SMOOTHING_HD T index_row_loss(T lse, T x_t, T sum_wx, T w_t, T W, SmoothCoefs<T> c) {
  T loss = T(0);
  if (c.on != T(0)) loss += c.on * w_t * (lse - x_t);
  if (c.off != T(0)) loss += c.off * (W * lse - sum_wx);
  return loss;
}

// d loss / d x_j = A * p_j - B_j with A = on * w_t + off * W and B_j = off * w_j + on * w_t * [j == t].
template <typename T>
SMOOTHING_HD T index_p_coef(T w_t, T W, SmoothCoefs<T> c) {
  return c.on * w_t + c.off * W;
}

// The gradient at the target class, evaluated as on * w_t * (p_t - 1) + off * (W * p_t - w_t)
// with p_t - 1 = expm1(x_t - lse): forming p_t first and then subtracting 1 cancels
// catastrophically when p_t -> 1.
template <typename T>
SMOOTHING_HD T index_target_grad(T x_t, T lse, T w_t, T W, SmoothCoefs<T> c) {
  const T pm1 = se_expm1(x_t - lse);
  T g = c.on * w_t * pm1;
  if (c.off != T(0)) g += c.off * (W * (pm1 + T(1)) - w_t);
  return g;
}

// Probability targets y: q_j = on * y_j + off with the same coefficients (uniform: 1 - eps, eps / C),
// loss = sum_j w_j q_j (lse - x_j) = A * lse - B with A = sum_j w_j q_j, B = sum_j w_j q_j x_j,
// and d loss / d x_j = A * p_j - w_j q_j.
template <typename T>
SMOOTHING_HD T prob_q(T y, SmoothCoefs<T> c) {
  return c.on * y + c.off;
}

template <typename T>
SMOOTHING_HD T prob_row_loss(T lse, T A, T B) {
  return A * lse - B;
}

}  // namespace smoothing_ext
