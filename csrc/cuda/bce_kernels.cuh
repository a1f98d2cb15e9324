// CUDA kernels of label-smoothed binary cross entropy with logits (forward: element-wise loss;
// backward: gradient w.r.t. the logits). Torch-free, like cross_entropy_kernels.cuh: the same header
// compiles under nvcc (csrc/cuda/bce_kernels.cu) and under g++ with ../shared/simt
// (tests/simt/bce_harness.cpp), which runs these exact kernels on the CPU. The per-element math is
// bce_math.h's loss_elem / grad_elem, shared with the CPU kernels.
//
// Layout: the input flattened and contiguous; target, weight, pos_weight and the upstream gradient
// are bce::Operand's (element i reads (i / inner) % period), so broadcast weights and the 0-stride
// upstream gradient of "mean"/"sum" are read from cache, never materialised.
//
// Work: grid-stride loops, 64-bit indices. Each thread takes groups of V = 16 / sizeof(input)
// consecutive elements starting at a 16-byte boundary of the input: one 16-byte load of the logits;
// full-size operands whose group lines up the same way are loaded with 16-byte loads too, others
// element by element (an operand's index is derived once per group and then stepped, so there is
// at most one 64-bit division per operand and group, 32-bit when the sizes allow). The output is
// stored 16 bytes at a time when it lines up. The elements before the input's first 16-byte
// boundary (a misaligned view) and after the last whole group are done one per thread.
// Traffic: forward reads logits + target (+ full weights) once and writes the loss once; backward
// reads each once more and writes the gradient once. No shared memory, no atomics, no host sync.
//
// Sum (kSum, forward only): the same loop, but each thread adds its losses in its own fixed order
// instead of storing them, a fixed-order tree in shared memory reduces the block, and each block
// writes its partial to a workspace slot of its own; bce_sum_finish (one block) then adds the
// partials in a fixed order. The grid depends only on numel and the SM count, so a given device
// gives bit-identical sums on every call: no float atomics, no host sync.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include <smoothing_ext/bce_math.h>

#include "elem_convert.cuh"

#if defined(__CUDACC__) || defined(SIMT_CPU)

// kernel<<<grid, block, smem, stream>>>(args...), or the simt equivalent; `kernel` a plain name.
#if defined(SIMT_CPU)
#define SMOOTHING_BCE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  SIMT_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#define SMOOTHING_BCE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace smoothing_ext {
namespace bce {
namespace cuda {

template <typename scalar_t, typename acc_t>
struct Params {
  const scalar_t* x;  // logits, contiguous
  int64_t numel;
  Operand target, weight, pos_weight, grad;  // weight / pos_weight may be absent; grad: backward
  acc_t on, off;                              // y' = on y + off
  acc_t* loss;                                // forward output (accumulation type); sum: 1 value
  acc_t* partials;                            // sum: one slot per block (sum_blocks())
  scalar_t* grad_input;                       // backward output (input type)
  // filled by plan():
  int64_t head;     // elements before the first 16-byte boundary of x (done one per thread)
  int32_t out_vec;  // the output of a group can be stored with 16-byte stores
};

// ------------------------------------------------------------------------------------------------
// element types
// ------------------------------------------------------------------------------------------------

using cuda_elem::FromAcc;
using cuda_elem::to_acc;
using cuda_elem::store_pack16;

// N elements moved as one aligned block (16 bytes, or 32 for float of a 2-byte input).
template <typename T, int N>
struct __align__(16) Pack {
  T v[N];
};

template <typename scalar_t>
constexpr int group_size() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

// 64-bit division only where the operands need it; the sizes of most tensors fit in 32 bits.
__device__ __forceinline__ int64_t div64(int64_t a, int64_t b) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) >> 32) == 0) {
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  }
  return a / b;
}

__device__ __forceinline__ int64_t mod64(int64_t a, int64_t b) { return a - div64(a, b) * b; }

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t operand_at(const Operand& op, int64_t idx) {
  return op.is_acc ? static_cast<const acc_t*>(op.ptr)[idx] : to_acc(static_cast<const scalar_t*>(op.ptr)[idx]);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t operand_elem(const Operand& op, int64_t i) {
  if (op.period == 1) return operand_at<scalar_t, acc_t>(op, 0);
  const int64_t q = op.inner == 1 ? i : div64(i, op.inner);
  return operand_at<scalar_t, acc_t>(op, mod64(q, op.period));
}

// Values of elements [i0, i0 + V) of an operand.
template <typename scalar_t, typename acc_t, int V>
__device__ __forceinline__ void operand_group(const Operand& op, int64_t i0, int64_t numel, acc_t (&out)[V]) {
  if (op.period == 1) {
    const acc_t v = operand_at<scalar_t, acc_t>(op, 0);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = v;
    return;
  }
  if (op.inner == 1 && op.period == numel) {  // full size: element i is ptr[i]
    if (op.vec) {
      if (op.is_acc) {
        const Pack<acc_t, V> pk = *reinterpret_cast<const Pack<acc_t, V>*>(static_cast<const acc_t*>(op.ptr) + i0);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = pk.v[k];
      } else {
        const Pack<scalar_t, V> pk =
            *reinterpret_cast<const Pack<scalar_t, V>*>(static_cast<const scalar_t*>(op.ptr) + i0);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = to_acc(pk.v[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) out[k] = operand_at<scalar_t, acc_t>(op, i0 + k);
    }
    return;
  }
  // broadcast pattern: locate i0 once, then step (r counts within a run of `inner` equal values)
  const int64_t q = op.inner == 1 ? i0 : div64(i0, op.inner);
  int64_t r = i0 - q * op.inner;
  int64_t idx = mod64(q, op.period);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    out[k] = operand_at<scalar_t, acc_t>(op, idx);
    if (++r == op.inner) {
      r = 0;
      if (++idx == op.period) idx = 0;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// the kernel
// ------------------------------------------------------------------------------------------------

// One element (head and tail); kSum: its loss is returned instead of stored.
template <typename scalar_t, typename acc_t, bool kBackward, bool kSum>
__device__ __forceinline__ acc_t bce_one(const Params<scalar_t, acc_t>& p, int64_t i) {
  const acc_t x = to_acc(p.x[i]);
  const acc_t ys = operand_elem<scalar_t, acc_t>(p.target, i) * p.on + p.off;
  const acc_t pw = p.pos_weight.ptr != nullptr ? operand_elem<scalar_t, acc_t>(p.pos_weight, i) : acc_t(1);
  const acc_t w = p.weight.ptr != nullptr ? operand_elem<scalar_t, acc_t>(p.weight, i) : acc_t(1);
  if (kBackward) {
    const acc_t g = operand_elem<scalar_t, acc_t>(p.grad, i);
    p.grad_input[i] = FromAcc<scalar_t>::cvt(grad_elem<acc_t>(x, ys, pw) * g * w);
  } else if (kSum) {
    return loss_elem<acc_t>(x, ys, pw) * w;
  } else {
    p.loss[i] = loss_elem<acc_t>(x, ys, pw) * w;
  }
  return acc_t(0);
}

// V elements from i0 (x + i0 is 16-byte aligned); kSum: the sum of their losses (in element
// order) is returned instead of stored.
template <typename scalar_t, typename acc_t, bool kBackward, bool kSum>
__device__ __forceinline__ acc_t bce_group(const Params<scalar_t, acc_t>& p, int64_t i0) {
  constexpr int V = group_size<scalar_t>();
  const Pack<scalar_t, V> xp = *reinterpret_cast<const Pack<scalar_t, V>*>(p.x + i0);
  acc_t y[V], w[V], pw[V], g[V];
  operand_group<scalar_t, acc_t, V>(p.target, i0, p.numel, y);
  if (p.weight.ptr != nullptr) {
    operand_group<scalar_t, acc_t, V>(p.weight, i0, p.numel, w);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) w[k] = acc_t(1);
  }
  if (p.pos_weight.ptr != nullptr) {
    operand_group<scalar_t, acc_t, V>(p.pos_weight, i0, p.numel, pw);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) pw[k] = acc_t(1);
  }
  if (kBackward) {
    operand_group<scalar_t, acc_t, V>(p.grad, i0, p.numel, g);
    Pack<scalar_t, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t ys = y[k] * p.on + p.off;
      out.v[k] = FromAcc<scalar_t>::cvt(grad_elem<acc_t>(to_acc(xp.v[k]), ys, pw[k]) * g[k] * w[k]);
    }
    if (p.out_vec) {
      store_pack16<true>(p.grad_input + i0, out);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) p.grad_input[i0 + k] = out.v[k];
    }
  } else if (kSum) {
    acc_t sum = acc_t(0);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t ys = y[k] * p.on + p.off;
      sum += loss_elem<acc_t>(to_acc(xp.v[k]), ys, pw[k]) * w[k];
    }
    return sum;
  } else {
    Pack<acc_t, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t ys = y[k] * p.on + p.off;
      out.v[k] = loss_elem<acc_t>(to_acc(xp.v[k]), ys, pw[k]) * w[k];
    }
    if (p.out_vec) {
      store_pack16<true>(p.loss + i0, out);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) p.loss[i0 + k] = out.v[k];
    }
  }
  return acc_t(0);
}

// Sum of v over the block (blockDim.x == kSumThreads) by a fixed tree; the result in thread 0.
constexpr int kSumThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t red[kSumThreads];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kSumThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  return red[0];
}

template <typename scalar_t, typename acc_t, bool kBackward, bool kSum>
__global__ void __launch_bounds__(256) bce_kernel(const Params<scalar_t, acc_t> p) {
  constexpr int V = group_size<scalar_t>();
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t groups = (p.numel - p.head) / V;
  const int64_t tail0 = p.head + groups * V;
  acc_t sum = acc_t(0);  // kSum only
  for (int64_t gi = tid; gi < groups; gi += stride) {
    sum += bce_group<scalar_t, acc_t, kBackward, kSum>(p, p.head + gi * V);
  }
  // head [0, head) and tail [tail0, numel): fewer than 2 V elements in all
  const int64_t singles = p.head + (p.numel - tail0);
  for (int64_t k = tid; k < singles; k += stride) {
    sum += bce_one<scalar_t, acc_t, kBackward, kSum>(p, k < p.head ? k : tail0 + (k - p.head));
  }
  if constexpr (kSum) {
    const acc_t total = block_sum<acc_t>(sum);  // every thread of the block gets here
    if (threadIdx.x == 0) p.partials[blockIdx.x] = total;
  }
}

// out[0] = the n block partials added in a fixed order (one block of kSumThreads threads).
template <typename acc_t>
__global__ void __launch_bounds__(256) bce_sum_finish(const acc_t* partials, int64_t n, acc_t* out) {
  acc_t v = acc_t(0);
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) v += partials[i];
  const acc_t total = block_sum<acc_t>(v);
  if (threadIdx.x == 0) out[0] = total;
}

// ------------------------------------------------------------------------------------------------
// host side: plan and launch
// ------------------------------------------------------------------------------------------------

// Alignment plan: the scalar head up to x's first 16-byte boundary, and which full-size streams
// line up with it (same offset modulo 16 bytes at element `head`).
template <typename scalar_t, typename acc_t>
inline void plan(Params<scalar_t, acc_t>& p) {
  const uintptr_t xa = reinterpret_cast<uintptr_t>(p.x);
  int64_t head = p.numel;  // a pointer not even element-aligned: everything one element at a time
  if (xa % sizeof(scalar_t) == 0) head = static_cast<int64_t>(((16 - xa % 16) % 16) / sizeof(scalar_t));
  if (head > p.numel) head = p.numel;
  p.head = head;
  auto lines_up = [&](const void* ptr, size_t esize) {
    return (reinterpret_cast<uintptr_t>(ptr) + static_cast<uintptr_t>(head) * esize) % 16 == 0;
  };
  Operand* ops[4] = {&p.target, &p.weight, &p.pos_weight, &p.grad};
  for (Operand* op : ops) {
    const bool full = op->ptr != nullptr && op->inner == 1 && op->period == p.numel;
    op->vec = full && lines_up(op->ptr, op->is_acc ? sizeof(acc_t) : sizeof(scalar_t)) ? 1 : 0;
  }
  p.out_vec = p.loss != nullptr ? lines_up(p.loss, sizeof(acc_t)) : lines_up(p.grad_input, sizeof(scalar_t));
}

inline int bce_blocks(int64_t numel, int elems_per_thread, int num_sms) {
  constexpr int64_t kThreads = 256;
  const int64_t want = (numel / elems_per_thread + kThreads) / kThreads;  // at least 1
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * 8;  // 2048 threads per SM
  return static_cast<int>(want < cap ? want : cap);
}

// Plans (fills p.head, p.out_vec, the operands' vec flags) and launches on `stream`. Forward:
// p.loss set, p.grad_input null; backward: the reverse, with p.grad set.
template <typename scalar_t, typename acc_t>
inline void launch_forward(Params<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  p.grad_input = nullptr;
  plan(p);
  auto kernel = &bce_kernel<scalar_t, acc_t, false, false>;
  SMOOTHING_BCE_LAUNCH(kernel, bce_blocks(p.numel, group_size<scalar_t>(), num_sms), 256, 0, stream, p);
}

template <typename scalar_t, typename acc_t>
inline void launch_backward(Params<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  p.loss = nullptr;
  plan(p);
  auto kernel = &bce_kernel<scalar_t, acc_t, true, false>;
  SMOOTHING_BCE_LAUNCH(kernel, bce_blocks(p.numel, group_size<scalar_t>(), num_sms), 256, 0, stream, p);
}

// Workspace slots launch_sum needs in p.partials.
template <typename scalar_t>
inline int sum_blocks(int64_t numel, int num_sms) {
  return bce_blocks(numel, group_size<scalar_t>(), num_sms);
}

// Sum of the loss into p.loss[0] (numel > 0); p.partials holds sum_blocks() slots. Two launches on
// `stream`, ordered by it.
template <typename scalar_t, typename acc_t>
inline void launch_sum(Params<scalar_t, acc_t>& p, int num_sms, cudaStream_t stream) {
  p.grad_input = nullptr;
  plan(p);
  const int blocks = sum_blocks<scalar_t>(p.numel, num_sms);
  auto kernel = &bce_kernel<scalar_t, acc_t, false, true>;
  SMOOTHING_BCE_LAUNCH(kernel, blocks, kSumThreads, 0, stream, p);
  auto finish = &bce_sum_finish<acc_t>;
  const acc_t* partials = p.partials;
  acc_t* out = p.loss;
  const int64_t n = blocks;
  SMOOTHING_BCE_LAUNCH(finish, 1, kSumThreads, 0, stream, partials, n, out);
}

}  // namespace cuda
}  // namespace bce
}  // namespace smoothing_ext

#endif  // __CUDACC__ || SIMT_CPU
