// Test harness: runs the real CUDA kernels of csrc/cuda/cross_entropy_kernels.cuh on the CPU through
// ../shared/simt. Built by tests/simt/simt_lib.py into a shared library with a C ABI (loaded with
// ctypes) -- no torch headers here, so the build takes seconds and works under AddressSanitizer.
//
//   g++ -std=c++17 -O2 -fno-strict-aliasing -DSIMT_CPU -I<simt>/include -I<repo>/csrc -I<repo>/csrc/include
//       -shared -fPIC harness.cpp -o libxent_simt.so -pthread
//
// Pointers are host memory (simt accepts them as device pointers); the caller owns them.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "cuda/cross_entropy_kernels.cuh"

namespace smoothing_ext {
namespace cuda {
SIMT_DYNAMIC_SHARED(unsigned char, smem_raw)  // the kernels use none today; kept for future ones
}  // namespace cuda
}  // namespace smoothing_ext

extern "C" {

struct SeArgs {
  int32_t op;       // 0 index forward, 1 index backward, 2 prob forward, 3 prob backward,
                    // 4 fused, 5 fused in place (x == grad_input), 6 scale grad rows (grad_input, scale)
  int32_t dtype;    // 0 float32, 1 float64, 2 float16, 3 bfloat16
  int32_t num_sms;  // the SM count the launch planner assumes
  int32_t pad_;
  const void* x;
  const int64_t* target;
  const void* y;
  const void* weight;         // acc dtype, or null
  const double* weight_sum;   // float64 scalar, or null
  int64_t N, C, S, ignore_index;
  double eps;
  void* loss;
  void* lse;
  const void* grad_loss;
  const void* grad_lse;
  const void* lse_in;
  void* grad_input;
  int32_t off_target;        // 1: off-target smoothing coefficients
  int32_t pad2_;
  double softcap;            // > 0: soft-cap; 0: none
  double z_loss;             // fused
  const void* grad_scale;    // fused: acc dtype scalar, or null (1)
  const void* scale;         // op 6: acc dtype, scale_numel elements
  int64_t scale_numel;
};

// Plan as seen by the launchers (for tests that want to know which path ran).
int se_plan(int64_t rows, int64_t C, int64_t S, int elem_bytes, int num_sms, int64_t* out4) {
  const auto pl = smoothing_ext::cuda::plan_rows(rows, C, S, elem_bytes, num_sms);
  out4[0] = pl.kind;
  out4[1] = pl.threads;
  out4[2] = pl.splits;
  out4[3] = pl.blocks;
  return 0;
}

}  // extern "C"

namespace {

template <typename scalar_t, typename acc_t>
int run(const SeArgs& a) {
  using namespace smoothing_ext::cuda;
  XentParams<scalar_t, acc_t> p{};
  p.x = static_cast<const scalar_t*>(a.x);
  p.target = a.target;
  p.y = static_cast<const scalar_t*>(a.y);
  p.weight = static_cast<const acc_t*>(a.weight);
  p.weight_sum = a.weight_sum;
  p.N = a.N;
  p.C = a.C;
  p.S = a.S;
  p.ignore_index = a.ignore_index;
  if (a.op == 6) {
    ScaleParams<scalar_t, acc_t> q{};
    q.g = static_cast<scalar_t*>(a.grad_input);
    q.scale = static_cast<const acc_t*>(a.scale);
    q.scale_numel = a.scale_numel;
    q.N = a.N;
    q.C = a.C;
    q.S = a.S;
    launch_scale_rows<scalar_t, acc_t>(q, a.num_sms, nullptr);
    return cudaGetLastError() == cudaSuccess ? 0 : 4;
  }
  const auto c = smoothing_ext::smooth_coefs<acc_t>(a.eps, a.C, a.off_target != 0);
  p.on = c.on;
  p.off = c.off;
  p.loss = static_cast<acc_t*>(a.loss);
  p.lse = static_cast<acc_t*>(a.lse);
  p.grad_loss = static_cast<const acc_t*>(a.grad_loss);
  p.grad_lse = static_cast<const acc_t*>(a.grad_lse);
  p.lse_in = static_cast<const acc_t*>(a.lse_in);
  p.grad_input = static_cast<scalar_t*>(a.grad_input);
  p.cap = static_cast<acc_t>(a.softcap);
  p.z_loss = static_cast<acc_t>(a.z_loss);
  p.grad_scale = static_cast<const acc_t*>(a.grad_scale);
  if (a.op == 5 && a.grad_input != a.x) return 6;  // the in-place op aliases them
  size_t ws_bytes = 0;
  if (a.op == 0 || a.op == 2) ws_bytes = forward_workspace_bytes<scalar_t, acc_t>(a.N, a.C, a.S, a.num_sms);
  if (a.op == 3) ws_bytes = prob_backward_workspace_bytes<scalar_t, acc_t>(a.N, a.C, a.S, a.num_sms);
  if (a.op == 4 || a.op == 5) ws_bytes = fused_workspace_bytes<scalar_t, acc_t>(a.N, a.C, a.S, a.num_sms);
  void* ws = nullptr;
  if (ws_bytes) {
    if (cudaMalloc(&ws, ws_bytes) != cudaSuccess) return 2;  // poisoned with 0xFF by simt
  }
  cudaStream_t stream = nullptr;
  switch (a.op) {
    case 0: launch_index_forward<scalar_t, acc_t>(p, a.num_sms, ws, stream); break;
    case 1: launch_index_backward<scalar_t, acc_t>(p, a.num_sms, stream); break;
    case 2: launch_prob_forward<scalar_t, acc_t>(p, a.num_sms, ws, stream); break;
    case 3: launch_prob_backward<scalar_t, acc_t>(p, a.num_sms, ws, stream); break;
    case 4:
    case 5: launch_index_fused<scalar_t, acc_t>(p, a.num_sms, ws, stream); break;
    default: return 3;
  }
  const cudaError_t err = cudaGetLastError();
  if (ws) cudaFree(ws);
  return err == cudaSuccess ? 0 : 4;
}

}  // namespace

extern "C" int se_run(const SeArgs* a) {
  switch (a->dtype) {
    case 0: return run<float, float>(*a);
    case 1: return run<double, double>(*a);
    case 2: return run<__half, float>(*a);
    case 3: return run<__nv_bfloat16, float>(*a);
    default: return 5;
  }
}
