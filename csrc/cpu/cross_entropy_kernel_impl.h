// Vectorized CPU kernels. Included once per instruction set by kernels_<isa>.cpp,
// which first includes the baseline headers (kernel_prelude.h), then defines
// CPU_CAPABILITY / CPU_CAPABILITY_<ISA> and a matching `#pragma GCC target`, then includes this.
// Everything here lives in `inline namespace CPU_CAPABILITY`, so the copies never collide.
//
// Traffic per row of C logits (S == 1): forward reads the row once from memory (the second,
// exp pass re-reads it from L2), backward reads it once and writes the gradient once.
// Rows of a (N, C, d1..dk) input are strided by S = d1*...*dk; they are processed in place,
// vectorized across the contiguous spatial positions, never transposed.

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <memory>

#include <smoothing_ext/xent_math.h>

#include "cross_entropy_kernel.h"
#include "vec_io.h"

namespace smoothing_ext::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// ---------------------------------------------------------------------------------------------
// exp. Every logit goes through exp once per pass, so its cost sets the speed once the data is
// in cache. Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for
// exp(r) (Cephes expf coefficients) and a scale by 2^k. Measured against float64 exp over
// [-103, 0] (tests/test_ops.py::test_fast_exp_error_bound): relative error below 2^-22 (about
// 2 ulp) for normal results. -inf gives exactly 0 (AVX2: everything below -87.33, where results
// would be subnormal), NaN propagates. Only arguments <= 0 occur (x - max, x - lse).
// ---------------------------------------------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> fast_exp(const Vectorized<float>& xv) {
  const __m512 lo = _mm512_set1_ps(-104.5f);  // exp(-104.5) rounds to 0 in fp32
  const __m512 hi = _mm512_set1_ps(88.37f);
  // max/min return their second operand when one is NaN: NaN stays NaN.
  __m512 x = _mm512_min_ps(hi, _mm512_max_ps(lo, __m512(xv)));
  __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  // scalef computes p * 2^k with correct underflow to subnormals and zero.
  return _mm512_scalef_ps(p, k);
}
#elif defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> fast_exp(const Vectorized<float>& xv) {
  const __m256 lo = _mm256_set1_ps(-87.33f);  // below: exp < FLT_MIN, returned as 0
  const __m256 hi = _mm256_set1_ps(88.37f);
  const __m256 xin = __m256(xv);
  __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, xin));
  __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^k built in the exponent field; k is in [-126, 128) after the clamp.
  __m256i ki = _mm256_cvtps_epi32(k);
  __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ki, _mm256_set1_epi32(127)), 23));
  __m256 res = _mm256_mul_ps(p, scale);
  // exact zero below the range (a -inf logit); NaN compares false and passes through
  return _mm256_andnot_ps(_mm256_cmp_ps(xin, lo, _CMP_LT_OQ), res);
}
#else
inline float exp_scalar(float v) { return std::exp(v); }
inline Vectorized<float> fast_exp(const Vectorized<float>& x) { return x.map(exp_scalar); }
#endif

inline Vectorized<double> fast_exp(const Vectorized<double>& x) { return x.exp(); }

// tanh for soft-capping, from fast_exp: tanh|u| = (1 - e) / (1 + e), e = exp(-2|u|) (argument
// <= 0, as fast_exp wants), and u - u^3/3 + 2u^5/15 below |u| = 1/8, where 1 - e would cancel.
// Relative error below ~5e-7 everywhere (a few ulp; tests/test_features.py compares with float64).
inline Vectorized<float> fast_tanh(const Vectorized<float>& u) {
  using V = Vectorized<float>;
  const V a = u.abs(), zero(0.0f), one(1.0f);
  const V e = fast_exp(a * V(-2.0f));
  const V big = (one - e) / (one + e);
  const V u2 = a * a;
  const V small = a + a * u2 * at::vec::fmadd(u2, V(2.0f / 15.0f), V(-1.0f / 3.0f));
  const V r = V::blendv(big, small, a < V(0.125f));
  return V::blendv(r, zero - r, u < zero);
}
inline Vectorized<double> fast_tanh(const Vectorized<double>& u) { return u.tanh(); }

// max without NaN bookkeeping: a NaN logit already poisons the exp sum (and so lse and the loss).
#if defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> vmax(const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm512_max_ps(a, b);
}
#elif defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> vmax(const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm256_max_ps(a, b);
}
#else
inline Vectorized<float> vmax(const Vectorized<float>& a, const Vectorized<float>& b) {
  return at::vec::maximum(a, b);
}
#endif
inline Vectorized<double> vmax(const Vectorized<double>& a, const Vectorized<double>& b) {
  return at::vec::maximum(a, b);
}

using vec_io::vload;
using vec_io::vstore1;
using vec_io::vstore2;

// Spatial positions processed together on the strided (N, C, d1..dk) path.
constexpr int64_t kLanes = 256;

// Largest row whose exps the fused kernel keeps (4 MiB of float per task); longer rows recompute.
constexpr int64_t kKeepMaxClasses = int64_t(1) << 20;

// Long sums are accumulated in blocks: each block of kSumBlock elements in fresh vector
// accumulators (at most 128 additions per lane), the block totals then added to the row's running
// vector totals. The rounding error of a 262144-class row then grows like 128 + C / kSumBlock
// additions instead of C / (2 K) (8192 per lane with AVX2), which is what made the sums of a
// 128k-vocabulary row lose ~1e-4 relative. A multiple of 2 K for every vector width.
constexpr int64_t kSumBlock = 2048;
// The same for scalar (strided-row) loops: one running partial per kScalarBlock terms.
constexpr int64_t kScalarBlock = 256;

template <typename T>
struct BlockedSum {
  T total = T(0), part = T(0);
  int64_t n = 0;
  void add(T v) {
    part += v;
    if (++n == kScalarBlock) {
      total += part;
      part = T(0);
      n = 0;
    }
  }
  T get() const { return total + part; }
};

template <typename acc_t>
inline acc_t hsum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t buf[Vectorized<acc_t>::size()];
  v.store(buf);
  // pairwise, so that the lanes' partial sums are combined as evenly as they were accumulated
  int64_t n = Vectorized<acc_t>::size();
  while (n > 1) {
    n /= 2;
    for (int64_t i = 0; i < n; ++i) buf[i] += buf[i + n];
  }
  return buf[0];
}

template <typename acc_t>
inline acc_t hmax(const Vectorized<acc_t>& v) {
  alignas(64) acc_t buf[Vectorized<acc_t>::size()];
  v.store(buf);
  acc_t m = buf[0];
  for (int64_t i = 1; i < Vectorized<acc_t>::size(); ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

template <typename acc_t>
inline acc_t scalar_exp(acc_t v) {
  return std::exp(v);
}

// ---------------------------------------------------------------------------------------------
// Logit loading policies. Every logit goes through `load`/`at` on its way in; with soft-capping
// that is y = c tanh(x / c), and every gradient element goes out through `out` (times dy/dx).
// Compile-time, so that the uncapped kernels are unchanged.
// ---------------------------------------------------------------------------------------------
template <typename acc_t>
struct NoCap {
  static constexpr bool kOn = false;
  template <typename scalar_t>
  Vectorized<acc_t> load(const scalar_t* p) const {
    return vload<scalar_t, acc_t>(p);
  }
  acc_t at(acc_t v) const { return v; }
  Vectorized<acc_t> out(const Vectorized<acc_t>& g, const Vectorized<acc_t>&) const { return g; }
  acc_t out1(acc_t g, acc_t) const { return g; }
};

template <typename acc_t>
struct SoftCap {
  static constexpr bool kOn = true;
  acc_t c;
  template <typename scalar_t>
  Vectorized<acc_t> load(const scalar_t* p) const {
    const Vectorized<acc_t> vc(c);
    return fast_tanh(vload<scalar_t, acc_t>(p) / vc) * vc;
  }
  acc_t at(acc_t v) const { return softcap_apply(v, c); }
  // g * (1 - (y / c)^2), y the capped logit
  Vectorized<acc_t> out(const Vectorized<acc_t>& g, const Vectorized<acc_t>& y) const {
    const Vectorized<acc_t> r = y / Vectorized<acc_t>(c);
    return g * (Vectorized<acc_t>(acc_t(1)) - r * r);
  }
  acc_t out1(acc_t g, acc_t y) const { return g * softcap_slope(y, c); }
};

// ---------------------------------------------------------------------------------------------
// per-row building blocks, contiguous rows (S == 1)
// ---------------------------------------------------------------------------------------------

// max_j x_j and sum_j w_j x_j (w == nullptr: sum_j x_j)
template <typename scalar_t, typename acc_t, typename Cap>
inline void row_max_sum(const scalar_t* x, int64_t C, const acc_t* w, const Cap& cap, acc_t& m_out, acc_t& s_out) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  V m0(ninf), m1(ninf), s0(acc_t(0)), s1(acc_t(0));
  const int64_t Cv = C - C % (2 * K);
  for (int64_t jb = 0; jb < Cv; jb += kSumBlock) {
    const int64_t je = std::min(Cv, jb + kSumBlock);
    V b0(acc_t(0)), b1(acc_t(0));
    if (w == nullptr) {
      for (int64_t j = jb; j < je; j += 2 * K) {
        const V a = cap.load(x + j), b = cap.load(x + j + K);
        m0 = vmax(m0, a);
        m1 = vmax(m1, b);
        b0 = b0 + a;
        b1 = b1 + b;
      }
    } else {
      for (int64_t j = jb; j < je; j += 2 * K) {
        const V a = cap.load(x + j), b = cap.load(x + j + K);
        m0 = vmax(m0, a);
        m1 = vmax(m1, b);
        b0 = at::vec::fmadd(a, V::loadu(w + j), b0);
        b1 = at::vec::fmadd(b, V::loadu(w + j + K), b1);
      }
    }
    s0 = s0 + b0;
    s1 = s1 + b1;
  }
  acc_t m = hmax(vmax(m0, m1));
  acc_t s = hsum(s0 + s1);
  for (int64_t j = Cv; j < C; ++j) {
    const acc_t v = cap.at(static_cast<acc_t>(x[j]));
    m = v > m ? v : m;
    s += w == nullptr ? v : w[j] * v;
  }
  m_out = m;
  s_out = s;
}

// Number of x_j equal to m, and the sum of exp(x_j - m) over the others (see lse_from_parts).
template <typename scalar_t, typename acc_t, typename Cap>
inline void row_sumexp(const scalar_t* x, int64_t C, acc_t m, const Cap& cap, acc_t& cnt_out, acc_t& rest_out) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const V vm(m), zero(acc_t(0)), one(acc_t(1));
  // counts are small integers, exact in any order: no blocking needed for them
  V r0(acc_t(0)), r1(acc_t(0)), c0(acc_t(0)), c1(acc_t(0));
  const int64_t Cv = C - C % (2 * K);
  for (int64_t jb = 0; jb < Cv; jb += kSumBlock) {
    const int64_t je = std::min(Cv, jb + kSumBlock);
    V b0(acc_t(0)), b1(acc_t(0));
    for (int64_t j = jb; j < je; j += 2 * K) {
      const V a = cap.load(x + j), b = cap.load(x + j + K);
      const V ea = fast_exp(a - vm), eb = fast_exp(b - vm);
      const V qa = (a == vm), qb = (b == vm);
      b0 = b0 + V::blendv(ea, zero, qa);
      b1 = b1 + V::blendv(eb, zero, qb);
      c0 = c0 + V::blendv(zero, one, qa);
      c1 = c1 + V::blendv(zero, one, qb);
    }
    r0 = r0 + b0;
    r1 = r1 + b1;
  }
  acc_t rest = hsum(r0 + r1);
  acc_t cnt = hsum(c0 + c1);
  for (int64_t j = Cv; j < C; ++j) {
    const acc_t v = cap.at(static_cast<acc_t>(x[j]));
    if (v == m) {
      cnt += acc_t(1);
    } else {
      rest += scalar_exp(v - m);
    }
  }
  cnt_out = cnt;
  rest_out = rest;
}

// y[j] = capped x[j] for a whole row (acc dtype).
template <typename scalar_t, typename acc_t, typename Cap>
inline void row_capped(const scalar_t* x, int64_t C, const Cap& cap, acc_t* y) {
  constexpr int64_t K = Vectorized<acc_t>::size();
  int64_t j = 0;
  for (; j + K <= C; j += K) cap.load(x + j).store(y + j);
  for (; j < C; ++j) y[j] = cap.at(static_cast<acc_t>(x[j]));
}

// row_sumexp that also keeps e_j = exp(x_j - m) (exactly 1 at the maximum) in `e`, so that the
// fused gradient needs no second exp: p_j = e_j exp(m - lse). Uncapped logits only.
template <typename scalar_t, typename acc_t>
inline void row_sumexp_keep(const scalar_t* x, int64_t C, acc_t m, acc_t* e, acc_t& cnt_out, acc_t& rest_out) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const V vm(m), zero(acc_t(0)), one(acc_t(1));
  V r0(acc_t(0)), r1(acc_t(0)), c0(acc_t(0)), c1(acc_t(0));
  const int64_t Cv = C - C % (2 * K);
  for (int64_t jb = 0; jb < Cv; jb += kSumBlock) {
    const int64_t je = std::min(Cv, jb + kSumBlock);
    V b0(acc_t(0)), b1(acc_t(0));
    for (int64_t j = jb; j < je; j += 2 * K) {
      const V a = vload<scalar_t, acc_t>(x + j), b = vload<scalar_t, acc_t>(x + j + K);
      const V qa = (a == vm), qb = (b == vm);
      const V ea = V::blendv(fast_exp(a - vm), zero, qa), eb = V::blendv(fast_exp(b - vm), zero, qb);
      b0 = b0 + ea;
      b1 = b1 + eb;
      const V ca = V::blendv(zero, one, qa), cb = V::blendv(zero, one, qb);
      c0 = c0 + ca;
      c1 = c1 + cb;
      (ea + ca).store(e + j);
      (eb + cb).store(e + j + K);
    }
    r0 = r0 + b0;
    r1 = r1 + b1;
  }
  acc_t rest = hsum(r0 + r1);
  acc_t cnt = hsum(c0 + c1);
  for (int64_t j = Cv; j < C; ++j) {
    const acc_t v = static_cast<acc_t>(x[j]);
    if (v == m) {
      cnt += acc_t(1);
      e[j] = acc_t(1);
    } else {
      e[j] = scalar_exp(v - m);
      rest += e[j];
    }
  }
  cnt_out = cnt;
  rest_out = rest;
}

// grad_j = A e_j f - B w_j from the kept e_j (see row_sumexp_keep), f = exp(m - lse).
template <typename scalar_t, typename acc_t>
inline void row_grad_kept(const acc_t* e, scalar_t* gx, int64_t C, acc_t f, acc_t A, acc_t B, const acc_t* w) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const V vaf(A * f), vb(B);
  int64_t j = 0;
  if (w == nullptr) {
    for (; j + 2 * K <= C; j += 2 * K) {
      vstore2<scalar_t, acc_t>(gx + j, at::vec::fmsub(vaf, V::loadu(e + j), vb),
                               at::vec::fmsub(vaf, V::loadu(e + j + K), vb));
    }
  } else {
    for (; j + 2 * K <= C; j += 2 * K) {
      vstore2<scalar_t, acc_t>(gx + j, at::vec::fmsub(vaf, V::loadu(e + j), vb * V::loadu(w + j)),
                               at::vec::fmsub(vaf, V::loadu(e + j + K), vb * V::loadu(w + j + K)));
    }
  }
  for (; j < C; ++j) gx[j] = static_cast<scalar_t>(A * f * e[j] - B * (w == nullptr ? acc_t(1) : w[j]));
}

// grad_j = A exp(x_j - lse) - B w_j  (w == nullptr: - B). `gx` may be `x` (in place): each
// element is read before it is written.
template <typename scalar_t, typename acc_t, typename Cap>
inline void row_grad(const scalar_t* x, scalar_t* gx, int64_t C, acc_t lse, acc_t A, acc_t B,
                     const acc_t* w, const Cap& cap) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  if (A == acc_t(0) && B == acc_t(0)) {
    std::memset(static_cast<void*>(gx), 0, sizeof(scalar_t) * C);
    return;
  }
  const V vl(lse), va(A), vb(B);
  int64_t j = 0;
  if (w == nullptr) {
    for (; j + 2 * K <= C; j += 2 * K) {
      const V a = cap.load(x + j), b = cap.load(x + j + K);
      vstore2<scalar_t, acc_t>(gx + j, cap.out(at::vec::fmsub(va, fast_exp(a - vl), vb), a),
                               cap.out(at::vec::fmsub(va, fast_exp(b - vl), vb), b));
    }
  } else {
    for (; j + 2 * K <= C; j += 2 * K) {
      const V a = cap.load(x + j), b = cap.load(x + j + K);
      vstore2<scalar_t, acc_t>(gx + j, cap.out(at::vec::fmsub(va, fast_exp(a - vl), vb * V::loadu(w + j)), a),
                               cap.out(at::vec::fmsub(va, fast_exp(b - vl), vb * V::loadu(w + j + K)), b));
    }
  }
  for (; j < C; ++j) {
    const acc_t v = cap.at(static_cast<acc_t>(x[j]));
    gx[j] = static_cast<scalar_t>(cap.out1(A * scalar_exp(v - lse) - B * (w == nullptr ? acc_t(1) : w[j]), v));
  }
}

// ---------------------------------------------------------------------------------------------
// index targets
// ---------------------------------------------------------------------------------------------

inline void record_bad(std::atomic<int64_t>& first_bad, int64_t pos) {
  int64_t cur = first_bad.load(std::memory_order_relaxed);
  while (pos < cur && !first_bad.compare_exchange_weak(cur, pos, std::memory_order_relaxed)) {
  }
}

inline int64_t grain_rows(int64_t C) {
  // enough work per task to amortise the scheduling (~32k elements)
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
}

// Gradient of one contiguous row with upstream gradients g (loss) and gl (lse):
// grad_j = A p_j - B w_j, then the target class exactly (see index_target_grad). x_t is the
// (capped) target logit, read by the caller before anything was written: `gr` may be `xr`.
template <typename scalar_t, typename acc_t, typename Cap>
inline void index_row_backward(const scalar_t* xr, scalar_t* gr, int64_t C, int64_t t, bool has_t, acc_t x_t,
                               acc_t lse, acc_t g, acc_t gl, const acc_t* w, acc_t W, SmoothCoefs<acc_t> c,
                               const Cap& cap) {
  if (!has_t) {
    row_grad<scalar_t, acc_t>(xr, gr, C, lse, gl, acc_t(0), w, cap);
    return;
  }
  const acc_t w_t = w == nullptr ? acc_t(1) : w[t];
  row_grad<scalar_t, acc_t>(xr, gr, C, lse, g * index_p_coef(w_t, W, c) + gl, g * c.off, w, cap);
  acc_t v = g * index_target_grad(x_t, lse, w_t, W, c);
  if (gl != acc_t(0)) v += gl * scalar_exp(x_t - lse);
  gr[t] = static_cast<scalar_t>(cap.out1(v, x_t));
}

// Statistics of the strided rows of one chunk: L consecutive spatial positions of one sample,
// rows strided by S. Each class j contributes one contiguous run of the chunk, so every pass
// streams C runs of contiguous memory (no gathers, few pages), and the per-row state lives in
// small arrays in L1. Out: Lse[b], Sm[b] = sum_j w_j x_j.
template <typename scalar_t, typename acc_t, typename Cap>
inline void chunk_stats(const scalar_t* xb, int64_t C, int64_t S, int64_t L, const acc_t* w, const Cap& cap,
                        acc_t* Lse, acc_t* Sm) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const int64_t Lv = L - L % K;
  // Sums run over the classes in blocks of kScalarBlock (partials P, flushed into the totals).
  alignas(64) acc_t M[kLanes], Cn[kLanes], P[kLanes];
  acc_t* R = Lse;
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  auto flush = [&](acc_t* total, int64_t j) {
    if ((j + 1) % kScalarBlock != 0 && j + 1 != C) return;
    for (int64_t b = 0; b < L; ++b) total[b] += P[b];
    std::fill(P, P + L, acc_t(0));
  };
  std::fill(M, M + L, ninf);
  std::fill(Sm, Sm + L, acc_t(0));
  std::fill(R, R + L, acc_t(0));
  std::fill(Cn, Cn + L, acc_t(0));
  std::fill(P, P + L, acc_t(0));
  for (int64_t j = 0; j < C; ++j) {
    const scalar_t* xr = xb + j * S;
    const acc_t wj = w == nullptr ? acc_t(1) : w[j];
    const V vw(wj);
    for (int64_t b = 0; b < Lv; b += K) {
      const V v = cap.load(xr + b);
      vmax(V::loadu(M + b), v).store(M + b);
      (w == nullptr ? V::loadu(P + b) + v : at::vec::fmadd(v, vw, V::loadu(P + b))).store(P + b);
    }
    for (int64_t b = Lv; b < L; ++b) {
      const acc_t v = cap.at(static_cast<acc_t>(xr[b]));
      M[b] = v > M[b] ? v : M[b];
      P[b] += wj * v;
    }
    flush(Sm, j);
  }
  const V zero(acc_t(0)), one(acc_t(1));
  for (int64_t j = 0; j < C; ++j) {
    const scalar_t* xr = xb + j * S;
    for (int64_t b = 0; b < Lv; b += K) {
      const V v = cap.load(xr + b);
      const V vm = V::loadu(M + b);
      const V q = (v == vm);
      (V::loadu(P + b) + V::blendv(fast_exp(v - vm), zero, q)).store(P + b);
      (V::loadu(Cn + b) + V::blendv(zero, one, q)).store(Cn + b);
    }
    for (int64_t b = Lv; b < L; ++b) {
      const acc_t v = cap.at(static_cast<acc_t>(xr[b]));
      if (v == M[b]) Cn[b] += acc_t(1); else P[b] += scalar_exp(v - M[b]);
    }
    flush(R, j);
  }
  // lse of the chunk's rows, vectorized: with few classes a scalar log1p per row would cost
  // as much as the passes over the logits.
  for (int64_t b = 0; b < Lv; b += K) {
    const V lse = V::loadu(M + b) + ((V::loadu(Cn + b) - one) + V::loadu(R + b)).log1p();
    lse.store(R + b);
  }
  for (int64_t b = Lv; b < L; ++b) R[b] = lse_from_parts(M[b], Cn[b], R[b]);
}

// Gradient of the strided rows of one chunk (see chunk_stats). Per lane b: target tb[b] (used when
// has_t[b]), capped target logit Xt[b] (read by the caller before anything was written: `gb` may
// be `xb`), lse La[b], upstream gradients G[b] (loss) and GL[b] (lse).
template <typename scalar_t, typename acc_t, typename Cap>
inline void chunk_backward(const scalar_t* xb, scalar_t* gb, int64_t C, int64_t S, int64_t L, const int64_t* tb,
                           const bool* has_t, const acc_t* Xt, const acc_t* La, const acc_t* G, const acc_t* GL,
                           const acc_t* w, acc_t W, SmoothCoefs<acc_t> c, const Cap& cap) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const int64_t Lv = L - L % K;
  alignas(64) acc_t Aa[kLanes], Ba[kLanes], D[kLanes];
  for (int64_t b = 0; b < L; ++b) {
    if (!has_t[b]) {
      Aa[b] = GL[b];
      Ba[b] = acc_t(0);
    } else {
      const acc_t w_t = w == nullptr ? acc_t(1) : w[tb[b]];
      Aa[b] = G[b] * index_p_coef(w_t, W, c) + GL[b];
      Ba[b] = G[b] * c.off;
    }
  }
  for (int64_t j = 0; j < C; ++j) {
    const scalar_t* xr = xb + j * S;
    scalar_t* gr = gb + j * S;
    const acc_t wj = w == nullptr ? acc_t(1) : w[j];
    const V vw(wj);
    for (int64_t b = 0; b < Lv; b += K) {
      const V v = cap.load(xr + b);
      const V g = at::vec::fmsub(V::loadu(Aa + b), fast_exp(v - V::loadu(La + b)), V::loadu(Ba + b) * vw);
      vstore1<scalar_t, acc_t>(gr + b, cap.out(g, v));
    }
    for (int64_t b = Lv; b < L; ++b) {
      const acc_t v = cap.at(static_cast<acc_t>(xr[b]));
      gr[b] = static_cast<scalar_t>(cap.out1(Aa[b] * scalar_exp(v - La[b]) - Ba[b] * wj, v));
    }
  }
  // target class: on * w_t * expm1(x_t - lse) + off * (W p_t - w_t) (+ gl p_t), the expm1
  // vectorized over the chunk (see index_target_grad)
  for (int64_t b = 0; b < L; ++b) D[b] = has_t[b] ? Xt[b] - La[b] : acc_t(0);
  for (int64_t b = 0; b < Lv; b += K) V::loadu(D + b).expm1().store(D + b);
  for (int64_t b = Lv; b < L; ++b) D[b] = se_expm1(D[b]);
  for (int64_t b = 0; b < L; ++b) {
    if (!has_t[b]) continue;
    const int64_t t = tb[b];
    const acc_t w_t = w == nullptr ? acc_t(1) : w[t];
    const acc_t pm1 = D[b];
    acc_t v = G[b] * c.on * w_t * pm1;
    if (c.off != acc_t(0)) v += G[b] * c.off * (W * (pm1 + acc_t(1)) - w_t);
    v += GL[b] * (pm1 + acc_t(1));
    gb[t * S + b] = static_cast<scalar_t>(cap.out1(v, Xt[b]));
  }
}

// Forward of the index-target rows; with kFused also the gradient (upstream gradient s on the
// loss and s * 2 z lse on lse, i.e. d(loss + z lse^2) / dx times s) in the same pass, written to
// a.grad_input (which may be the input: each row is read completely before it is written).
template <typename scalar_t, typename acc_t, bool kFused, typename Cap>
int64_t index_forward_impl(const XentArgs& a, const Cap& cap) {
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  const int64_t* tgt = static_cast<const int64_t*>(a.target);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  acc_t* loss = static_cast<acc_t*>(a.loss);
  acc_t* lse_out = static_cast<acc_t*>(a.lse);
  scalar_t* gx = static_cast<scalar_t*>(a.grad_input);
  const int64_t C = a.C, S = a.S;
  const acc_t W = static_cast<acc_t>(a.weight_sum);
  const SmoothCoefs<acc_t> c{static_cast<acc_t>(a.on), static_cast<acc_t>(a.off)};
  const acc_t gs = static_cast<acc_t>(a.grad_scale), z2 = static_cast<acc_t>(2.0 * a.z_loss);
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};

  // Finishes row `pos` (flat n * S + s) from its statistics; returns whether it has a target.
  auto finish = [&](int64_t pos, acc_t lse, acc_t sum_wx, acc_t x_t_or_nan, int64_t t) -> bool {
    lse_out[pos] = lse;
    if (t == a.ignore_index) {
      loss[pos] = acc_t(0);
      return false;
    }
    if (t < 0 || t >= C) {
      loss[pos] = nan;
      record_bad(first_bad, pos);
      return false;
    }
    const acc_t w_t = w == nullptr ? acc_t(1) : w[t];
    loss[pos] = index_row_loss(lse, x_t_or_nan, sum_wx, w_t, W, c);
    return true;
  };

  if (S == 1) {
    // Fused, uncapped: the exps of the sum are kept in a per-task row buffer (L2-sized for common
    // vocabularies) and reused for the gradient, so each logit costs one exp instead of two.
    constexpr bool kKeep = kFused && !Cap::kOn;
    const bool keep = kKeep && C <= kKeepMaxClasses;
    // Capped logits are computed once per row into a buffer that the statistics passes read
    // (tanh costs more than the rest of the forward).
    const bool capbuf = Cap::kOn && C <= kKeepMaxClasses;
    at::parallel_for(0, a.N, grain_rows(C), [&](int64_t begin, int64_t end) {
      std::unique_ptr<acc_t[]> e_buf(keep ? new acc_t[C] : nullptr);
      std::unique_ptr<acc_t[]> y_buf(capbuf ? new acc_t[C] : nullptr);
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* xr = x + n * C;
        const int64_t t = tgt[n];
        acc_t m, s, cnt, rest;
        if (capbuf) {
          row_capped(xr, C, cap, y_buf.get());
          row_max_sum<acc_t, acc_t>(y_buf.get(), C, w, NoCap<acc_t>{}, m, s);
          row_sumexp<acc_t, acc_t>(y_buf.get(), C, m, NoCap<acc_t>{}, cnt, rest);
        } else {
          row_max_sum<scalar_t, acc_t>(xr, C, w, cap, m, s);
          if (keep) {
            row_sumexp_keep<scalar_t, acc_t>(xr, C, m, e_buf.get(), cnt, rest);
          } else {
            row_sumexp<scalar_t, acc_t>(xr, C, m, cap, cnt, rest);
          }
        }
        const acc_t x_t = (t >= 0 && t < C) ? cap.at(static_cast<acc_t>(xr[t])) : nan;
        const acc_t lse = lse_from_parts(m, cnt, rest);
        const bool has_t = finish(n, lse, s, x_t, t);
        if constexpr (kFused) {
          const acc_t gl = has_t ? gs * z2 * lse : acc_t(0);
          if (keep) {
            scalar_t* gr = gx + n * C;
            const acc_t f = scalar_exp(m - lse);
            if (!has_t) {
              row_grad_kept<scalar_t, acc_t>(e_buf.get(), gr, C, f, gl, acc_t(0), w);
            } else {
              const acc_t w_t = w == nullptr ? acc_t(1) : w[t];
              row_grad_kept<scalar_t, acc_t>(e_buf.get(), gr, C, f, gs * index_p_coef(w_t, W, c) + gl, gs * c.off, w);
              acc_t v = gs * index_target_grad(x_t, lse, w_t, W, c);
              if (gl != acc_t(0)) v += gl * scalar_exp(x_t - lse);
              gr[t] = static_cast<scalar_t>(v);
            }
          } else {
            index_row_backward<scalar_t, acc_t>(xr, gx + n * C, C, t, has_t, x_t, lse, gs, gl, w, W, c, cap);
          }
        }
      }
    });
  } else {
    const int64_t chunks = (S + kLanes - 1) / kLanes;
    at::parallel_for(0, a.N * chunks, std::max<int64_t>(1, grain_rows(C) / kLanes), [&](int64_t begin, int64_t end) {
      alignas(64) acc_t Lse[kLanes], Sm[kLanes], Xt[kLanes], G[kLanes], GL[kLanes];
      bool has_t[kLanes];
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / chunks, s0 = (nc % chunks) * kLanes;
        const int64_t L = std::min<int64_t>(kLanes, S - s0);
        const scalar_t* xb = x + n * C * S + s0;
        chunk_stats<scalar_t, acc_t>(xb, C, S, L, w, cap, Lse, Sm);
        const int64_t* tb = tgt + n * S + s0;
        for (int64_t b = 0; b < L; ++b) {
          const int64_t t = tb[b];
          Xt[b] = (t >= 0 && t < C) ? cap.at(static_cast<acc_t>(xb[t * S + b])) : nan;
          has_t[b] = finish(n * S + s0 + b, Lse[b], Sm[b], Xt[b], t);
          if constexpr (kFused) {
            G[b] = gs;
            GL[b] = has_t[b] ? gs * z2 * Lse[b] : acc_t(0);
          }
        }
        if constexpr (kFused) {
          chunk_backward<scalar_t, acc_t>(xb, gx + n * C * S + s0, C, S, L, tb, has_t, Xt, Lse, G, GL, w, W, c, cap);
        }
      }
    });
  }
  const int64_t bad = first_bad.load();
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

template <typename scalar_t, typename acc_t, typename Cap>
void index_backward_impl(const XentArgs& a, const Cap& cap) {
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  const int64_t* tgt = static_cast<const int64_t*>(a.target);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  const acc_t* gloss = static_cast<const acc_t*>(a.grad_loss);
  const acc_t* glse = static_cast<const acc_t*>(a.grad_lse);
  const acc_t* lse_in = static_cast<const acc_t*>(a.lse_in);
  scalar_t* gx = static_cast<scalar_t*>(a.grad_input);
  const int64_t C = a.C, S = a.S;
  const acc_t W = static_cast<acc_t>(a.weight_sum);
  const SmoothCoefs<acc_t> c{static_cast<acc_t>(a.on), static_cast<acc_t>(a.off)};
  // Out-of-range targets never reach here (the forward raised), but are treated as ignored
  // rather than trusted.
  auto has_target = [&](int64_t t) { return t != a.ignore_index && t >= 0 && t < C; };

  if (S == 1) {
    at::parallel_for(0, a.N, grain_rows(C), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t t = tgt[n];
        const bool has_t = has_target(t);
        const acc_t x_t = has_t ? cap.at(static_cast<acc_t>(x[n * C + t])) : acc_t(0);
        index_row_backward<scalar_t, acc_t>(x + n * C, gx + n * C, C, t, has_t, x_t, lse_in[n], gloss[n],
                                            glse == nullptr ? acc_t(0) : glse[n], w, W, c, cap);
      }
    });
  } else {
    const int64_t chunks = (S + kLanes - 1) / kLanes;
    at::parallel_for(0, a.N * chunks, std::max<int64_t>(1, grain_rows(C) / kLanes), [&](int64_t begin, int64_t end) {
      alignas(64) acc_t Xt[kLanes], GL[kLanes];
      bool has_t[kLanes];
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / chunks, s0 = (nc % chunks) * kLanes;
        const int64_t L = std::min<int64_t>(kLanes, S - s0);
        const int64_t base = n * C * S + s0, pos0 = n * S + s0;
        const int64_t* tb = tgt + pos0;
        for (int64_t b = 0; b < L; ++b) {
          has_t[b] = has_target(tb[b]);
          Xt[b] = has_t[b] ? cap.at(static_cast<acc_t>(x[base + tb[b] * S + b])) : acc_t(0);
          GL[b] = glse == nullptr ? acc_t(0) : glse[pos0 + b];
        }
        chunk_backward<scalar_t, acc_t>(x + base, gx + base, C, S, L, tb, has_t, Xt, lse_in + pos0, gloss + pos0,
                                        GL, w, W, c, cap);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// probability targets: q_j = on y_j + off, loss = A lse - B, grad_j = (g A + gl) p_j - g w_j q_j
// ---------------------------------------------------------------------------------------------

// Statistics of one (possibly strided) row for the loss A lse - B, A = sum_j w_j q_j,
// B = sum_j w_j q_j x_j. Both are taken apart along q_j = on y_j + off, so that the constant part
// is exact: A = on sum_j w_j y_j + off W (W in closed form, not summed C times). B is summed
// relative to a reference logit `ref` (the row's first): loss = A (lse - ref) - sum_j w_j q_j
// (x_j - ref), which takes a common offset of the logits out of the cancellation A lse - B.
// Targets are read in their own dtype (tgt_t: the input's, or the accumulation dtype).
template <typename acc_t>
struct ProbRow {
  acc_t m, A, B, ref;  // B relative to ref
};

template <typename acc_t>
inline acc_t prob_ref(acc_t x0) {
  return std::isfinite(x0) ? x0 : acc_t(0);
}

template <typename scalar_t, typename tgt_t, typename acc_t, typename Cap>
inline ProbRow<acc_t> prob_row_stats(const scalar_t* x, const tgt_t* y, int64_t C, int64_t S, const acc_t* w,
                                     acc_t W, SmoothCoefs<acc_t> c, const Cap& cap) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const acc_t ref = C > 0 ? prob_ref(cap.at(static_cast<acc_t>(x[0]))) : acc_t(0);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  // sum w y, sum w (x - ref), sum w y (x - ref)
  acc_t sy = 0, sx = 0, syx = 0;
  int64_t j = 0;
  if (S == 1) {
    const V vref(ref);
    V vm(m), ty(acc_t(0)), tx(acc_t(0)), tyx(acc_t(0));
    const int64_t Cv = C - C % K;
    for (int64_t jb = 0; jb < Cv; jb += kSumBlock) {
      const int64_t je = std::min(Cv, jb + kSumBlock);
      V by(acc_t(0)), bx(acc_t(0)), byx(acc_t(0));
      for (j = jb; j < je; j += K) {
        const V v = cap.load(x + j);
        const V d = v - vref;
        V yv = vload<tgt_t, acc_t>(y + j);
        vm = vmax(vm, v);
        if (w != nullptr) {
          const V wv = V::loadu(w + j);
          yv = yv * wv;
          bx = at::vec::fmadd(wv, d, bx);
        } else {
          bx = bx + d;
        }
        by = by + yv;
        byx = at::vec::fmadd(yv, d, byx);
      }
      ty = ty + by;
      tx = tx + bx;
      tyx = tyx + byx;
    }
    j = Cv;
    m = hmax(vm);
    sy = hsum(ty);
    sx = hsum(tx);
    syx = hsum(tyx);
  }
  BlockedSum<acc_t> ry, rx, ryx;
  for (; j < C; ++j) {
    const acc_t v = cap.at(static_cast<acc_t>(x[j * S]));
    const acc_t wj = w == nullptr ? acc_t(1) : w[j];
    const acc_t yv = static_cast<acc_t>(y[j * S]) * wj;
    m = v > m ? v : m;
    ry.add(yv);
    rx.add(wj * (v - ref));
    ryx.add(yv * (v - ref));
  }
  sy += ry.get();
  sx += rx.get();
  syx += ryx.get();
  // a zero coefficient skips its term (as index_row_loss): 0 * (-inf) would make an exact loss NaN
  ProbRow<acc_t> r{m, acc_t(0), acc_t(0), ref};
  if (c.on != acc_t(0)) {
    r.A += c.on * sy;
    r.B += c.on * syx;
  }
  if (c.off != acc_t(0)) {
    r.A += c.off * W;
    r.B += c.off * sx;
  }
  return r;
}

// A = sum_j w_j q_j alone (the backward's coefficient): one blocked sum of w y, none when on == 0.
template <typename tgt_t, typename acc_t>
inline acc_t prob_row_A(const tgt_t* y, int64_t C, int64_t S, const acc_t* w, acc_t W, SmoothCoefs<acc_t> c) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  acc_t A = c.off != acc_t(0) ? c.off * W : acc_t(0);
  if (c.on == acc_t(0)) return A;
  acc_t sy = 0;
  int64_t j = 0;
  if (S == 1) {
    V ty(acc_t(0));
    const int64_t Cv = C - C % K;
    for (int64_t jb = 0; jb < Cv; jb += kSumBlock) {
      const int64_t je = std::min(Cv, jb + kSumBlock);
      V by(acc_t(0));
      for (j = jb; j < je; j += K) {
        const V yv = vload<tgt_t, acc_t>(y + j);
        by = w == nullptr ? by + yv : at::vec::fmadd(yv, V::loadu(w + j), by);
      }
      ty = ty + by;
    }
    j = Cv;
    sy = hsum(ty);
  }
  BlockedSum<acc_t> ry;
  for (; j < C; ++j) ry.add(static_cast<acc_t>(y[j * S]) * (w == nullptr ? acc_t(1) : w[j]));
  return A + c.on * (sy + ry.get());
}

template <typename scalar_t, typename acc_t, typename Cap>
inline void strided_sumexp(const scalar_t* x, int64_t C, int64_t S, acc_t m, const Cap& cap, acc_t& cnt, acc_t& rest) {
  if (S == 1) {
    row_sumexp<scalar_t, acc_t>(x, C, m, cap, cnt, rest);
    return;
  }
  cnt = 0;
  BlockedSum<acc_t> r;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t v = cap.at(static_cast<acc_t>(x[j * S]));
    if (v == m) cnt += 1; else r.add(scalar_exp(v - m));
  }
  rest = r.get();
}

template <typename scalar_t, typename tgt_t, typename acc_t, typename Cap>
void prob_forward_impl(const XentArgs& a, const Cap& cap) {
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  const tgt_t* y = static_cast<const tgt_t*>(a.target);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  acc_t* loss = static_cast<acc_t*>(a.loss);
  acc_t* lse_out = static_cast<acc_t*>(a.lse);
  const int64_t C = a.C, S = a.S;
  const acc_t W = static_cast<acc_t>(a.weight_sum);
  const SmoothCoefs<acc_t> c{static_cast<acc_t>(a.on), static_cast<acc_t>(a.off)};
  at::parallel_for(0, a.N * S, grain_rows(C), [&](int64_t begin, int64_t end) {
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t n = pos / S, s = pos % S;
      const int64_t base = n * C * S + s;
      acc_t cnt, rest;
      const ProbRow<acc_t> r = prob_row_stats<scalar_t, tgt_t, acc_t>(x + base, y + base, C, S, w, W, c, cap);
      strided_sumexp<scalar_t, acc_t>(x + base, C, S, r.m, cap, cnt, rest);
      // lse - ref = (m - ref) + log1p(...): no large common offset left in the difference
      const acc_t lse_rel = (r.m - r.ref) + se_log1p((cnt - acc_t(1)) + rest);
      lse_out[pos] = lse_from_parts(r.m, cnt, rest);
      loss[pos] = prob_row_loss(lse_rel, r.A, r.B);
    }
  });
}

template <typename scalar_t, typename tgt_t, typename acc_t, typename Cap>
void prob_backward_impl(const XentArgs& a, const Cap& cap) {
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  const tgt_t* y = static_cast<const tgt_t*>(a.target);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  const acc_t* gloss = static_cast<const acc_t*>(a.grad_loss);
  const acc_t* glse = static_cast<const acc_t*>(a.grad_lse);
  const acc_t* lse_in = static_cast<const acc_t*>(a.lse_in);
  scalar_t* gx = static_cast<scalar_t*>(a.grad_input);
  const int64_t C = a.C, S = a.S;
  const acc_t W = static_cast<acc_t>(a.weight_sum);
  const SmoothCoefs<acc_t> c{static_cast<acc_t>(a.on), static_cast<acc_t>(a.off)};
  at::parallel_for(0, a.N * S, grain_rows(C), [&](int64_t begin, int64_t end) {
    using V = Vectorized<acc_t>;
    constexpr int64_t K = V::size();
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t n = pos / S, s = pos % S;
      const int64_t base = n * C * S + s;
      const scalar_t* xr = x + base;
      const tgt_t* yr = y + base;
      scalar_t* gr = gx + base;
      const acc_t A = prob_row_A<tgt_t, acc_t>(yr, C, S, w, W, c);  // re-reads the target row only
      const acc_t g = gloss[pos];
      const acc_t gl = glse == nullptr ? acc_t(0) : glse[pos];
      const acc_t P = g * A + gl, lse = lse_in[pos];
      int64_t j = 0;
      if (S == 1) {
        const V vP(P), vg(g), vl(lse), von(c.on), voff(c.off);
        for (; j + 2 * K <= C; j += 2 * K) {
          V q0 = at::vec::fmadd(von, vload<tgt_t, acc_t>(yr + j), voff);
          V q1 = at::vec::fmadd(von, vload<tgt_t, acc_t>(yr + j + K), voff);
          if (w != nullptr) {
            q0 = q0 * V::loadu(w + j);
            q1 = q1 * V::loadu(w + j + K);
          }
          const V x0 = cap.load(xr + j), x1 = cap.load(xr + j + K);
          const V e0 = fast_exp(x0 - vl), e1 = fast_exp(x1 - vl);
          vstore2<scalar_t, acc_t>(gr + j, cap.out(at::vec::fmsub(vP, e0, vg * q0), x0),
                                   cap.out(at::vec::fmsub(vP, e1, vg * q1), x1));
        }
      }
      for (; j < C; ++j) {
        acc_t q = prob_q(static_cast<acc_t>(yr[j * S]), c);
        if (w != nullptr) q *= w[j];
        const acc_t v = cap.at(static_cast<acc_t>(xr[j * S]));
        gr[j * S] = static_cast<scalar_t>(cap.out1(P * scalar_exp(v - lse) - g * q, v));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// row scaling of a fused gradient by its upstream gradient
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void scale_rows_impl(const XentArgs& a) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  scalar_t* g = static_cast<scalar_t*>(a.grad_input);
  const acc_t* f = static_cast<const acc_t*>(a.grad_loss);
  const int64_t C = a.C, S = a.S;
  auto scale_run = [&](scalar_t* p, int64_t len, acc_t factor) {
    const V vf(factor);
    int64_t j = 0;
    for (; j + 2 * K <= len; j += 2 * K) {
      vstore2<scalar_t, acc_t>(p + j, vload<scalar_t, acc_t>(p + j) * vf, vload<scalar_t, acc_t>(p + j + K) * vf);
    }
    for (; j < len; ++j) p[j] = static_cast<scalar_t>(static_cast<acc_t>(p[j]) * factor);
  };
  if (a.scale_numel == 1) {
    const acc_t factor = f[0];
    if (factor == acc_t(1)) return;
    at::parallel_for(0, a.N * C * S, 32768, [&](int64_t begin, int64_t end) { scale_run(g + begin, end - begin, factor); });
    return;
  }
  if (S == 1) {
    at::parallel_for(0, a.N, grain_rows(C), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        if (f[n] != acc_t(1)) scale_run(g + n * C, C, f[n]);
      }
    });
    return;
  }
  // strided rows: element (n, j, s) takes factor f[n * S + s]; runs of equal factors would be
  // rare, so each (n, j) run of S elements is multiplied lane by lane, skipping samples whose
  // factors are all 1.
  at::parallel_for(0, a.N, std::max<int64_t>(1, grain_rows(C * S)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const acc_t* fn = f + n * S;
      bool all_one = true;
      for (int64_t s = 0; s < S && all_one; ++s) all_one = fn[s] == acc_t(1);
      if (all_one) continue;
      for (int64_t j = 0; j < C; ++j) {
        scalar_t* p = g + (n * C + j) * S;
        int64_t s = 0;
        for (; s + K <= S; s += K) vstore1<scalar_t, acc_t>(p + s, vload<scalar_t, acc_t>(p + s) * V::loadu(fn + s));
        for (; s < S; ++s) p[s] = static_cast<scalar_t>(static_cast<acc_t>(p[s]) * fn[s]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// dtype / soft-cap dispatch and the table
// ---------------------------------------------------------------------------------------------

// Calls f(cap) with NoCap or SoftCap, so that each kernel is compiled with and without capping.
template <typename acc_t, typename F>
inline auto with_cap(const XentArgs& a, const F& f) {
  if (a.softcap > 0) return f(SoftCap<acc_t>{static_cast<acc_t>(a.softcap)});
  return f(NoCap<acc_t>{});
}

inline int64_t index_forward(const XentArgs& a) {
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::cross_entropy_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    bad = with_cap<acc_t>(a, [&](const auto& cap) { return index_forward_impl<scalar_t, acc_t, false>(a, cap); });
  });
  return bad;
}

inline void index_fused(const XentArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::cross_entropy_fused", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_cap<acc_t>(a, [&](const auto& cap) { return index_forward_impl<scalar_t, acc_t, true>(a, cap); });
  });
}

inline void index_backward(const XentArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::_cross_entropy_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_cap<acc_t>(a, [&](const auto& cap) { index_backward_impl<scalar_t, acc_t>(a, cap); });
  });
}

// Probability targets come in the input's dtype or in the accumulation dtype (float32 targets
// with bfloat16 logits under autocast): both are read as they are, never rounded to the logits'.
template <typename scalar_t, typename F>
inline void with_target_type(const XentArgs& a, const F& f) {
  using acc_t = at::opmath_type<scalar_t>;
  if (a.target_dtype == a.dtype) {
    f(static_cast<const scalar_t*>(nullptr));
  } else {
    TORCH_INTERNAL_ASSERT(a.target_dtype == c10::CppTypeToScalarType<acc_t>::value);
    f(static_cast<const acc_t*>(nullptr));
  }
}

inline void prob_forward(const XentArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::cross_entropy_prob_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_target_type<scalar_t>(a, [&](const auto* tag) {
      using tgt_t = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
      with_cap<acc_t>(a, [&](const auto& cap) { prob_forward_impl<scalar_t, tgt_t, acc_t>(a, cap); });
    });
  });
}

inline void prob_backward(const XentArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::_cross_entropy_prob_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_target_type<scalar_t>(a, [&](const auto* tag) {
      using tgt_t = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
      with_cap<acc_t>(a, [&](const auto& cap) { prob_backward_impl<scalar_t, tgt_t, acc_t>(a, cap); });
    });
  });
}

inline void scale_rows(const XentArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::_scale_grad_rows_", [&] {
    scale_rows_impl<scalar_t, at::opmath_type<scalar_t>>(a);
  });
}

inline KernelTable make_table(const char* name) {
  return KernelTable{name, &index_forward, &index_backward, &prob_forward, &prob_backward, &index_fused, &scale_rows};
}

}  // namespace CPU_CAPABILITY
}  // namespace smoothing_ext::cpu
