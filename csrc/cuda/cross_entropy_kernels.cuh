// CUDA kernels of label-smoothed cross entropy (forward and backward, class-index and probability
// targets). Torch-free: raw pointers and sizes only, so that the same header compiles under nvcc
// (csrc/cuda/cross_entropy_{f32,f64,f16,bf16}.cu) and under g++ with ../shared/simt (tests/simt/), which runs these
// exact kernels on the CPU. The per-row formulas come from <smoothing_ext/xent_math.h>, shared with
// the CPU kernels; the formulas themselves are stated once, in csrc/smoothing_ext.cpp.
//
// Layout: input viewed as (N, C, S), contiguous. A "row" is one (n, s) position: C logits at stride S.
//
// Traffic: forward reads the logits once (online max / count-of-max / sum-exp, sum_j w_j x_j and, for
// probability targets, sum_j w_j q_j and sum_j w_j q_j x_j, all in the same pass; x_t is one extra
// scalar load per row). Index backward reads the logits once and writes the gradient once.
// Probability backward reads the targets twice (a reduction pass for A = sum_j w_j q_j, which the op
// schema does not carry from the forward, then the elementwise pass) and the logits once.
//
// Work decomposition (see plan_rows):
//   S == 1, C small      groups of 8 lanes per row (C <= 64) or one warp per row (C <= 2048)
//   S == 1, C large      one block per row; when rows are few (fewer than ~4 blocks per SM) each row is
//                        split into chunks, one block per chunk, and the forward writes per-chunk
//                        partial statistics that a second small kernel combines in a fixed order
//                        (deterministic: no float atomics anywhere)
//   S > 1                blocks of (32, 8) threads: threadIdx.x runs across 32 consecutive positions s
//                        (coalesced), threadIdx.y across 8 interleaved slices of the classes; the 8
//                        partial statistics are merged in shared memory in a fixed order. No transpose.
// Contiguous rows are read with 16-byte vector loads: a scalar prologue up to the first 16-byte
// boundary of the segment (a row of C = 1023 bf16 starts misaligned every other row), then aligned
// 16-byte loads (4 per thread in flight), then a scalar tail. Stores of the gradient are 16-byte too
// when the gradient's row has the same alignment as the input's (always, unless the input is a view
// with an odd storage offset).
//
// Numerics: accumulation in float (double for double input). The row sum of exponentials keeps the
// entries equal to the row maximum out of the sum ("count of max" + "rest", see lse_from_parts), the
// same scheme as the CPU kernels, so that 1 - p_t survives a confident prediction; the online
// rescaling moves earlier maxima into "rest" only when a strictly larger maximum appears, so every
// entry equal to the final maximum is counted exactly. The target-class gradient is evaluated in the
// accumulation type with expm1 (index_target_grad) before rounding to the input dtype.
//
// Out-of-range class indices (neither in [0, C) nor ignore_index): the forward writes NaN for that
// row's loss (its lse is still computed), and the backward writes NaN over that row's gradient. No
// device-side assert (it would poison the CUDA context) and no host synchronisation.
//
// Soft-capping (c tanh(x / c)) is the template flag CAP: applied to every logit as it is converted to
// acc_t (load_x), and the chain-rule factor 1 - (y / c)^2 to every gradient element as it is stored
// (grad_elem). CAP = false instances contain none of it.
//
// Fused forward + gradient (index targets, cross_entropy_fused / cross_entropy_fused_): one kernel per
// row decomposition that reduces the row, writes loss and lse, then sweeps the row again (from cache)
// writing the gradient with grad_loss = s, grad_lse = 2 z s lse. The gradient may alias the logits
// (in-place form): every thread reads the target logit and its share of the row before the barrier
// that completes the reduction, and in the sweep each element is read and then written by the same
// thread. Split rows (few rows, huge C) cannot finish a row inside one block, so there the fused op
// runs three kernels: partial statistics, the combine (loss, lse, and the capped target logit saved
// to a workspace because its block may overwrite it), then the elementwise gradient.
//
// Offsets are int64 everywhere (N * C passes 2^31 at 32k tokens x 128k classes).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math_constants.h>

#include <cstddef>
#include <cstdint>

#include <smoothing_ext/xent_math.h>

#include "elem_convert.cuh"

#if defined(__CUDACC__) || defined(SIMT_CPU)

// kernel<<<grid, block, smem, stream>>>(args...), or the simt equivalent. `kernel` must be a plain
// name (bind template instances to a function pointer first).
#if defined(SIMT_CPU)
#define SMOOTHING_LAUNCH(kernel, grid, block, smem, stream, ...) \
  SIMT_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#define SMOOTHING_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace smoothing_ext {
namespace cuda {

// ------------------------------------------------------------------------------------------------
// parameters
// ------------------------------------------------------------------------------------------------

enum : int { kModeIndex = 0, kModeProb = 1, kModeProbA = 2 };

template <typename scalar_t, typename acc_t>
struct XentParams {
  const scalar_t* x;         // logits (N, C, S), contiguous
  const int64_t* target;     // index targets (N, S), int64; nullptr for probability targets
  const scalar_t* y;         // probability targets (N, C, S) in the input dtype; nullptr for index
  const acc_t* weight;       // (C,) in acc dtype, or nullptr
  const double* weight_sum;  // device scalar sum_j w_j (double, as the CPU path), nullptr: W = C
  int64_t N, C, S;
  int64_t ignore_index;
  acc_t on, off;             // q_j = on [j == t] + off (index) or on y_j + off (probability)
  // forward outputs (N * S, acc dtype)
  acc_t* loss;
  acc_t* lse;
  // backward inputs (N * S, acc dtype; grad_lse may be nullptr) and output (input dtype)
  const acc_t* grad_loss;
  const acc_t* grad_lse;
  const acc_t* lse_in;
  scalar_t* grad_input;
  // probability backward: per-row A = sum_j w_j q_j (workspace, N * S)
  acc_t* row_a;
  acc_t cap;                 // soft-cap c > 0 (read only by CAP = true instances)
  // fused: grad = s d(loss + z lse^2 [t != ignore_index]) / dx with s = *grad_scale (1 if nullptr),
  // read on the device so that a scale living on the GPU (AMP's loss scale) costs no sync.
  acc_t z_loss;
  const acc_t* grad_scale;
  // fused, split rows: the capped target logit of each row, saved by the combine kernel (N * S);
  // nullptr otherwise.
  acc_t* row_xt;
};

// ------------------------------------------------------------------------------------------------
// scalar helpers
// ------------------------------------------------------------------------------------------------

using cuda_elem::FromAcc;
using cuda_elem::to_acc;
using cuda_elem::pack_to_acc;
using cuda_elem::store_pack16;

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return -CUDART_INF_F; }
template <>
__device__ __forceinline__ double neg_inf<double>() { return -CUDART_INF; }
template <typename acc_t>
__device__ __forceinline__ acc_t quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() { return CUDART_NAN_F; }
template <>
__device__ __forceinline__ double quiet_nan<double>() { return CUDART_NAN; }

// exp(d) for d = x - m <= 0 (or x - lse), once per element and pass. float: 2^(d * log2(e)) instead
// of the longer accurate expf sequence, so that the bf16 forward stays memory-bound; d is formed
// first, so d is exact near the maximum and the relative error of the product only matters for tiny
// terms (16-bit logits form the exponent with one FFMA instead, see push_pack). -inf -> 0,
// NaN -> NaN. double: exp. The per-row formulas (lse, loss, target-class gradient) keep
// xent_math.h's se_exp / expm1 / log1p.
//
// On the device the float version is one MUFU.EX2 (ex2.approx.ftz.f32: max relative error 2^-22 per
// the PTX ISA) after the multiply, without exp2f's denormal scaling (a compare and two multiplies per
// element): results below 2^-126 (terms e^-87 below the row maximum) flush to 0, which changes no sum
// that also holds the maximum's 1 by more than 1e-38, and a gradient element by at most 1.2e-38.
__device__ __forceinline__ float elem_exp2(float d2) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d2));
  return r;
#else
  return exp2f(d2);
#endif
}
__device__ __forceinline__ float elem_exp(float d) { return elem_exp2(d * 1.44269504088896340736f); }
__device__ __forceinline__ double elem_exp(double d) { return se_exp(d); }

// 16 bytes of input elements, loaded and stored as one vector.
template <typename scalar_t>
struct __align__(16) Pack {
  static constexpr int kN = 16 / static_cast<int>(sizeof(scalar_t));
  scalar_t v[kN];
};

// (strided kernels: minBlocksPerSM 4, or 2 for double, keeps ptxas from trading spills for occupancy)
// 16-byte loads in flight per thread in the row kernels. double: 2, which keeps the block kernels
// under 64 registers (2 blocks of 512 threads per SM) without spills.
template <typename scalar_t>
constexpr int kUnroll = sizeof(scalar_t) == 8 ? 2 : 4;

template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t>*>(p);
}

// A logit in acc_t, soft-capped when CAP.
template <bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load_x(const XentParams<scalar_t, acc_t>& p, scalar_t raw) {
  const acc_t v = to_acc(raw);
  if constexpr (CAP) {
    return softcap_apply(v, p.cap);
  } else {
    return v;
  }
}

// ------------------------------------------------------------------------------------------------
// per-row statistics and their (associative, commutative) merge
// ------------------------------------------------------------------------------------------------

// m: running maximum; cnt: entries equal to m; rest: sum of exp(x_j - m) over the others;
// a, b: index: a = sum_j w_j x_j; probability: a = sum_j w_j q_j, b = sum_j w_j q_j x_j.
template <typename acc_t>
struct RowStats {
  acc_t m, cnt, rest, a, b;
};

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> stats_empty() {
  RowStats<acc_t> s;
  s.m = neg_inf<acc_t>();
  s.cnt = acc_t(0);
  s.rest = acc_t(0);
  s.a = acc_t(0);
  s.b = acc_t(0);
  return s;
}

// Raises the running maximum to v (if larger): the entries counted at the old maximum and the
// rest are rescaled into `rest`. NaN never becomes the maximum (the comparison is false); it
// reaches `rest` through exp and propagates from there.
template <typename acc_t>
__device__ __forceinline__ void stats_raise_max(RowStats<acc_t>& s, acc_t v) {
  if (v > s.m) {
    const acc_t f = elem_exp(s.m - v);  // exp(-inf) = 0 for the empty state
    s.rest = (s.rest + s.cnt) * f;
    s.cnt = acc_t(0);
    s.m = v;
  }
}

// Adds one logit that is <= s.m (after stats_raise_max). Written as one branch so that ptxas emits a
// compare and two predicated adds, not selects feeding two adds.
template <typename acc_t>
__device__ __forceinline__ void stats_add_exp(RowStats<acc_t>& s, acc_t v) {
  const acc_t e = elem_exp(v - s.m);
  if (v == s.m) {
    s.cnt += acc_t(1);
  } else {
    s.rest += e;
  }
}

// The same with the base-2 exponent (x - m) log2e already formed by the caller (float only).
__device__ __forceinline__ void stats_add_exp2(RowStats<float>& s, float v, float d2) {
  const float e = elem_exp2(d2);
  if (v == s.m) {
    s.cnt += 1.0f;
  } else {
    s.rest += e;
  }
}

// Larger of two logits, one FMNMX. NaN is never chosen over a number (as with the comparison it
// replaces, a NaN reaches the sums through exp instead).
__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> stats_merge(const RowStats<acc_t>& x, const RowStats<acc_t>& y) {
  RowStats<acc_t> r;
  r.a = x.a + y.a;
  r.b = x.b + y.b;
  if (x.m == y.m) {
    r.m = x.m;
    r.cnt = x.cnt + y.cnt;
    r.rest = x.rest + y.rest;
  } else if (x.m > y.m) {
    r.m = x.m;
    r.cnt = x.cnt;
    r.rest = x.rest + (y.rest + y.cnt) * elem_exp(y.m - x.m);
  } else {
    r.m = y.m;
    r.cnt = y.cnt;
    r.rest = y.rest + (x.rest + x.cnt) * elem_exp(x.m - y.m);
  }
  return r;
}

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> stats_shfl_xor(const RowStats<acc_t>& s, int off) {
  RowStats<acc_t> o;
  o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
  o.cnt = __shfl_xor_sync(0xffffffffu, s.cnt, off);
  o.rest = __shfl_xor_sync(0xffffffffu, s.rest, off);
  o.a = __shfl_xor_sync(0xffffffffu, s.a, off);
  o.b = __shfl_xor_sync(0xffffffffu, s.b, off);
  return o;
}

// Butterfly over aligned groups of G lanes (G <= 32); every lane of the warp must call it.
template <int G, typename acc_t>
__device__ __forceinline__ RowStats<acc_t> warp_reduce(RowStats<acc_t> s) {
#pragma unroll
  for (int off = G / 2; off > 0; off /= 2) s = stats_merge(s, stats_shfl_xor(s, off));
  return s;
}

// Whole-block reduction (blockDim.x a multiple of 32, <= 1024); the result is valid in thread 0.
// `red` is shared memory for 32 entries. Every thread of the block must call it.
template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> block_reduce(RowStats<acc_t> s, RowStats<acc_t>* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  s = warp_reduce<32>(s);
  if (lane == 0) red[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < nwarps ? red[lane] : stats_empty<acc_t>();
    s = warp_reduce<32>(s);
  }
  __syncthreads();  // `red` is reused by the caller's next row
  return s;
}

// Thread groups: G > 0 is a group of G lanes inside a warp (one row each), G == 0 the whole block.
template <int G>
__device__ __forceinline__ int group_lane() { return G > 0 ? static_cast<int>(threadIdx.x) % G : static_cast<int>(threadIdx.x); }
template <int G>
__device__ __forceinline__ int group_size() { return G > 0 ? G : static_cast<int>(blockDim.x); }
template <int G>
__device__ __forceinline__ int group_id() { return G > 0 ? static_cast<int>(threadIdx.x) / G : 0; }
template <int G>
__device__ __forceinline__ int groups_per_block() { return G > 0 ? static_cast<int>(blockDim.x) / G : 1; }

template <int G, typename acc_t>
__device__ __forceinline__ RowStats<acc_t> group_reduce(RowStats<acc_t> s, RowStats<acc_t>* red) {
  if constexpr (G > 0) {
    return warp_reduce<G>(s);
  } else {
    return block_reduce(s, red);
  }
}

// Flat element offset of the first logit of row `pos` = n * S + s.
__device__ __forceinline__ int64_t row_base(int64_t pos, int64_t C, int64_t S) {
  return S == 1 ? pos * C : (pos / S) * C * S + pos % S;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t weight_sum(const XentParams<scalar_t, acc_t>& p) {
  return p.weight != nullptr ? static_cast<acc_t>(*p.weight_sum) : static_cast<acc_t>(p.C);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t weight_at(const XentParams<scalar_t, acc_t>& p, int64_t j) {
  return p.weight != nullptr ? p.weight[j] : acc_t(1);
}

// ------------------------------------------------------------------------------------------------
// forward: accumulate one element / one 16-byte vector into the row statistics
// ------------------------------------------------------------------------------------------------

template <int MODE, typename scalar_t, typename acc_t>
__device__ __forceinline__ void push_one(const XentParams<scalar_t, acc_t>& p, RowStats<acc_t>& s, int64_t j,
                                         acc_t v, acc_t yv) {
  if (MODE != kModeProbA) {
    stats_raise_max(s, v);
    stats_add_exp(s, v);
  }
  if (MODE == kModeIndex) {
    s.a += p.weight != nullptr ? p.weight[j] * v : v;
  } else {
    acc_t q = prob_q(yv, SmoothCoefs<acc_t>{p.on, p.off});
    if (p.weight != nullptr) q *= p.weight[j];
    s.a += q;
    if (MODE == kModeProb) s.b += q * v;
  }
}

// Largest logit of U packs (uncapped), for one stats_raise_max per U vectors. 16-bit types: a packed
// maximum per pair of elements (HMNMX2), converted once at the end.
template <int U, typename scalar_t>
__device__ __forceinline__ auto packs_max(const Pack<scalar_t> (&xp)[U]) {
  constexpr int V = Pack<scalar_t>::kN;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  constexpr bool kPacked = false;  // no HMNMX2 before sm_80: its emulation costs more than FMNMX
#else
  constexpr bool kPacked = sizeof(scalar_t) == 2;
#endif
  if constexpr (kPacked) {
    constexpr int kW = U * 4;  // 32-bit words, a power of two
    static_assert((kW & (kW - 1)) == 0, "packs_max: U must be a power of two");
    unsigned int w[kW];
#pragma unroll
    for (int u = 0; u < U; ++u) memcpy(&w[4 * u], &xp[u], 16);
    // a tree with constant trip counts, so that every index is static (registers, no local memory)
#pragma unroll
    for (int half = kW / 2; half >= 1; half /= 2) {
#pragma unroll
      for (int i = 0; i < kW / 2; ++i) {
        if (i < half) w[i] = cuda_elem::pair_max<scalar_t>(w[i], w[i + half]);
      }
    }
    scalar_t h[2];
    memcpy(h, &w[0], 4);
    return max_of(to_acc(h[0]), to_acc(h[1]));
  } else {
    auto mx = to_acc(xp[0].v[0]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int k = 0; k < V; ++k) mx = max_of(mx, to_acc(xp[u].v[k]));
    }
    return mx;
  }
}

// RAISED: the caller has already raised s.m to at least this vector's maximum (packs_max).
// COUNT = false: the caller knows that no element of the vector equals s.m (its maximum is below it),
// so every term goes to `rest` without the comparison and the two predicated adds of count-of-max.
template <int MODE, bool CAP, bool RAISED = false, bool COUNT = true, typename scalar_t, typename acc_t>
__device__ __forceinline__ void push_pack(const XentParams<scalar_t, acc_t>& p, RowStats<acc_t>& s, int64_t j,
                                          const Pack<scalar_t>& xp, const Pack<scalar_t>& yp) {
  static_assert(COUNT || RAISED, "push_pack: COUNT = false needs the maximum raised by the caller");
  constexpr int V = Pack<scalar_t>::kN;
  acc_t xv[V];
  if (MODE != kModeProbA) {
    pack_to_acc(xp.v, xv);
    if constexpr (CAP) {
#pragma unroll
      for (int k = 0; k < V; ++k) xv[k] = softcap_apply(xv[k], p.cap);
    }
    if constexpr (!RAISED) {
      acc_t mx = xv[0];
#pragma unroll
      for (int k = 1; k < V; ++k) mx = max_of(mx, xv[k]);
      stats_raise_max(s, mx);  // one rescale per vector at most
    }
    if constexpr (sizeof(scalar_t) == 2 && sizeof(acc_t) == 4) {
      // 16-bit logits: exp(x - m) = 2^(x log2e - m log2e), one FFMA with m log2e rounded once per
      // vector. That rounding shifts every exponent of the row by at most |m| 2^-24 log2e, a relative
      // error of at most |m| 2^-24 in each term (6e-6 at |m| = 100), against the 2^-8 resolution of
      // the input. Entries equal to the maximum are still counted by comparison, never by their exp.
      // float and double logits keep the exact difference x - m.
      const acc_t nml = -s.m * acc_t(1.44269504088896340736);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d2 = fmaf(xv[k], 1.44269504088896340736f, nml);
        if constexpr (COUNT) {
          stats_add_exp2(s, xv[k], d2);
        } else {
          s.rest += elem_exp2(d2);
        }
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if constexpr (COUNT) {
          stats_add_exp(s, xv[k]);
        } else {
          s.rest += elem_exp(xv[k] - s.m);
        }
      }
    }
  }
  const bool has_w = p.weight != nullptr;
  if (MODE == kModeIndex) {
    if (has_w) {
#pragma unroll
      for (int k = 0; k < V; ++k) s.a += p.weight[j + k] * xv[k];
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) s.a += xv[k];
    }
  } else {
    const SmoothCoefs<acc_t> c{p.on, p.off};
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc_t q = prob_q(to_acc(yp.v[k]), c);
      if (has_w) q *= p.weight[j + k];
      s.a += q;
      if (MODE == kModeProb) s.b += q * xv[k];
    }
  }
}

// Accumulates row elements [j0, j0 + len) with `nthr` threads (this one is `lane`).
// xr / yr point at element 0 of the (contiguous) row.
template <int MODE, bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ void scan_segment(const XentParams<scalar_t, acc_t>& p, const scalar_t* xr,
                                             const scalar_t* yr, int64_t j0, int64_t len, int lane, int nthr,
                                             RowStats<acc_t>& s) {
  constexpr int V = Pack<scalar_t>::kN;
  constexpr int U = kUnroll<scalar_t>;
  // The vectorized stream is the logits, or the targets when only those are read.
  const scalar_t* prim = MODE == kModeProbA ? yr : xr;
  const uintptr_t mis = reinterpret_cast<uintptr_t>(prim + j0) & 15u;
  int64_t head = static_cast<int64_t>(((16u - mis) & 15u) / sizeof(scalar_t));
  if (head > len) head = len;
  // Probability targets next to the logits: vector loads only when both streams share the alignment.
  const bool y_vec = MODE == kModeProb && ((reinterpret_cast<uintptr_t>(yr + j0) & 15u) == mis);
  const acc_t zero = acc_t(0);

  for (int64_t k = lane; k < head; k += nthr) {
    const int64_t j = j0 + k;
    push_one<MODE>(p, s, j, MODE == kModeProbA ? zero : load_x<CAP>(p, xr[j]), MODE == kModeIndex ? zero : to_acc(yr[j]));
  }
  const int64_t jv = j0 + head;
  const int64_t nvec = (len - head) / V;
  Pack<scalar_t> xp[U], yp[U];
  int64_t i = lane;
  for (; i + (U - 1) * static_cast<int64_t>(nthr) < nvec; i += U * static_cast<int64_t>(nthr)) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t j = jv + (i + u * static_cast<int64_t>(nthr)) * V;
      if (MODE != kModeProbA) xp[u] = load_pack(xr + j);
      if (MODE == kModeProbA || (MODE == kModeProb && y_vec)) yp[u] = load_pack(yr + j);
      if (MODE == kModeProb && !y_vec) {
#pragma unroll
        for (int k = 0; k < V; ++k) yp[u].v[k] = yr[j + k];
      }
    }
    if constexpr (MODE != kModeProbA && !CAP) {
      // one rescale per U vectors at most (soft-capped logits keep one per vector: the maximum of
      // the capped values is what the counts compare with)
      const acc_t gm = packs_max(xp);
      stats_raise_max(s, gm);
      // double keeps the counting path everywhere: the second copy of the unrolled body costs it 27
      // registers (25% occupancy) for a loop that its software exp dominates anyway
      if (sizeof(acc_t) == 8 || gm == s.m) {
        // the group holds the running maximum (it raised it, or ties it): count its entries
#pragma unroll
        for (int u = 0; u < U; ++u)
          push_pack<MODE, CAP, true>(p, s, jv + (i + u * static_cast<int64_t>(nthr)) * V, xp[u], yp[u]);
      } else {
        // every entry is below the maximum (or gm is NaN, which reaches `rest` through exp): the
        // common case, all groups of a row but the few that raise or tie its maximum
#pragma unroll
        for (int u = 0; u < U; ++u)
          push_pack<MODE, CAP, true, false>(p, s, jv + (i + u * static_cast<int64_t>(nthr)) * V, xp[u], yp[u]);
      }
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u) push_pack<MODE, CAP>(p, s, jv + (i + u * static_cast<int64_t>(nthr)) * V, xp[u], yp[u]);
    }
  }
  for (; i < nvec; i += nthr) {
    const int64_t j = jv + i * V;
    if (MODE != kModeProbA) xp[0] = load_pack(xr + j);
    if (MODE == kModeProbA || (MODE == kModeProb && y_vec)) yp[0] = load_pack(yr + j);
    if (MODE == kModeProb && !y_vec) {
#pragma unroll
      for (int k = 0; k < V; ++k) yp[0].v[k] = yr[j + k];
    }
    push_pack<MODE, CAP>(p, s, j, xp[0], yp[0]);
  }
  for (int64_t k = head + nvec * V + lane; k < len; k += nthr) {
    const int64_t j = j0 + k;
    push_one<MODE>(p, s, j, MODE == kModeProbA ? zero : load_x<CAP>(p, xr[j]), MODE == kModeIndex ? zero : to_acc(yr[j]));
  }
}

// Loss of an index-target row from its lse, sum_j w_j x_j and the (capped) target logit x_t.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t index_loss(const XentParams<scalar_t, acc_t>& p, int64_t t, acc_t lse, acc_t sum_wx,
                                            acc_t x_t) {
  if (t == p.ignore_index) return acc_t(0);
  if (t < 0 || t >= p.C) return quiet_nan<acc_t>();  // out-of-range class index: documented NaN, no assert, no sync
  return index_row_loss(lse, x_t, sum_wx, weight_at(p, t), weight_sum(p), SmoothCoefs<acc_t>{p.on, p.off});
}

// Writes the outputs of row `pos` from its complete statistics.
template <int MODE, bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ void finish_row(const XentParams<scalar_t, acc_t>& p, int64_t pos,
                                           const RowStats<acc_t>& s) {
  if (MODE == kModeProbA) {
    p.row_a[pos] = s.a;
    return;
  }
  const acc_t lse = lse_from_parts(s.m, s.cnt, s.rest);
  p.lse[pos] = lse;
  if (MODE == kModeProb) {
    p.loss[pos] = prob_row_loss(lse, s.a, s.b);
    return;
  }
  const int64_t t = p.target[pos];
  acc_t x_t = acc_t(0);
  if (t != p.ignore_index && t >= 0 && t < p.C) x_t = load_x<CAP>(p, p.x[row_base(pos, p.C, p.S) + t * p.S]);
  p.loss[pos] = index_loss(p, t, lse, s.a, x_t);
  if (p.row_xt != nullptr) p.row_xt[pos] = x_t;  // fused split rows: the gradient kernel's copy
}

// ------------------------------------------------------------------------------------------------
// forward kernels
// ------------------------------------------------------------------------------------------------

constexpr int kMaxBlock = 512;    // block-per-row kernels (G == 0)
constexpr int kGroupBlock = 256;  // row-per-group kernels (G > 0): 256 threads per block

// S == 1. Task = (row, chunk); `splits` chunks of `chunk` elements per row. With splits > 1 the
// statistics of each chunk go to partial[row * splits + chunk] for fwd_combine_kernel.
// minBlocksPerSM: 64 registers (50% occupancy: 2 blocks of 512 or 4 of 256 threads) for the plain
// float-accumulating index forward, which fits there without spills; 1 for the others (double,
// soft-capped, probability targets), which ptxas would otherwise spill to stay at 64 registers.
// (sm_75: 3 blocks of 256, 85 registers: the fp16 row-per-group kernels spill at 64 there.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr int kFwdGroupMinBlocks = 3;
#else
constexpr int kFwdGroupMinBlocks = 4;
#endif
template <typename acc_t, int MODE, bool CAP, int G>
constexpr int kFwdMinBlocks = (sizeof(acc_t) == 4 && MODE == kModeIndex && !CAP) ? (G > 0 ? kFwdGroupMinBlocks : 2) : 1;

template <typename scalar_t, typename acc_t, int MODE, bool CAP, int G>
__global__ void __launch_bounds__(G > 0 ? kGroupBlock : kMaxBlock, (kFwdMinBlocks<acc_t, MODE, CAP, G>))
    fwd_rows_kernel(XentParams<scalar_t, acc_t> p, int64_t splits, int64_t chunk, RowStats<acc_t>* partial) {
  __shared__ RowStats<acc_t> red[32];
  const int64_t gpb = groups_per_block<G>();
  const int64_t ntasks = p.N * splits;
  // The loop bound is uniform over the block, so every lane reaches the shuffles and barriers.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * gpb; base < ntasks; base += static_cast<int64_t>(gridDim.x) * gpb) {
    const int64_t task = base + group_id<G>();
    const bool active = task < ntasks;
    RowStats<acc_t> s = stats_empty<acc_t>();
    int64_t row = 0;
    if (active) {
      row = task / splits;
      const int64_t j0 = (task % splits) * chunk;
      const int64_t len = p.C - j0 < chunk ? p.C - j0 : chunk;
      const scalar_t* xr = MODE == kModeProbA ? nullptr : p.x + row * p.C;
      const scalar_t* yr = MODE == kModeIndex ? nullptr : p.y + row * p.C;
      scan_segment<MODE, CAP>(p, xr, yr, j0, len, group_lane<G>(), group_size<G>(), s);
    }
    s = group_reduce<G>(s, red);
    if (active && group_lane<G>() == 0) {
      if (splits == 1) {
        finish_row<MODE, CAP>(p, row, s);
      } else {
        partial[task] = s;
      }
    }
  }
}

// Merges the `splits` partial statistics of each row in chunk order (deterministic) and finishes it.
template <typename scalar_t, typename acc_t, int MODE, bool CAP>
__global__ void __launch_bounds__(256)
    fwd_combine_kernel(XentParams<scalar_t, acc_t> p, int64_t splits, const RowStats<acc_t>* partial) {
  const int64_t rows = p.N * p.S;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    RowStats<acc_t> s = partial[row * splits];
    for (int64_t k = 1; k < splits; ++k) s = stats_merge(s, partial[row * splits + k]);
    finish_row<MODE, CAP>(p, row, s);
  }
}

constexpr int kStridedX = 32;  // positions per block (threadIdx.x)
constexpr int kStridedY = 8;   // class slices per block (threadIdx.y)

// S > 1: rows are strided by S; threads run across consecutive positions.
template <typename scalar_t, typename acc_t, int MODE, bool CAP>
__global__ void __launch_bounds__(kStridedX * kStridedY, sizeof(acc_t) == 8 ? 2 : 4) fwd_strided_kernel(XentParams<scalar_t, acc_t> p) {
  __shared__ RowStats<acc_t> red[kStridedY][kStridedX];
  const int64_t npos = p.N * p.S;
  const int64_t C = p.C, S = p.S;
  for (int64_t tile = blockIdx.x; tile * kStridedX < npos; tile += gridDim.x) {
    const int64_t pos = tile * kStridedX + threadIdx.x;
    RowStats<acc_t> s = stats_empty<acc_t>();
    if (pos < npos) {
      const int64_t base = row_base(pos, C, S);
      for (int64_t j = threadIdx.y; j < C; j += kStridedY) {
        const int64_t off = base + j * S;
        push_one<MODE>(p, s, j, MODE == kModeProbA ? acc_t(0) : load_x<CAP>(p, p.x[off]),
                       MODE == kModeIndex ? acc_t(0) : to_acc(p.y[off]));
      }
    }
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && pos < npos) {
      for (int k = 1; k < kStridedY; ++k) s = stats_merge(s, red[k][threadIdx.x]);
      finish_row<MODE, CAP>(p, pos, s);
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------------------
// backward
// ------------------------------------------------------------------------------------------------

// grad_j = A exp(x_j - lse) - B v_j with v_j = w_j (index) or w_j q_j (probability); at j == t
// (index, valid target) the exact value tv instead. zero: the row's gradient is exactly 0 (as on CPU).
template <typename acc_t>
struct BwdRow {
  acc_t A, B, lse, tv;
  int64_t t;
  bool zero;
};

// Index-target row from its upstream gradients g (of the loss) and gl (of lse) and the (capped)
// target logit x_t, which is only read for a valid, not ignored t.
template <bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ BwdRow<acc_t> index_bwd_row(const XentParams<scalar_t, acc_t>& p, int64_t t, acc_t lse,
                                                       acc_t g, acc_t gl, acc_t x_t) {
  BwdRow<acc_t> r;
  r.lse = lse;
  r.t = -1;
  r.tv = acc_t(0);
  if (t == p.ignore_index) {
    r.A = gl;  // only the lse term reaches an ignored row
    r.B = acc_t(0);
  } else if (t < 0 || t >= p.C) {
    r.A = quiet_nan<acc_t>();  // out-of-range class index: a NaN row, as documented for the forward
    r.B = acc_t(0);
  } else {
    const SmoothCoefs<acc_t> c{p.on, p.off};
    const acc_t w_t = weight_at(p, t), W = weight_sum(p);
    r.A = g * index_p_coef(w_t, W, c) + gl;
    r.B = g * c.off;
    r.t = t;
    r.tv = g * index_target_grad(x_t, lse, w_t, W, c);
    if (gl != acc_t(0)) r.tv += gl * se_exp(x_t - lse);
    if constexpr (CAP) r.tv *= softcap_slope(x_t, p.cap);  // the chain rule of the cap, at x_t
  }
  r.zero = (r.A == acc_t(0) && r.B == acc_t(0));
  return r;
}

// Fused op: g = s, gl = 2 z s lse for rows with a target; an ignored row gets neither (gradient 0).
// z == 0 gives gl = 0 exactly, whatever lse is (no 0 * inf).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void fused_upstream(const XentParams<scalar_t, acc_t>& p, int64_t t, acc_t lse, acc_t& g,
                                               acc_t& gl) {
  g = p.grad_scale != nullptr ? *p.grad_scale : acc_t(1);
  gl = (p.z_loss != acc_t(0) && t != p.ignore_index) ? acc_t(2) * p.z_loss * g * lse : acc_t(0);
}

// FUSED: the gradient pass of the fused op on split rows (upstream gradients from grad_scale / z_loss,
// x_t from row_xt). A template flag, so that the plain backward kernels carry none of it.
template <bool PROB, bool CAP, bool FUSED, typename scalar_t, typename acc_t>
__device__ __forceinline__ BwdRow<acc_t> bwd_row(const XentParams<scalar_t, acc_t>& p, int64_t pos) {
  const acc_t lse = p.lse_in[pos];
  if (PROB) {
    BwdRow<acc_t> r;
    const acc_t g = p.grad_loss[pos];
    const acc_t gl = p.grad_lse != nullptr ? p.grad_lse[pos] : acc_t(0);
    r.lse = lse;
    r.t = -1;
    r.tv = acc_t(0);
    r.A = g * p.row_a[pos] + gl;
    r.B = g;
    r.zero = false;
    return r;
  }
  const int64_t t = p.target[pos];
  const bool has_t = t != p.ignore_index && t >= 0 && t < p.C;
  acc_t g, gl, x_t = acc_t(0);
  if constexpr (FUSED) {
    // in place, another block may already have overwritten x_t: the combine kernel's copy
    fused_upstream(p, t, lse, g, gl);
    if (has_t) x_t = p.row_xt[pos];
  } else {
    g = p.grad_loss[pos];
    gl = p.grad_lse != nullptr ? p.grad_lse[pos] : acc_t(0);
    if (has_t) x_t = load_x<CAP>(p, p.x[row_base(pos, p.C, p.S) + t * p.S]);
  }
  return index_bwd_row<CAP>(p, t, lse, g, gl, x_t);
}

// W: 1 = class weights present, 0 = absent, -1 = test p.weight here (per element).
template <bool PROB, bool CAP, int W = -1, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t grad_elem_other(const XentParams<scalar_t, acc_t>& p, const BwdRow<acc_t>& r,
                                                 int64_t j, acc_t v, acc_t yv, acc_t slope);

// v: the (capped) logit x_j; yv: the probability target (PROB).
template <bool PROB, bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t grad_elem(const XentParams<scalar_t, acc_t>& p, const BwdRow<acc_t>& r, int64_t j,
                                           acc_t v, acc_t yv) {
  acc_t slope = acc_t(1);
  if constexpr (CAP) slope = softcap_slope(v, p.cap);
  if (!PROB && j == r.t) return r.tv;
  if (r.zero) return acc_t(0);
  return grad_elem_other<PROB, CAP>(p, r, j, v, yv, slope);
}

// grad_elem() of an element that is not the target class of a row whose r.zero is false.
template <bool PROB, bool CAP, int W, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t grad_elem_other(const XentParams<scalar_t, acc_t>& p, const BwdRow<acc_t>& r,
                                                 int64_t j, acc_t v, acc_t yv, acc_t slope) {
  const bool has_w = W == 1 || (W == -1 && p.weight != nullptr);
  acc_t b;
  if (PROB) {
    b = prob_q(yv, SmoothCoefs<acc_t>{p.on, p.off});
    if (has_w) b *= p.weight[j];
  } else {
    b = has_w ? p.weight[j] : acc_t(1);
  }
  acc_t e;
  if constexpr (sizeof(scalar_t) == 2 && sizeof(acc_t) == 4) {
    // 16-bit gradients: one FFMA, lse log2e is loop-invariant (error as in push_pack, |lse| 2^-24)
    e = elem_exp2(fmaf(v, 1.44269504088896340736f, -r.lse * 1.44269504088896340736f));
  } else {
    e = elem_exp(v - r.lse);
  }
  const acc_t gv = r.A * e - r.B * b;
  if constexpr (CAP) {
    return gv * slope;
  } else {
    return gv;
  }
}

// Writes the gradient of row elements [j0, j0 + len) with `nthr` threads (this one is `lane`); xr / yr
// / gr point at element 0 of the contiguous row. Each element is read and written by the same thread,
// so gr may be xr (in-place fused op).
template <bool PROB, bool CAP, typename scalar_t, typename acc_t>
__device__ __forceinline__ void grad_segment(const XentParams<scalar_t, acc_t>& p, const BwdRow<acc_t>& r,
                                             const scalar_t* xr, const scalar_t* yr, scalar_t* gr, int64_t j0,
                                             int64_t len, int lane, int nthr) {
  constexpr int V = Pack<scalar_t>::kN;
  constexpr int U = kUnroll<scalar_t>;
  const uintptr_t mis = reinterpret_cast<uintptr_t>(xr + j0) & 15u;
  int64_t head = static_cast<int64_t>(((16u - mis) & 15u) / sizeof(scalar_t));
  if (head > len) head = len;
  const bool y_vec = PROB && ((reinterpret_cast<uintptr_t>(yr + j0) & 15u) == mis);
  const bool g_vec = (reinterpret_cast<uintptr_t>(gr + j0) & 15u) == mis;
  if (r.zero) {
    // a row whose gradient is exactly 0 (ignored, no lse gradient): whatever the logits hold
    // (inf, NaN), nothing is read
    const scalar_t zero = FromAcc<scalar_t>::cvt(acc_t(0));
    for (int64_t k = lane; k < len; k += nthr) gr[j0 + k] = zero;
    return;
  }

  for (int64_t k = lane; k < head; k += nthr) {
    const int64_t j = j0 + k;
    gr[j] = FromAcc<scalar_t>::cvt(
        grad_elem<PROB, CAP>(p, r, j, load_x<CAP>(p, xr[j]), PROB ? to_acc(yr[j]) : acc_t(0)));
  }
  const int64_t jv = j0 + head;
  const int64_t nvec = (len - head) / V;
  for (int64_t i = lane; i < nvec; i += U * static_cast<int64_t>(nthr)) {
    Pack<scalar_t> xp[U], yp[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t iu = i + u * static_cast<int64_t>(nthr);
      if (iu < nvec) {
        const int64_t j = jv + iu * V;
        xp[u] = load_pack(xr + j);
        if (PROB) {
          if (y_vec) {
            yp[u] = load_pack(yr + j);
          } else {
#pragma unroll
            for (int k = 0; k < V; ++k) yp[u].v[k] = yr[j + k];
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t iu = i + u * static_cast<int64_t>(nthr);
      if (iu < nvec) {
        const int64_t j = jv + iu * V;
        Pack<scalar_t> out;
        // The target class gets the common formula here and is rewritten after the loop.
        {
          acc_t xv[V], yv[V], slope[V];
          pack_to_acc(xp[u].v, xv);
#pragma unroll
          for (int k = 0; k < V; ++k) {
            if constexpr (CAP) xv[k] = softcap_apply(xv[k], p.cap);
            slope[k] = acc_t(1);
            if constexpr (CAP) slope[k] = softcap_slope(xv[k], p.cap);
            yv[k] = PROB ? to_acc(yp[u].v[k]) : acc_t(0);
          }
          acc_t gv[V];
          // one test of the class weights per vector, so that the unweighted path has none per element
          if (p.weight != nullptr) {
#pragma unroll
            for (int k = 0; k < V; ++k) gv[k] = grad_elem_other<PROB, CAP, 1>(p, r, j + k, xv[k], yv[k], slope[k]);
          } else {
#pragma unroll
            for (int k = 0; k < V; ++k) gv[k] = grad_elem_other<PROB, CAP, 0>(p, r, j + k, xv[k], yv[k], slope[k]);
          }
#pragma unroll
          for (int k = 0; k < V; ++k) out.v[k] = FromAcc<scalar_t>::cvt(gv[k]);
        }
        if (g_vec) {
          store_pack16<sizeof(scalar_t) == 4>(gr + j, out);  // float: NVVM splits the plain store (unknown alignment)
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) gr[j + k] = out.v[k];
        }
      }
    }
  }
  // The target class inside the vectors: the thread that stored its vector above (vector i goes to
  // lane i % nthr) overwrites it, so program order makes this store the last one. r.tv already holds
  // the cap's chain-rule factor, and no logit is read (in place, x_t is gone by now).
  if (!PROB && r.t >= jv && r.t < jv + nvec * V && ((r.t - jv) / V) % nthr == lane) gr[r.t] = FromAcc<scalar_t>::cvt(r.tv);
  for (int64_t k = head + nvec * V + lane; k < len; k += nthr) {
    const int64_t j = j0 + k;
    gr[j] = FromAcc<scalar_t>::cvt(
        grad_elem<PROB, CAP>(p, r, j, load_x<CAP>(p, xr[j]), PROB ? to_acc(yr[j]) : acc_t(0)));
  }
}

// minBlocksPerSM of bwd_rows_kernel. 0 emits none: ptxas's own register choice, which keeps the plain
// float kernels at higher occupancy than a bound of 1 would. Where that choice (64 registers at 512
// threads, 80 at 256) spills -- double probability targets, double row-per-group kernels on sm_75/80,
// and some soft-capped / fused-split instances -- 1 lets ptxas use what the code needs.
// The float-accumulating index-target row-per-group kernels (256 threads) get 4: 64 registers, 50%,
// no spills -- for 16-bit inputs only from sm_90 on (sm_75/80 spill there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kBwdGroup16At64 = false;
#else
constexpr bool kBwdGroup16At64 = true;
#endif
template <typename scalar_t, typename acc_t, bool PROB, bool CAP, bool FUSED, int G>
constexpr int kBwdMinBlocks =
    (CAP || FUSED || (sizeof(acc_t) == 8 && (PROB || G > 0)))
        ? 1
        : ((sizeof(acc_t) == 4 && !PROB && G > 0 && (sizeof(scalar_t) == 4 || kBwdGroup16At64)) ? 4 : 0);

// S == 1. Elementwise over segments [j0, j0 + len) of rows, same decomposition as the forward.
template <typename scalar_t, typename acc_t, bool PROB, bool CAP, bool FUSED, int G>
__global__ void __launch_bounds__(G > 0 ? kGroupBlock : kMaxBlock, (kBwdMinBlocks<scalar_t, acc_t, PROB, CAP, FUSED, G>))
    bwd_rows_kernel(XentParams<scalar_t, acc_t> p, int64_t splits, int64_t chunk) {
  const int64_t gpb = groups_per_block<G>();
  const int64_t ntasks = p.N * splits;
  const int lane = group_lane<G>(), nthr = group_size<G>();
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * gpb; base < ntasks; base += static_cast<int64_t>(gridDim.x) * gpb) {
    const int64_t task = base + group_id<G>();
    if (task >= ntasks) continue;  // no collectives in this kernel
    const int64_t row = task / splits;
    const int64_t j0 = (task % splits) * chunk;
    const int64_t len = p.C - j0 < chunk ? p.C - j0 : chunk;
    const BwdRow<acc_t> r = bwd_row<PROB, CAP, FUSED>(p, row);
    grad_segment<PROB, CAP>(p, r, p.x + row * p.C, PROB ? p.y + row * p.C : nullptr, p.grad_input + row * p.C, j0,
                            len, lane, nthr);
  }
}

// S > 1: thread (x, y) owns position tile * 32 + x and classes y, y + 8, ...
template <typename scalar_t, typename acc_t, bool PROB, bool CAP>
__global__ void __launch_bounds__(kStridedX * kStridedY, sizeof(acc_t) == 8 ? 2 : 4) bwd_strided_kernel(XentParams<scalar_t, acc_t> p) {
  const int64_t npos = p.N * p.S;
  const int64_t C = p.C, S = p.S;
  for (int64_t tile = blockIdx.x; tile * kStridedX < npos; tile += gridDim.x) {
    const int64_t pos = tile * kStridedX + threadIdx.x;
    if (pos >= npos) continue;
    const BwdRow<acc_t> r = bwd_row<PROB, CAP, false>(p, pos);
    const int64_t base = row_base(pos, C, S);
    for (int64_t j = threadIdx.y; j < C; j += kStridedY) {
      const int64_t off = base + j * S;
      p.grad_input[off] = FromAcc<scalar_t>::cvt(
          grad_elem<PROB, CAP>(p, r, j, load_x<CAP>(p, p.x[off]), PROB ? to_acc(p.y[off]) : acc_t(0)));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// fused forward + gradient (index targets)
// ------------------------------------------------------------------------------------------------

// S == 1, whole rows (splits == 1): a group (8 lanes, a warp or the block) reduces its row, writes
// loss and lse, and writes the gradient. p.grad_input may equal p.x.
template <typename scalar_t, typename acc_t, bool CAP, int G>
__global__ void __launch_bounds__(G > 0 ? kGroupBlock : kMaxBlock, (kFwdMinBlocks<acc_t, kModeIndex, CAP, G>))
    fused_rows_kernel(XentParams<scalar_t, acc_t> p) {
  __shared__ RowStats<acc_t> red[32];
  __shared__ RowStats<acc_t> bcast;  // G == 0: block_reduce leaves the result in thread 0 only
  const int64_t gpb = groups_per_block<G>();
  const int lane = group_lane<G>(), nthr = group_size<G>();
  // The loop bound is uniform over the block, so every lane reaches the shuffles and barriers.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * gpb; base < p.N; base += static_cast<int64_t>(gridDim.x) * gpb) {
    const int64_t row = base + group_id<G>();
    const bool active = row < p.N;
    RowStats<acc_t> s = stats_empty<acc_t>();
    int64_t t = 0;
    acc_t x_t = acc_t(0);
    if (active) {
      const scalar_t* xr = p.x + row * p.C;
      scan_segment<kModeIndex, CAP>(p, xr, static_cast<const scalar_t*>(nullptr), 0, p.C, lane, nthr, s);
      t = p.target[row];
      // Read here, before the barrier below: after it, the lane that owns x_t may overwrite it.
      if (t != p.ignore_index && t >= 0 && t < p.C) x_t = load_x<CAP>(p, xr[t]);
    }
    s = group_reduce<G>(s, red);
    if constexpr (G == 0) {
      if (threadIdx.x == 0) bcast = s;
      __syncthreads();  // also orders every read of the row before the first gradient store
      s = bcast;        // rewritten only after the two barriers of the next block_reduce
    } else {
      __syncwarp();  // the reads of the row by all lanes happen before any lane's store
    }
    if (!active) continue;
    const acc_t lse = lse_from_parts(s.m, s.cnt, s.rest);
    if (lane == 0) {
      p.lse[row] = lse;
      p.loss[row] = index_loss(p, t, lse, s.a, x_t);
    }
    acc_t g, gl;
    fused_upstream(p, t, lse, g, gl);
    const BwdRow<acc_t> r = index_bwd_row<CAP>(p, t, lse, g, gl, x_t);
    grad_segment<false, CAP>(p, r, p.x + row * p.C, static_cast<const scalar_t*>(nullptr),
                             p.grad_input + row * p.C, 0, p.C, lane, nthr);
  }
}

// S > 1: the forward strided decomposition, then the gradient by the same threads. Each element is
// read (twice) and written by one thread; the target logit is read by thread y = 0 before the barrier
// after which the thread owning it may overwrite it.
template <typename scalar_t, typename acc_t, bool CAP>
__global__ void __launch_bounds__(kStridedX * kStridedY, sizeof(acc_t) == 8 ? 2 : 4)
    fused_strided_kernel(XentParams<scalar_t, acc_t> p) {
  __shared__ RowStats<acc_t> red[kStridedY][kStridedX];
  __shared__ BwdRow<acc_t> rows[kStridedX];
  const int64_t npos = p.N * p.S;
  const int64_t C = p.C, S = p.S;
  for (int64_t tile = blockIdx.x; tile * kStridedX < npos; tile += gridDim.x) {
    const int64_t pos = tile * kStridedX + threadIdx.x;
    const int64_t base = pos < npos ? row_base(pos, C, S) : 0;
    RowStats<acc_t> s = stats_empty<acc_t>();
    if (pos < npos) {
      for (int64_t j = threadIdx.y; j < C; j += kStridedY) {
        push_one<kModeIndex>(p, s, j, load_x<CAP>(p, p.x[base + j * S]), acc_t(0));
      }
    }
    red[threadIdx.y][threadIdx.x] = s;
    int64_t t = 0;
    acc_t x_t = acc_t(0);
    if (threadIdx.y == 0 && pos < npos) {
      t = p.target[pos];
      if (t != p.ignore_index && t >= 0 && t < C) x_t = load_x<CAP>(p, p.x[base + t * S]);
    }
    __syncthreads();
    if (threadIdx.y == 0 && pos < npos) {
      for (int k = 1; k < kStridedY; ++k) s = stats_merge(s, red[k][threadIdx.x]);
      const acc_t lse = lse_from_parts(s.m, s.cnt, s.rest);
      p.lse[pos] = lse;
      p.loss[pos] = index_loss(p, t, lse, s.a, x_t);
      acc_t g, gl;
      fused_upstream(p, t, lse, g, gl);
      rows[threadIdx.x] = index_bwd_row<CAP>(p, t, lse, g, gl, x_t);
    }
    __syncthreads();
    if (pos < npos) {
      const BwdRow<acc_t> r = rows[threadIdx.x];  // rewritten only after the next tile's first barrier
      for (int64_t j = threadIdx.y; j < C; j += kStridedY) {
        const int64_t off = base + j * S;
        p.grad_input[off] = FromAcc<scalar_t>::cvt(grad_elem<false, CAP>(p, r, j, load_x<CAP>(p, p.x[off]), acc_t(0)));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// per-row scaling of a gradient (_scale_grad_rows_)
// ------------------------------------------------------------------------------------------------

// g (N, C, S) contiguous, in place; row pos = n * S + s is multiplied by scale[pos] (scale[0] when
// scale_numel == 1). A row whose factor is exactly 1 is neither read nor written: the common case
// (upstream gradient 1) costs nothing, and the rows stay bit-identical.
template <typename scalar_t, typename acc_t>
struct ScaleParams {
  scalar_t* g;
  const acc_t* scale;
  int64_t scale_numel;
  int64_t N, C, S;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_factor(const ScaleParams<scalar_t, acc_t>& q, int64_t pos) {
  return q.scale[q.scale_numel == 1 ? 0 : pos];
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t scale_elem(scalar_t v, acc_t f) {
  return FromAcc<scalar_t>::cvt(to_acc(v) * f);
}

// S == 1: the rows decomposition of plan_rows (tasks = (row, chunk)).
template <typename scalar_t, typename acc_t, int G>
__global__ void __launch_bounds__(G > 0 ? kGroupBlock : kMaxBlock)
    scale_rows_kernel(ScaleParams<scalar_t, acc_t> q, int64_t splits, int64_t chunk) {
  constexpr int V = Pack<scalar_t>::kN;
  constexpr int U = kUnroll<scalar_t>;
  const int64_t gpb = groups_per_block<G>();
  const int64_t ntasks = q.N * splits;
  const int lane = group_lane<G>(), nthr = group_size<G>();
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * gpb; base < ntasks; base += static_cast<int64_t>(gridDim.x) * gpb) {
    const int64_t task = base + group_id<G>();
    if (task >= ntasks) continue;  // no collectives in this kernel
    const int64_t row = task / splits;
    const acc_t f = row_factor(q, row);
    if (f == acc_t(1)) continue;
    const int64_t j0 = (task % splits) * chunk;
    const int64_t len = q.C - j0 < chunk ? q.C - j0 : chunk;
    scalar_t* gr = q.g + row * q.C + j0;
    int64_t head = static_cast<int64_t>(((16u - (reinterpret_cast<uintptr_t>(gr) & 15u)) & 15u) / sizeof(scalar_t));
    if (head > len) head = len;
    for (int64_t k = lane; k < head; k += nthr) gr[k] = scale_elem(gr[k], f);
    Pack<scalar_t>* gv = reinterpret_cast<Pack<scalar_t>*>(gr + head);
    const int64_t nvec = (len - head) / V;
    for (int64_t i = lane; i < nvec; i += U * static_cast<int64_t>(nthr)) {
      Pack<scalar_t> pk[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t iu = i + u * static_cast<int64_t>(nthr);
        if (iu < nvec) pk[u] = gv[iu];
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t iu = i + u * static_cast<int64_t>(nthr);
        if (iu < nvec) {
#pragma unroll
          for (int k = 0; k < V; ++k) pk[u].v[k] = scale_elem(pk[u].v[k], f);
          store_pack16(gv + iu, pk[u]);
        }
      }
    }
    for (int64_t k = head + nvec * V + lane; k < len; k += nthr) gr[k] = scale_elem(gr[k], f);
  }
}

// S > 1: thread (x, y) owns position tile * 32 + x and classes y, y + 8, ... (coalesced across x).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kStridedX * kStridedY) scale_strided_kernel(ScaleParams<scalar_t, acc_t> q) {
  const int64_t npos = q.N * q.S;
  for (int64_t tile = blockIdx.x; tile * kStridedX < npos; tile += gridDim.x) {
    const int64_t pos = tile * kStridedX + threadIdx.x;
    if (pos >= npos) continue;
    const acc_t f = row_factor(q, pos);
    if (f == acc_t(1)) continue;
    const int64_t base = row_base(pos, q.C, q.S);
    for (int64_t j = threadIdx.y; j < q.C; j += kStridedY) q.g[base + j * q.S] = scale_elem(q.g[base + j * q.S], f);
  }
}

// ------------------------------------------------------------------------------------------------
// host side: launch planning and launchers (shared by the ATen glue and the simt tests)
// ------------------------------------------------------------------------------------------------

enum : int { kKindStrided = 0, kKindGroup8 = 1, kKindWarp = 2, kKindBlock = 3 };

struct RowPlan {
  int kind;
  int threads;     // threads per block (strided: 32 x 8)
  int64_t splits;  // chunks per row (kKindBlock only; else 1)
  int64_t chunk;   // elements per chunk
  int64_t blocks;  // grid size (the kernels loop when the work needs more)
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// rows = N * S; elem_bytes = sizeof(scalar_t); num_sms of the current device.
inline RowPlan plan_rows(int64_t rows, int64_t C, int64_t S, int elem_bytes, int num_sms) {
  RowPlan pl;
  if (num_sms < 1) num_sms = 1;
  const int64_t max_blocks = static_cast<int64_t>(num_sms) * 64;  // the kernels loop beyond this
  pl.splits = 1;
  pl.chunk = C;
  if (S > 1) {
    pl.kind = kKindStrided;
    pl.threads = kStridedX * kStridedY;
    pl.blocks = ceil_div(rows, kStridedX);
  } else if (C <= 64) {
    pl.kind = kKindGroup8;
    pl.threads = kGroupBlock;
    pl.blocks = ceil_div(rows, kGroupBlock / 8);
  } else if (C <= 2048) {
    pl.kind = kKindWarp;
    pl.threads = kGroupBlock;
    pl.blocks = ceil_div(rows, kGroupBlock / 32);
  } else {
    pl.kind = kKindBlock;
    pl.threads = C >= 16384 ? kMaxBlock : 256;
    // Few long rows: split each into chunks so that ~4 blocks per SM are busy, but keep every
    // chunk at least one full unrolled sweep of the block (threads x 4 x 16 bytes).
    const int64_t vec = 16 / elem_bytes;
    const int64_t min_chunk = static_cast<int64_t>(pl.threads) * vec * 4;
    const int64_t want = static_cast<int64_t>(num_sms) * (2048 / pl.threads);
    if (rows < want) {
      int64_t splits = ceil_div(want, rows);
      const int64_t max_splits = ceil_div(C, min_chunk);
      if (splits > max_splits) splits = max_splits;
      if (splits > 1) {
        pl.chunk = ceil_div(ceil_div(C, splits), vec) * vec;  // chunk starts keep the row's alignment
        pl.splits = ceil_div(C, pl.chunk);
      }
    }
    pl.blocks = rows * pl.splits;
  }
  if (pl.blocks > max_blocks) pl.blocks = max_blocks;
  if (pl.blocks < 1) pl.blocks = 1;
  return pl;
}

template <typename acc_t>
inline size_t partial_bytes(const RowPlan& pl, int64_t rows) {
  return pl.splits > 1 ? static_cast<size_t>(rows * pl.splits) * sizeof(RowStats<acc_t>) : 0;
}

inline size_t align_up16(size_t n) { return (n + 15) & ~static_cast<size_t>(15); }

// Workspace (device bytes) the forward launchers need; 0 means none.
template <typename scalar_t, typename acc_t>
inline size_t forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int num_sms) {
  return partial_bytes<acc_t>(plan_rows(N * S, C, S, sizeof(scalar_t), num_sms), N * S);
}

template <typename scalar_t, typename acc_t>
inline size_t prob_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int num_sms) {
  return align_up16(static_cast<size_t>(N * S) * sizeof(acc_t)) +
         partial_bytes<acc_t>(plan_rows(N * S, C, S, sizeof(scalar_t), num_sms), N * S);
}

// Workspace of the fused launchers (split rows only): the partial statistics, then row_xt.
template <typename scalar_t, typename acc_t>
inline size_t fused_workspace_bytes(int64_t N, int64_t C, int64_t S, int num_sms) {
  const RowPlan pl = plan_rows(N * S, C, S, sizeof(scalar_t), num_sms);
  if (pl.splits == 1) return 0;
  return align_up16(partial_bytes<acc_t>(pl, N * S)) + static_cast<size_t>(N * S) * sizeof(acc_t);
}

template <typename scalar_t, typename acc_t, int MODE, bool CAP>
inline void launch_forward_mode(const XentParams<scalar_t, acc_t>& p, int num_sms, void* workspace,
                                cudaStream_t stream) {
  const int64_t rows = p.N * p.S;
  const RowPlan pl = plan_rows(rows, p.C, p.S, sizeof(scalar_t), num_sms);
  const dim3 grid(static_cast<unsigned>(pl.blocks));
  RowStats<acc_t>* partial = static_cast<RowStats<acc_t>*>(workspace);
  const int64_t splits = pl.splits, chunk = pl.chunk;
  if (pl.kind == kKindStrided) {
    auto k = &fwd_strided_kernel<scalar_t, acc_t, MODE, CAP>;
    SMOOTHING_LAUNCH(k, grid, dim3(kStridedX, kStridedY), 0, stream, p);
  } else if (pl.kind == kKindGroup8) {
    auto k = &fwd_rows_kernel<scalar_t, acc_t, MODE, CAP, 8>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk, partial);
  } else if (pl.kind == kKindWarp) {
    auto k = &fwd_rows_kernel<scalar_t, acc_t, MODE, CAP, 32>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk, partial);
  } else {
    auto k = &fwd_rows_kernel<scalar_t, acc_t, MODE, CAP, 0>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk, partial);
    if (splits > 1) {
      int64_t cb = ceil_div(rows, 256);
      if (cb > static_cast<int64_t>(num_sms) * 64) cb = static_cast<int64_t>(num_sms) * 64;
      auto kc = &fwd_combine_kernel<scalar_t, acc_t, MODE, CAP>;
      const RowStats<acc_t>* cpartial = partial;
      SMOOTHING_LAUNCH(kc, dim3(static_cast<unsigned>(cb)), dim3(256), 0, stream, p, splits, cpartial);
    }
  }
}

// Index targets: writes p.loss and p.lse. workspace: forward_workspace_bytes.
template <typename scalar_t, typename acc_t>
inline void launch_index_forward(const XentParams<scalar_t, acc_t>& p, int num_sms, void* workspace,
                                 cudaStream_t stream) {
  if (p.cap > acc_t(0)) {
    launch_forward_mode<scalar_t, acc_t, kModeIndex, true>(p, num_sms, workspace, stream);
  } else {
    launch_forward_mode<scalar_t, acc_t, kModeIndex, false>(p, num_sms, workspace, stream);
  }
}

// Probability targets: writes p.loss and p.lse. workspace: forward_workspace_bytes.
template <typename scalar_t, typename acc_t>
inline void launch_prob_forward(const XentParams<scalar_t, acc_t>& p, int num_sms, void* workspace,
                                cudaStream_t stream) {
  if (p.cap > acc_t(0)) {
    launch_forward_mode<scalar_t, acc_t, kModeProb, true>(p, num_sms, workspace, stream);
  } else {
    launch_forward_mode<scalar_t, acc_t, kModeProb, false>(p, num_sms, workspace, stream);
  }
}

template <typename scalar_t, typename acc_t, bool PROB, bool CAP>
inline void launch_backward_elementwise(const XentParams<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  const RowPlan pl = plan_rows(p.N * p.S, p.C, p.S, sizeof(scalar_t), num_sms);
  const dim3 grid(static_cast<unsigned>(pl.blocks));
  const int64_t splits = pl.splits, chunk = pl.chunk;
  if (pl.kind == kKindStrided) {
    auto k = &bwd_strided_kernel<scalar_t, acc_t, PROB, CAP>;
    SMOOTHING_LAUNCH(k, grid, dim3(kStridedX, kStridedY), 0, stream, p);
  } else if (pl.kind == kKindGroup8) {
    auto k = &bwd_rows_kernel<scalar_t, acc_t, PROB, CAP, false, 8>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk);
  } else if (pl.kind == kKindWarp) {
    auto k = &bwd_rows_kernel<scalar_t, acc_t, PROB, CAP, false, 32>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk);
  } else {
    auto k = &bwd_rows_kernel<scalar_t, acc_t, PROB, CAP, false, 0>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk);
  }
}

template <typename scalar_t, typename acc_t, bool PROB>
inline void launch_backward_cap(const XentParams<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  if (p.cap > acc_t(0)) {
    launch_backward_elementwise<scalar_t, acc_t, PROB, true>(p, num_sms, stream);
  } else {
    launch_backward_elementwise<scalar_t, acc_t, PROB, false>(p, num_sms, stream);
  }
}

// Index targets: writes p.grad_input. No workspace.
template <typename scalar_t, typename acc_t>
inline void launch_index_backward(const XentParams<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  launch_backward_cap<scalar_t, acc_t, false>(p, num_sms, stream);
}

// Probability targets: a reduction pass for A = sum_j w_j q_j per row (into the workspace), then the
// elementwise pass. workspace: prob_backward_workspace_bytes.
template <typename scalar_t, typename acc_t>
inline void launch_prob_backward(XentParams<scalar_t, acc_t> p, int num_sms, void* workspace, cudaStream_t stream) {
  const size_t a_bytes = align_up16(static_cast<size_t>(p.N * p.S) * sizeof(acc_t));
  p.row_a = static_cast<acc_t*>(workspace);
  // A needs only the targets: never capped
  launch_forward_mode<scalar_t, acc_t, kModeProbA, false>(p, num_sms, static_cast<unsigned char*>(workspace) + a_bytes,
                                                          stream);
  launch_backward_cap<scalar_t, acc_t, true>(p, num_sms, stream);
}

template <typename scalar_t, typename acc_t, bool CAP>
inline void launch_index_fused_cap(XentParams<scalar_t, acc_t> p, int num_sms, void* workspace, cudaStream_t stream) {
  const int64_t rows = p.N * p.S;
  const RowPlan pl = plan_rows(rows, p.C, p.S, sizeof(scalar_t), num_sms);
  const dim3 grid(static_cast<unsigned>(pl.blocks));
  if (pl.kind == kKindStrided) {
    auto k = &fused_strided_kernel<scalar_t, acc_t, CAP>;
    SMOOTHING_LAUNCH(k, grid, dim3(kStridedX, kStridedY), 0, stream, p);
  } else if (pl.kind == kKindGroup8) {
    auto k = &fused_rows_kernel<scalar_t, acc_t, CAP, 8>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p);
  } else if (pl.kind == kKindWarp) {
    auto k = &fused_rows_kernel<scalar_t, acc_t, CAP, 32>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p);
  } else if (pl.splits == 1) {
    auto k = &fused_rows_kernel<scalar_t, acc_t, CAP, 0>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p);
  } else {
    // Split rows: no block sees a whole row, and a block must not overwrite (in place) logits that
    // another block still reads. Three kernels, ordered by the stream: partial statistics (read
    // only), combine (loss, lse, row_xt), elementwise gradient (each element read, then written).
    // The gradient pass reads the logits a second time; with few rows they are mostly in L2.
    RowStats<acc_t>* partial = static_cast<RowStats<acc_t>*>(workspace);
    p.row_xt = reinterpret_cast<acc_t*>(static_cast<unsigned char*>(workspace) +
                                        align_up16(partial_bytes<acc_t>(pl, rows)));
    const int64_t splits = pl.splits, chunk = pl.chunk;
    auto k = &fwd_rows_kernel<scalar_t, acc_t, kModeIndex, CAP, 0>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, p, splits, chunk, partial);
    int64_t cb = ceil_div(rows, 256);
    if (cb > static_cast<int64_t>(num_sms) * 64) cb = static_cast<int64_t>(num_sms) * 64;
    auto kc = &fwd_combine_kernel<scalar_t, acc_t, kModeIndex, CAP>;
    const RowStats<acc_t>* cpartial = partial;
    SMOOTHING_LAUNCH(kc, dim3(static_cast<unsigned>(cb)), dim3(256), 0, stream, p, splits, cpartial);
    p.lse_in = p.lse;
    auto kg = &bwd_rows_kernel<scalar_t, acc_t, false, CAP, true, 0>;
    SMOOTHING_LAUNCH(kg, grid, dim3(pl.threads), 0, stream, p, splits, chunk);
  }
}

// Fused loss + gradient, index targets: writes p.loss, p.lse and p.grad_input (which may be p.x).
// Uses p.z_loss, p.grad_scale (nullptr: 1); p.row_xt must be nullptr. workspace: fused_workspace_bytes.
template <typename scalar_t, typename acc_t>
inline void launch_index_fused(const XentParams<scalar_t, acc_t>& p, int num_sms, void* workspace,
                               cudaStream_t stream) {
  if (p.cap > acc_t(0)) {
    launch_index_fused_cap<scalar_t, acc_t, true>(p, num_sms, workspace, stream);
  } else {
    launch_index_fused_cap<scalar_t, acc_t, false>(p, num_sms, workspace, stream);
  }
}

// In place: multiplies row pos of q.g by its factor, skipping factors equal to 1. No workspace.
template <typename scalar_t, typename acc_t>
inline void launch_scale_rows(const ScaleParams<scalar_t, acc_t>& q, int num_sms, cudaStream_t stream) {
  const RowPlan pl = plan_rows(q.N * q.S, q.C, q.S, sizeof(scalar_t), num_sms);
  const dim3 grid(static_cast<unsigned>(pl.blocks));
  const int64_t splits = pl.splits, chunk = pl.chunk;
  if (pl.kind == kKindStrided) {
    auto k = &scale_strided_kernel<scalar_t, acc_t>;
    SMOOTHING_LAUNCH(k, grid, dim3(kStridedX, kStridedY), 0, stream, q);
  } else if (pl.kind == kKindGroup8) {
    auto k = &scale_rows_kernel<scalar_t, acc_t, 8>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, q, splits, chunk);
  } else if (pl.kind == kKindWarp) {
    auto k = &scale_rows_kernel<scalar_t, acc_t, 32>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, q, splits, chunk);
  } else {
    auto k = &scale_rows_kernel<scalar_t, acc_t, 0>;
    SMOOTHING_LAUNCH(k, grid, dim3(pl.threads), 0, stream, q, splits, chunk);
  }
}

}  // namespace cuda
}  // namespace smoothing_ext

#endif  // defined(__CUDACC__) || defined(SIMT_CPU)
