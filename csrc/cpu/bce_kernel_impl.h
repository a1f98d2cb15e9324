// Vectorized CPU kernels of label-smoothed binary cross entropy with logits. Included once per
// instruction set by kernels_<isa>.cpp after kernel_prelude.h and the `#pragma GCC target`;
// everything lives in `inline namespace CPU_CAPABILITY`, so the copies never collide.
//
// The flattened input is processed in chunks of kChunk elements. For each chunk, every operand
// (target, weight, pos_weight, upstream gradient) is resolved to a pointer to kChunk values in the
// accumulation type: straight into the operand's memory when the chunk is one contiguous run of
// it already in that type (a full float32 target, a (C,) weight within a row), otherwise into a
// small buffer in L1 (reduced-precision targets converted, (N, 1) weights and scalars filled,
// row wrap-arounds copied). Memory traffic is then one read of each full-size operand and one
// write of the output; broadcast operands are read from cache.
//
// The vector body evaluates bce_math.h's loss_elem / grad_elem (the scalar tail calls them).

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "bce_kernel.h"
#include "vec_io.h"

namespace smoothing_ext::bce {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kChunk = 512;

using vec_io::vload;
using vec_io::vstore2;

// dst[0, n) = src[off, off + n) converted to acc_t (src holds acc_t or scalar_t).
template <typename scalar_t, typename acc_t>
inline void copy_run(const Operand& op, int64_t off, int64_t n, acc_t* dst) {
  if (op.is_acc) {
    std::memcpy(dst, static_cast<const acc_t*>(op.ptr) + off, sizeof(acc_t) * n);
    return;
  }
  const scalar_t* s = static_cast<const scalar_t*>(op.ptr) + off;
  constexpr int64_t K = Vectorized<acc_t>::size();
  int64_t j = 0;
  for (; j + K <= n; j += K) vload<scalar_t, acc_t>(s + j).store(dst + j);
  for (; j < n; ++j) dst[j] = static_cast<acc_t>(s[j]);
}

template <typename scalar_t, typename acc_t>
inline acc_t load_one(const Operand& op, int64_t idx) {
  return op.is_acc ? static_cast<const acc_t*>(op.ptr)[idx]
                   : static_cast<acc_t>(static_cast<const scalar_t*>(op.ptr)[idx]);
}

// Values of elements [i0, i0 + L) of the operand, in acc_t: a pointer into the operand itself when
// possible, else into buf (kChunk elements).
template <typename scalar_t, typename acc_t>
inline const acc_t* gather(const Operand& op, int64_t i0, int64_t L, acc_t* buf) {
  if (op.period == 1) {
    std::fill(buf, buf + L, load_one<scalar_t, acc_t>(op, 0));
    return buf;
  }
  if (op.inner == 1) {
    int64_t idx = i0 % op.period;
    if (op.is_acc && idx + L <= op.period) return static_cast<const acc_t*>(op.ptr) + idx;
    // runs of the operand, wrapping around at period (a (C,) weight across row ends)
    for (int64_t p = 0; p < L;) {
      const int64_t run = std::min(L - p, op.period - idx);
      copy_run<scalar_t, acc_t>(op, idx, run, buf + p);
      p += run;
      idx = 0;
    }
    return buf;
  }
  // inner > 1: runs of `inner` equal values ((N, 1) weights: one value per row)
  const int64_t q = i0 / op.inner;
  int64_t r = i0 - q * op.inner;
  int64_t idx = q % op.period;
  for (int64_t p = 0; p < L;) {
    const int64_t run = std::min(L - p, op.inner - r);
    std::fill(buf + p, buf + p + run, load_one<scalar_t, acc_t>(op, idx));
    p += run;
    r = 0;
    idx = idx + 1 == op.period ? 0 : idx + 1;
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// exp(-|x|) and log1p(e), e in [0, 1]: the two transcendental functions of every element. at::vec's
// (Sleef) versions handle every argument range and cost most of the forward (measured, 4M floats,
// one core: log1p 18 ms, log 3.6 ms, exp 2.9 ms); over the ranges used here short polynomials do.
// float only; double keeps at::vec's exp and log.
// ---------------------------------------------------------------------------------------------

// exp(d) for d <= 0: Cody-Waite reduction d = k ln2 + r, |r| <= ln2 / 2, degree-6 polynomial for
// exp(r) (Cephes expf coefficients), scaled by 2^k built in the exponent field. Below -87 (where the
// result would be subnormal) it returns 0: such a term is below 1.7e-38 and only ever added to or
// compared with much larger ones, or it is a loss/gradient that small (absolute error < 1.7e-38).
// NaN propagates.
inline Vectorized<float> exp_nonpos(const Vectorized<float>& d) {
  using V = Vectorized<float>;
  const V lo(-87.0f);
  const V dc = V::blendv(d, lo, d < lo);  // NaN compares false and stays
  const V k = (dc * V(1.44269504088896341f)).round();
  V r = at::vec::fmadd(k, V(-0.693359375f), dc);
  r = at::vec::fmadd(k, V(2.12194440e-4f), r);
  V p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, V(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + V(1.0f));
  // k in [-126, 0] after the clamp: 2^k is a normal float
  const auto ki = at::vec::convert_to_int_of_same_size(k);
  const auto bits = (ki + Vectorized<int32_t>(127)) << Vectorized<int32_t>(23);
  return V::blendv(p * at::vec::cast<float>(bits), V(0.0f), d < lo);
}

inline Vectorized<double> exp_nonpos(const Vectorized<double>& d) { return d.exp(); }

// log1p(e) for e in [0, 1]: log(u) of u = 1 + e rounded, plus the rounding error of u,
// c = e - (u - 1) (exact), to first order (log1p(e) = log(u) + log(1 + c/u); using c for c/u errs by
// at most c e <= 2^-24 e, half an ulp of the result). For e below half an ulp of 1, u = 1 and the
// result is c = e exactly. log(u), u in [1, 2]: u = 2^j m with m in [sqrt(1/2), sqrt(2)) (j = 0 or
// 1), f = m - 1 exact, log(1 + f) = f - f^2/2 + f^3 P(f) (Cephes logf coefficients), ln 2 split in
// two parts.
inline Vectorized<float> log1p_unit(const Vectorized<float>& e) {
  using V = Vectorized<float>;
  const V one(1.0f);
  const V u = one + e;
  const V c = e - (u - one);
  const V big = u >= V(1.41421356237f);
  const V f = V::blendv(u, u * V(0.5f), big) - one;
  const V j = V::blendv(V(0.0f), one, big);
  const V z = f * f;
  V p(7.0376836292e-2f);
  p = at::vec::fmadd(p, f, V(-1.1514610310e-1f));
  p = at::vec::fmadd(p, f, V(1.1676998740e-1f));
  p = at::vec::fmadd(p, f, V(-1.2420140846e-1f));
  p = at::vec::fmadd(p, f, V(1.4249322787e-1f));
  p = at::vec::fmadd(p, f, V(-1.6668057665e-1f));
  p = at::vec::fmadd(p, f, V(2.0000714765e-1f));
  p = at::vec::fmadd(p, f, V(-2.4999993993e-1f));
  p = at::vec::fmadd(p, f, V(3.3333331174e-1f));
  V y = p * f * z;
  y = at::vec::fmadd(j, V(-2.12194440e-4f), y);
  y = at::vec::fmadd(z, V(-0.5f), y);
  return at::vec::fmadd(j, V(0.693359375f), f + (y + c));
}

inline Vectorized<double> log1p_unit(const Vectorized<double>& e) {
  const Vectorized<double> one(1.0);
  const Vectorized<double> u = one + e;
  return u.log() + (e - (u - one));  // same compensation as the float version
}

inline int64_t grain_chunks() {
  return std::max<int64_t>(1, 32768 / kChunk);  // ~32k elements per task amortise the scheduling
}

// Loss of elements [i0, i0 + L) (L <= kChunk): stored to a.loss, or (kSum) returned as their sum in
// a fixed order (lane-wise vector accumulation, lanes added in index order, then the scalar tail),
// so a chunk's sum depends only on its data and the instruction set.
template <typename scalar_t, typename acc_t, bool kW, bool kPw, bool kSum>
inline acc_t forward_chunk(const CpuArgs& a, const Coefs<acc_t>& c, int64_t i0, int64_t L, acc_t* ybuf,
                           acc_t* wbuf, acc_t* pbuf) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const V von(c.on), voff(c.off), one(acc_t(1)), zero(acc_t(0));
  const scalar_t* xp = static_cast<const scalar_t*>(a.input) + i0;
  acc_t* op = kSum ? nullptr : static_cast<acc_t*>(a.loss) + i0;
  const acc_t* yp = gather<scalar_t, acc_t>(a.target, i0, L, ybuf);
  const acc_t* wp = kW ? gather<scalar_t, acc_t>(a.weight, i0, L, wbuf) : nullptr;
  const acc_t* pp = kPw ? gather<scalar_t, acc_t>(a.pos_weight, i0, L, pbuf) : nullptr;
  auto body = [&](int64_t j) -> V {
    const V xv = vload<scalar_t, acc_t>(xp + j);
    const V ys = at::vec::fmadd(V::loadu(yp + j), von, voff);
    const V ax = xv.abs();
    const V l = log1p_unit(exp_nonpos(ax.neg()));  // log1p(exp(-|x|))
    const V pos = xv >= zero;
    V loss;
    if constexpr (kPw) {
      const V pw = V::loadu(pp + j);
      const V A = at::vec::fmadd(pw - one, ys, one);
      loss = at::vec::fmadd(A, l, V::blendv(pw * ys, one - ys, pos) * ax);
    } else {
      loss = at::vec::fmadd(V::blendv(ys, one - ys, pos), ax, l);
    }
    if constexpr (kW) loss = loss * V::loadu(wp + j);
    return loss;
  };
  V s0(acc_t(0)), s1(acc_t(0));
  int64_t j = 0;
  for (; j + 2 * K <= L; j += 2 * K) {
    if constexpr (kSum) {
      s0 = s0 + body(j);
      s1 = s1 + body(j + K);
    } else {
      body(j).store(op + j);
      body(j + K).store(op + j + K);
    }
  }
  acc_t total = acc_t(0);
  if constexpr (kSum) {
    alignas(64) acc_t lanes[K];
    (s0 + s1).store(lanes);
    for (int64_t k = 0; k < K; ++k) total += lanes[k];
  }
  for (; j < L; ++j) {
    const acc_t ys = yp[j] * c.on + c.off;
    acc_t v = loss_elem<acc_t>(static_cast<acc_t>(xp[j]), ys, kPw ? pp[j] : acc_t(1));
    if constexpr (kW) v *= wp[j];
    if constexpr (kSum) {
      total += v;
    } else {
      op[j] = v;
    }
  }
  return total;
}

template <typename scalar_t, typename acc_t, bool kW, bool kPw>
void forward_impl(const CpuArgs& a) {
  const auto c = coefs<acc_t>(a.eps);
  const int64_t chunks = (a.numel + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, grain_chunks(), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t ybuf[kChunk], wbuf[kChunk], pbuf[kChunk];
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t i0 = ch * kChunk;
      forward_chunk<scalar_t, acc_t, kW, kPw, false>(a, c, i0, std::min(kChunk, a.numel - i0), ybuf, wbuf, pbuf);
    }
  });
}

// Sum of the loss without storing it. Deterministic and independent of the thread count: the input
// is cut into fixed blocks of kSumBlock elements, each summed by one thread in chunk order (chunk
// sums added in double, so a block's rounding error stays that of a 512-element sum), and the block
// partials are added in block order afterwards.
constexpr int64_t kSumBlock = 128 * kChunk;  // 64k elements: enough work per task, few partials

template <typename scalar_t, typename acc_t, bool kW, bool kPw>
void sum_impl(const CpuArgs& a) {
  const auto c = coefs<acc_t>(a.eps);
  const int64_t blocks = (a.numel + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(static_cast<size_t>(blocks));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t ybuf[kChunk], wbuf[kChunk], pbuf[kChunk];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t stop = std::min(a.numel, (b + 1) * kSumBlock);
      double s = 0.0;
      for (int64_t i0 = b * kSumBlock; i0 < stop; i0 += kChunk) {
        s += static_cast<double>(
            forward_chunk<scalar_t, acc_t, kW, kPw, true>(a, c, i0, std::min(kChunk, stop - i0), ybuf, wbuf, pbuf));
      }
      partial[static_cast<size_t>(b)] = s;
    }
  });
  double total = 0.0;
  for (const double v : partial) total += v;
  *static_cast<acc_t*>(a.loss) = static_cast<acc_t>(total);
}

template <typename scalar_t, typename acc_t, bool kW, bool kPw>
void backward_impl(const CpuArgs& a) {
  using V = Vectorized<acc_t>;
  constexpr int64_t K = V::size();
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  scalar_t* out = static_cast<scalar_t*>(a.grad_input);
  const auto c = coefs<acc_t>(a.eps);
  const int64_t chunks = (a.numel + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, grain_chunks(), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t ybuf[kChunk], wbuf[kChunk], pbuf[kChunk], gbuf[kChunk];
    const V von(c.on), voff(c.off), one(acc_t(1)), zero(acc_t(0));
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t i0 = ch * kChunk, L = std::min(kChunk, a.numel - i0);
      const scalar_t* xp = x + i0;
      scalar_t* op = out + i0;
      const acc_t* yp = gather<scalar_t, acc_t>(a.target, i0, L, ybuf);
      const acc_t* gp = gather<scalar_t, acc_t>(a.grad, i0, L, gbuf);
      const acc_t* wp = kW ? gather<scalar_t, acc_t>(a.weight, i0, L, wbuf) : nullptr;
      const acc_t* pp = kPw ? gather<scalar_t, acc_t>(a.pos_weight, i0, L, pbuf) : nullptr;
      auto body = [&](int64_t j) -> V {
        const V xv = vload<scalar_t, acc_t>(xp + j);
        const V ys = at::vec::fmadd(V::loadu(yp + j), von, voff);
        const V e = exp_nonpos(xv.abs().neg());
        const V s = e / (one + e);  // sigmoid(-|x|)
        const V pos = xv >= zero;
        V g;
        if constexpr (kPw) {
          const V pw = V::loadu(pp + j);
          const V As = at::vec::fmadd(pw - one, ys, one) * s;
          g = V::blendv(As - pw * ys, (one - ys) - As, pos);
        } else {
          g = V::blendv(s - ys, (one - ys) - s, pos);
        }
        g = g * V::loadu(gp + j);
        if constexpr (kW) g = g * V::loadu(wp + j);
        return g;
      };
      int64_t j = 0;
      for (; j + 2 * K <= L; j += 2 * K) vstore2<scalar_t, acc_t>(op + j, body(j), body(j + K));
      for (; j < L; ++j) {
        const acc_t ys = yp[j] * c.on + c.off;
        acc_t v = grad_elem<acc_t>(static_cast<acc_t>(xp[j]), ys, kPw ? pp[j] : acc_t(1)) * gp[j];
        if constexpr (kW) v *= wp[j];
        op[j] = static_cast<scalar_t>(v);
      }
    }
  });
}

// Compile-time flags for the optional operands: no loads and no multiplies for absent ones.
template <template <typename, typename, bool, bool> class F, typename scalar_t, typename acc_t>
inline void with_flags(const CpuArgs& a) {
  const bool w = a.weight.ptr != nullptr, pw = a.pos_weight.ptr != nullptr;
  if (w && pw) F<scalar_t, acc_t, true, true>::run(a);
  else if (w) F<scalar_t, acc_t, true, false>::run(a);
  else if (pw) F<scalar_t, acc_t, false, true>::run(a);
  else F<scalar_t, acc_t, false, false>::run(a);
}

template <typename scalar_t, typename acc_t, bool kW, bool kPw>
struct Fwd {
  static void run(const CpuArgs& a) { forward_impl<scalar_t, acc_t, kW, kPw>(a); }
};
template <typename scalar_t, typename acc_t, bool kW, bool kPw>
struct Sum {
  static void run(const CpuArgs& a) { sum_impl<scalar_t, acc_t, kW, kPw>(a); }
};
template <typename scalar_t, typename acc_t, bool kW, bool kPw>
struct Bwd {
  static void run(const CpuArgs& a) { backward_impl<scalar_t, acc_t, kW, kPw>(a); }
};

inline void forward(const CpuArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::binary_cross_entropy_with_logits_forward", [&] {
    with_flags<Fwd, scalar_t, at::opmath_type<scalar_t>>(a);
  });
}

inline void backward(const CpuArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::_binary_cross_entropy_with_logits_backward", [&] {
    with_flags<Bwd, scalar_t, at::opmath_type<scalar_t>>(a);
  });
}

inline void sum(const CpuArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "smoothing_ext::binary_cross_entropy_with_logits_sum", [&] {
    with_flags<Sum, scalar_t, at::opmath_type<scalar_t>>(a);
  });
}

inline KernelTable make_table(const char* name) { return KernelTable{name, &forward, &backward, &sum}; }

}  // namespace CPU_CAPABILITY
}  // namespace smoothing_ext::bce
